"""``run.json``: what each finished stage did, and whether a rerun may reuse it.

For each stage the record keeps its parameters, the SHA-256 of its inputs and outputs,
the wall time, the finishing time, the package version, the seed and the stage's summary.
A stage is reused when its parameters, input checksums and seed match the record and
its recorded outputs are present and unchanged.
"""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from .. import __version__
from ..errors import InputError
from ..io.atomic import atomic_open

RECORD_NAME = "run.json"


def sha256_file(path, chunk_bytes: int = 1 << 22) -> str:
    """Hex SHA-256 of a file's bytes, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk_bytes):
            h.update(block)
    return h.hexdigest()


class Checksums:
    """SHA-256 of files, reusing a recorded one while size and mtime are unchanged.

    Hashing a multi-GB particle stack on every rerun would cost more than some stages;
    a file whose size and modification time (ns) match the record is taken as unchanged.
    ``known`` is what ``run.json`` keeps under ``checksums``.
    """

    def __init__(self, known: dict):
        self.known = dict(known)

    def __call__(self, path: Path) -> str:
        st = path.stat()
        key = str(path.resolve())
        rec = self.known.get(key)
        if rec and rec["size"] == st.st_size and rec["mtime_ns"] == st.st_mtime_ns:
            return rec["sha256"]
        digest = sha256_file(path)
        self.known[key] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest}
        return digest


def json_normal(obj):
    """Parameters as JSON would read them back, so records compare equal across runs."""
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


def read_record(path: Path) -> dict:
    """``run.json`` as a dict (an empty skeleton where there is none yet)."""
    if not path.exists():
        return {"stages": {}, "checksums": {}}
    try:
        with open(path) as fh:
            record = json.load(fh)
    except json.JSONDecodeError as err:
        raise InputError(f"{path}: not valid JSON ({err}): remove it to start the run afresh") from err
    record.setdefault("stages", {})
    record.setdefault("checksums", {})
    return record


def write_record(path: Path, record: dict) -> None:
    """Write ``run.json`` atomically (a crash leaves the previous record)."""
    with atomic_open(path, "w") as fh:
        json.dump(record, fh, indent=1, sort_keys=False)


def still_valid(prev, params, in_sums, seed, checksums: Checksums) -> bool:
    """Whether a stage's record ``prev`` lets it be reused with these parameters and inputs."""
    if not prev or prev.get("params") != params or prev.get("inputs") != in_sums or prev.get("seed") != seed:
        return False
    for path, digest in prev.get("outputs", {}).items():
        p = Path(path)
        if not p.exists() or checksums(p) != digest:
            return False
    return True


def stage_entry(params, in_sums, out_sums, seconds, seed, summary) -> dict:
    """The record of a stage that just finished."""
    return {
        "params": params,
        "inputs": in_sums,
        "outputs": out_sums,
        "seconds": round(seconds, 3),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "version": __version__,
        "seed": seed,
        "summary": json_normal(summary),
        "skipped": False,
    }


__all__ = ["RECORD_NAME", "sha256_file", "Checksums", "json_normal", "read_record", "write_record",
           "still_valid", "stage_entry"]
