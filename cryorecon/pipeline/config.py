"""Pipeline configs: the TOML file, ``--set SECTION.KEY=VALUE`` overrides, and key checks.

``[pipeline]`` holds ``name``, ``seed``, ``device`` and ``stages`` (an ordered list of
stage names); every stage has a table of its own keys (each stage's ``DEFAULTS``). Paths
are relative to the TOML file's folder, except those given with ``--set``, which are
relative to the working folder. Unknown tables and keys are refused before any work.
"""
from __future__ import annotations

import tomllib
from pathlib import Path

from ..errors import InputError

#: Config keys holding paths; ``--set`` values for them are relative to the working folder.
PATH_KEYS = {("preprocess", "particles"), ("simulate", "map"), ("compare", "reference"), ("compare", "truth_star")}
#: Keys allowed in ``[pipeline]``.
HEAD_KEYS = ("name", "seed", "device", "stages")


def parse_override(text: str) -> tuple[list[str], object]:
    """``section.key=value`` -> (["section", "key"], value); value read as TOML, else a string."""
    if "=" not in text:
        raise InputError(f"--set {text!r}: expected section.key=value, e.g. --set abinitio.max_iter=50")
    key, raw = text.split("=", 1)
    parts = [p.strip() for p in key.strip().split(".")]
    if len(parts) != 2 or not all(parts):
        raise InputError(f"--set {text!r}: the key must be section.key, e.g. abinitio.max_iter")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return parts, value


def load_config(path, overrides=()) -> tuple[dict, Path]:
    """Read a pipeline TOML file and apply ``--set`` overrides; return (config, its folder)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such pipeline file: give the path of a .toml file (see pipelines/)")
    try:
        with open(path, "rb") as fh:
            config = tomllib.load(fh)
    except tomllib.TOMLDecodeError as err:
        raise InputError(f"{path}: not valid TOML: {err}") from err
    for text in overrides:
        (section, key), value = parse_override(text)
        if (section, key) in PATH_KEYS and isinstance(value, str) and value != "phantom":
            # typed on the command line: relative to where the user is, not to the TOML file
            value = str(Path(value).expanduser().resolve())
        table = config.setdefault(section, {})
        if not isinstance(table, dict):
            raise InputError(f"--set {text!r}: {section} is not a table in {path}")
        table[key] = value
    return config, path.resolve().parent


def take(table: dict, defaults: dict, section: str) -> dict:
    """``defaults`` updated by ``table``; unknown keys are an InputError naming them."""
    unknown = set(table) - set(defaults)
    if unknown:
        raise InputError(f"[{section}]: unknown key(s) {', '.join(sorted(unknown))}: allowed are {', '.join(sorted(defaults))}")
    return {**defaults, **table}


def parse_head(config: dict, known_stages) -> tuple[list[str], int, str | None]:
    """Check the ``[pipeline]`` table and the stage tables; return (stage names, seed, device).

    Parameters
    ----------
    config : dict
        The parsed config (as :func:`load_config` returns it).
    known_stages : collection of str
        The stage names a pipeline may use.
    """
    head = config.get("pipeline", {})
    unknown = set(head) - set(HEAD_KEYS)
    if unknown:
        raise InputError(f"[pipeline]: unknown key(s) {', '.join(sorted(unknown))}: allowed are {', '.join(HEAD_KEYS)}")
    names = head.get("stages")
    if not names or not isinstance(names, list):
        raise InputError("[pipeline]: `stages` must list the stages to run, e.g. stages = [\"preprocess\", \"abinitio\"]")
    for table in config:
        if table != "pipeline" and table not in names:
            why = "is not in [pipeline] stages" if table in known_stages else f"is not a stage (known: {', '.join(known_stages)})"
            raise InputError(f"[{table}]: table {why}: remove it or add it to stages")
    for name in names:
        if name not in known_stages:
            raise InputError(f"[pipeline] stages: unknown stage {name!r}: known are {', '.join(known_stages)}")
    seed = head.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise InputError(f"[pipeline] seed = {seed!r}: must be an integer")
    device = head.get("device")
    if device not in (None, "auto", "cpu", "gpu"):
        raise InputError(f"[pipeline] device = {device!r}: must be auto, cpu or gpu")
    return list(names), seed, device


def default_run_dir(toml_path) -> Path:
    """``runs/NAME``: NAME from ``[pipeline] name``, else the TOML file's stem."""
    try:
        with open(toml_path, "rb") as fh:
            name = tomllib.load(fh).get("pipeline", {}).get("name")
    except (OSError, tomllib.TOMLDecodeError):
        name = None
    return Path("runs") / (name or Path(toml_path).stem)


__all__ = ["PATH_KEYS", "HEAD_KEYS", "parse_override", "load_config", "take", "parse_head", "default_run_dir"]
