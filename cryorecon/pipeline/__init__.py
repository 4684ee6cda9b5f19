"""Pipelines: stages wired from a TOML config, recorded in ``run.json``, skipped when done.

A pipeline is a list of stages run in order in one run folder. Each stage names its
parameters, its input files and its output files. When a stage finishes, ``run.json``
records its parameters, the SHA-256 of its inputs and outputs, the output paths, the
wall time, the package version and the seed. A rerun skips a stage whose record matches
(same parameters, same input checksums, outputs present and unchanged); ``force``
reruns named stages. The ab initio stage checkpoints as it goes, and an interrupted run
(Ctrl-C or ``kill -9``) continues from the last checkpoint when the same pipeline is run
again.

Before any stage runs, every stage checks its configuration (unknown keys, missing
files, impossible boxes, a pixel size that disagrees with the STAR file, impossible ab
initio settings) and the first problem stops the run with one line
(:class:`~cryorecon.errors.InputError`).

Config
------
``[pipeline]`` holds ``name``, ``seed``, ``device`` and ``stages`` (an ordered list of
stage names); every stage has a table of its own keys (see ``STAGES`` and each stage's
``DEFAULTS``). Paths are relative to the TOML file's folder.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import sys
import time
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from .. import __version__
from ..errors import InputError

log = logging.getLogger("cryorecon.pipeline")

RECORD_NAME = "run.json"
LOG_NAME = "run.log"
#: Config keys holding paths; ``--set`` values for them are relative to the working folder.
PATH_KEYS = {("preprocess", "particles"), ("simulate", "map"), ("compare", "reference"), ("compare", "truth_star")}
#: Relative pixel-size mismatch tolerated between the config and the STAR file.
PIXEL_SIZE_RTOL = 1e-3


# ---------------------------------------------------------------------------- context
@dataclass
class RunContext:
    """What stages share: the run folder, the seed, facts known before running, results.

    ``facts`` are filled by :meth:`Stage.check` (e.g. the particle count and box a
    simulate stage will produce), so later stages can check themselves before any work.
    ``results`` holds what each finished (or skipped) stage reported.
    """

    run_dir: Path
    config_dir: Path
    seed: int = 0
    device: str | None = None
    progress: bool = True
    facts: dict = field(default_factory=dict)
    results: dict = field(default_factory=dict)

    def path(self, name) -> Path:
        return self.run_dir / name

    def config_path(self, value) -> Path:
        """A path from the config: absolute as given, else relative to the TOML's folder."""
        p = Path(value).expanduser()
        return p if p.is_absolute() else (self.config_dir / p).resolve()


@runtime_checkable
class Stage(Protocol):
    """One step of a pipeline.

    Attributes
    ----------
    name : str
        The stage's name in the config, ``run.json`` and ``--force``.
    params : dict
        The stage's settings (JSON-serialisable); a change reruns the stage.
    """

    name: str
    params: dict

    def check(self, ctx: RunContext) -> None:
        """Raise InputError for a bad config before any stage runs; publish ``ctx.facts``."""

    def inputs(self, ctx: RunContext) -> list[Path]:
        """Files the stage reads; their checksums decide whether it must rerun."""

    def outputs(self, ctx: RunContext) -> list[Path]:
        """Files the stage writes."""

    def run(self, ctx: RunContext) -> dict:
        """Do the work; return a JSON-serialisable summary (kept in ``run.json``)."""


# ---------------------------------------------------------------------------- checksums
def sha256_file(path, chunk_bytes: int = 1 << 22) -> str:
    """Hex SHA-256 of a file's bytes, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk_bytes):
            h.update(block)
    return h.hexdigest()


class _Checksums:
    """SHA-256 of files, reusing a recorded one while size and mtime are unchanged.

    Hashing a multi-GB particle stack on every rerun would cost more than some stages;
    a file whose size and modification time (ns) match the record is taken as unchanged.
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


def _json_normal(obj):
    """Parameters as JSON would read them back, so records compare equal across runs."""
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


# ---------------------------------------------------------------------------- the runner
class Pipeline:
    """Run stages in order in a run folder, recording each in ``run.json``.

    Parameters
    ----------
    stages : list of Stage
    ctx : RunContext
    config : dict, optional
        The full (merged) config, copied into ``run.json`` for the record.

    Examples
    --------
    >>> pipe = Pipeline.from_toml("pipelines/sample.toml", run_dir="runs/sample")  # doctest: +SKIP
    >>> summary = pipe.run(force=["plots"])                                        # doctest: +SKIP
    """

    def __init__(self, stages, ctx: RunContext, config=None):
        names = [s.name for s in stages]
        if len(set(names)) != len(names):
            raise InputError(f"stage names repeat in {names}: each stage may appear once")
        self.stages = list(stages)
        self.ctx = ctx
        self.config = config or {}

    @classmethod
    def from_toml(cls, path, run_dir=None, overrides=(), progress=True) -> "Pipeline":
        """Read a pipeline TOML file, apply ``key=value`` overrides and build its stages."""
        config, config_dir = load_config(path, overrides)
        if run_dir is None:
            run_dir = Path("runs") / config["pipeline"].get("name", Path(path).stem)
        return cls.from_config(config, config_dir, run_dir, progress=progress)

    @classmethod
    def from_config(cls, config: dict, config_dir, run_dir, progress=True) -> "Pipeline":
        """Build from an already parsed config (as :func:`load_config` returns)."""
        head = config.get("pipeline", {})
        unknown = set(head) - {"name", "seed", "device", "stages"}
        if unknown:
            raise InputError(f"[pipeline]: unknown key(s) {', '.join(sorted(unknown))}: allowed are name, seed, device, stages")
        names = head.get("stages")
        if not names or not isinstance(names, list):
            raise InputError("[pipeline]: `stages` must list the stages to run, e.g. stages = [\"preprocess\", \"abinitio\"]")
        for table in config:
            if table != "pipeline" and table not in names:
                known = table in STAGES
                why = "is not in [pipeline] stages" if known else f"is not a stage (known: {', '.join(STAGES)})"
                raise InputError(f"[{table}]: table {why}: remove it or add it to stages")
        stages = []
        for name in names:
            if name not in STAGES:
                raise InputError(f"[pipeline] stages: unknown stage {name!r}: known are {', '.join(STAGES)}")
            stages.append(STAGES[name](config.get(name, {})))
        seed = head.get("seed", 0)
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise InputError(f"[pipeline] seed = {seed!r}: must be an integer")
        device = head.get("device")
        if device not in (None, "auto", "cpu", "gpu"):
            raise InputError(f"[pipeline] device = {device!r}: must be auto, cpu or gpu")
        ctx = RunContext(run_dir=Path(run_dir), config_dir=Path(config_dir), seed=seed, device=device, progress=progress)
        return cls(stages, ctx, config)

    # ------------------------------------------------------------------ record
    def _record_path(self) -> Path:
        return self.ctx.run_dir / RECORD_NAME

    def read_record(self) -> dict:
        """``run.json`` as a dict (empty skeleton where there is none yet)."""
        path = self._record_path()
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

    def _write_record(self, record):
        from ..io.atomic import atomic_open

        with atomic_open(self._record_path(), "w") as fh:
            json.dump(record, fh, indent=1, sort_keys=False)

    # ------------------------------------------------------------------ running
    def check(self):
        """Every stage checks its config, in order, before any work."""
        from ..backend import set_device

        set_device(self.ctx.device)
        for stage in self.stages:
            stage.check(self.ctx)

    def run(self, force=()) -> dict:
        """Check, then run each stage not already done; return ``{stage: summary}``.

        Parameters
        ----------
        force : iterable of str
            Stage names to rerun even if recorded as done (``"all"`` reruns every one).
        """
        force = set(force)
        names = [s.name for s in self.stages]
        bad = force - set(names) - {"all"}
        if bad:
            raise InputError(f"--force {', '.join(sorted(bad))}: not a stage of this pipeline ({', '.join(names)})")
        if "all" in force:
            force = set(names)
        self.check()
        ctx = self.ctx
        ctx.run_dir.mkdir(parents=True, exist_ok=True)
        handler = _attach_log(ctx.run_dir / LOG_NAME)
        try:
            return self._run_stages(force)
        finally:
            logging.getLogger("cryorecon").removeHandler(handler)
            handler.close()

    def _run_stages(self, force):
        ctx = self.ctx
        record = self.read_record()
        checksums = _Checksums(record.get("checksums", {}))
        log.info("pipeline %s in %s (cryorecon %s, seed %d): %s", self.config.get("pipeline", {}).get("name", "?"),
                 ctx.run_dir, __version__, ctx.seed, ", ".join(s.name for s in self.stages))
        record.update({"version": __version__, "seed": ctx.seed, "config": _json_normal(self.config)})
        for stage in self.stages:
            params = _json_normal(stage.params)
            ins = [Path(p) for p in stage.inputs(ctx)]
            for p in ins:
                if not p.exists():
                    raise InputError(f"stage {stage.name}: input {p} does not exist: run the stage that makes it or fix the path")
            in_sums = {str(p): checksums(p) for p in ins}
            prev = record["stages"].get(stage.name)
            if stage.name not in force and self._still_valid(prev, params, in_sums, ctx.seed, checksums):
                log.info("stage %s: done before with the same inputs and parameters; skipped", stage.name)
                ctx.results[stage.name] = prev.get("summary", {})
                prev["skipped"] = True
                continue
            if stage.name in force:
                log.info("stage %s: forced", stage.name)
                hook = getattr(stage, "forget", None)
                if hook is not None:
                    hook(ctx)
            # A stage about to run is no longer finished; a crash mid-way must not leave
            # a record that says it is.
            record["stages"].pop(stage.name, None)
            self._write_record(record)
            log.info("stage %s: running", stage.name)
            t0 = time.perf_counter()
            summary = stage.run(ctx) or {}
            seconds = time.perf_counter() - t0
            outs = [Path(p) for p in stage.outputs(ctx)]
            missing = [str(p) for p in outs if not p.exists()]
            if missing:
                raise RuntimeError(f"stage {stage.name} did not write {', '.join(missing)}")
            record["stages"][stage.name] = {
                "params": params,
                "inputs": in_sums,
                "outputs": {str(p): checksums(p) for p in outs},
                "seconds": round(seconds, 3),
                "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "version": __version__,
                "seed": ctx.seed,
                "summary": _json_normal(summary),
                "skipped": False,
            }
            record["checksums"] = checksums.known
            self._write_record(record)
            ctx.results[stage.name] = record["stages"][stage.name]["summary"]
            log.info("stage %s: finished in %.1f s", stage.name, seconds)
        record["checksums"] = checksums.known
        self._write_record(record)
        return dict(ctx.results)

    @staticmethod
    def _still_valid(prev, params, in_sums, seed, checksums) -> bool:
        if not prev or prev.get("params") != params or prev.get("inputs") != in_sums or prev.get("seed") != seed:
            return False
        for path, digest in prev.get("outputs", {}).items():
            p = Path(path)
            if not p.exists() or checksums(p) != digest:
                return False
        return True


def _attach_log(path: Path) -> logging.Handler:
    """Append INFO records of every ``cryorecon`` logger to ``path`` (the run log)."""
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S"))
    root = logging.getLogger("cryorecon")
    root.setLevel(logging.INFO)
    root.addHandler(handler)
    return handler


# ---------------------------------------------------------------------------- config
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


def _take(table: dict, defaults: dict, section: str) -> dict:
    """``defaults`` updated by ``table``; unknown keys are an InputError naming them."""
    unknown = set(table) - set(defaults)
    if unknown:
        raise InputError(f"[{section}]: unknown key(s) {', '.join(sorted(unknown))}: allowed are {', '.join(sorted(defaults))}")
    return {**defaults, **table}


def _progress_bar(ctx, total, desc):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="img", disable=not (ctx.progress and sys.stderr.isatty()))


# ---------------------------------------------------------------------------- stages
class SimulateStage:
    """Particles simulated from a map (or the chiral phantom) with CTF, shifts and noise.

    Writes ``simulated/particles.star``, ``simulated/particles.mrcs`` and
    ``simulated/truth.mrc`` in the run folder; later stages take them by default.
    """

    name = "simulate"
    DEFAULTS = {
        "map": "phantom", "box": 32, "pixel_size_A": 4.0, "n": 1000, "snr": 0.1,
        "defocus_range_um": [1.0, 2.5], "shift_sigma_px": 1.5, "max_shift_px": 4.0, "ctf": True,
    }

    def __init__(self, table):
        self.params = _take(table, self.DEFAULTS, self.name)

    def check(self, ctx):
        p = self.params
        if p["map"] != "phantom":
            path = ctx.config_path(p["map"])
            if not path.is_file():
                raise InputError(f"[simulate] map = {p['map']!r}: {path} does not exist: fix the path or use \"phantom\"")
            from ..io.mrc import read_header_info

            shape = read_header_info(path)["shape"]
            box = shape[-1]
        else:
            box = int(p["box"])
            if box < 16 or box % 2:
                raise InputError(f"[simulate] box = {p['box']}: must be even and at least 16")
        if int(p["n"]) < 1:
            raise InputError(f"[simulate] n = {p['n']}: must be at least 1")
        ctx.facts.update(n_particles=int(p["n"]), box=box, pixel_size_A=float(p["pixel_size_A"]),
                         particles=self._dir(ctx) / "particles.star", truth_map=self._dir(ctx) / "truth.mrc")

    def _dir(self, ctx):
        return ctx.path("simulated")

    def inputs(self, ctx):
        return [] if self.params["map"] == "phantom" else [ctx.config_path(self.params["map"])]

    def outputs(self, ctx):
        d = self._dir(ctx)
        return [d / "particles.star", d / "particles.mrcs", d / "truth.mrc"]

    def run(self, ctx):
        import tempfile

        from ..io.mrc import write_map
        from ..simulation.phantom import chiral_phantom
        from ..simulation.simulate import simulate_dataset

        p = self.params
        with tempfile.TemporaryDirectory() as tmp:
            if p["map"] == "phantom":
                src = Path(tmp) / "phantom.mrc"
                write_map(src, chiral_phantom(int(p["box"]), rng=np.random.default_rng([ctx.seed, 7])), float(p["pixel_size_A"]))
            else:
                src = ctx.config_path(p["map"])
            summary = simulate_dataset(
                src, self._dir(ctx), n=int(p["n"]), snr=float(p["snr"]), seed=ctx.seed,
                pixel_size_A=float(p["pixel_size_A"]), defocus_range_um=tuple(p["defocus_range_um"]),
                shift_sigma_px=float(p["shift_sigma_px"]), max_shift_px=float(p["max_shift_px"]), ctf=bool(p["ctf"]),
            )
        log.info("simulated %d particles of %d px at %g A/px, SNR %g", summary["n"], summary["box"], summary["pixel_size_A"], summary["snr"])
        return {"n": summary["n"], "box": summary["box"], "pixel_size_A": summary["pixel_size_A"], "snr": summary["snr"]}


class PreprocessStage:
    """Load the particles of a STAR file; normalise, whiten, invert and downsample them.

    Writes ``preprocessed.mrcs`` (working box, working pixel size) in the run folder.
    """

    name = "preprocess"
    DEFAULTS = {
        "particles": None, "pixel_size_A": None, "pixel_size_override_A": None, "working_box": "auto", "particle_diameter_A": None,
        "invert_contrast": False, "whiten_noise": False, "phase_flip": False, "ctf": True,
    }

    def __init__(self, table):
        self.params = _take(table, self.DEFAULTS, self.name)

    def star_path(self, ctx) -> Path:
        if self.params["particles"] is not None:
            return ctx.config_path(self.params["particles"])
        if "particles" in ctx.facts:
            return Path(ctx.facts["particles"])
        raise InputError("[preprocess] particles: name the particle STAR file, e.g. particles = \"data/particles.star\"")

    def open_stack(self, ctx):
        from ..io.particles import ParticleStack

        p = self.params
        px = p["pixel_size_override_A"] if p["pixel_size_override_A"] is not None else p["pixel_size_A"]
        return ParticleStack.from_star(self.star_path(ctx), pixel_size_A=px, require_ctf=bool(p["ctf"]))

    def check(self, ctx):
        p = self.params
        star = self.star_path(ctx)
        if star.exists() or "particles" not in ctx.facts or self.params["particles"] is not None:
            if not star.is_file():
                raise InputError(f"[preprocess] particles = {str(p['particles'] or star)!r}: {star} does not exist: fix the path")
            stack = self.open_stack(ctx)
            n, box, star_px = stack.n, stack.box, self._star_pixel_size(star, stack)
        else:  # made by an earlier stage of this run
            n, box, star_px = ctx.facts["n_particles"], ctx.facts["box"], ctx.facts["pixel_size_A"]
        if p["pixel_size_A"] is not None and star_px and abs(p["pixel_size_A"] - star_px) > PIXEL_SIZE_RTOL * star_px:
            raise InputError(
                f"[preprocess] pixel_size_A = {p['pixel_size_A']:g} disagrees with {star} ({star_px:g} A): "
                "remove pixel_size_A to use the STAR file's, or fix rlnImagePixelSize in the STAR file"
            )
        px = float(p["pixel_size_override_A"] or p["pixel_size_A"] or star_px or 0)
        if not px > 0:
            raise InputError(f"{star}: no pixel size in the STAR file or the stack header: set [preprocess] pixel_size_A")
        working = self.working_box(box)
        if working % 2 or working < 16 or working > box:
            raise InputError(f"[preprocess] working_box = {working}: must be even, at least 16 and at most the particle box ({box} px)")
        diameter = p["particle_diameter_A"]
        if diameter is not None and not 0 < diameter / px < box:
            raise InputError(f"[preprocess] particle_diameter_A = {diameter:g}: must be positive and smaller than the box ({box * px:g} A)")
        if p["phase_flip"] and not p["ctf"]:
            raise InputError("[preprocess] phase_flip = true needs CTF parameters: set ctf = true or phase_flip = false")
        ctx.facts.update(n_particles=n, original_box=box, working_box=working,
                         working_pixel_size_A=px * box / working, particles=star,
                         # phase-flipped data follow |CTF| F, which the engine does not model;
                         # it then treats them as CTF-free
                         use_ctf=bool(p["ctf"]) and not p["phase_flip"])

    @staticmethod
    def _star_pixel_size(star, stack) -> float | None:
        """The STAR file's own pixel size (else the stack header's), ignoring any override."""
        from ..io.star import read_particle_table

        df = read_particle_table(star).particles
        if "rlnImagePixelSize" in df.columns:
            return float(df["rlnImagePixelSize"].iloc[0])
        return stack.header_pixel_size_A or None

    def working_box(self, box) -> int:
        """The configured working box; ``"auto"``: min(box, 64) on a CPU, min(box, 128) on a GPU."""
        from ..backend import current_device

        wb = self.params["working_box"]
        if wb == "auto":
            return min(box, 128 if current_device() == "gpu" else 64)
        if not isinstance(wb, int) or isinstance(wb, bool):
            raise InputError(f"[preprocess] working_box = {wb!r}: must be an even integer or \"auto\"")
        return wb

    def inputs(self, ctx):
        star = self.star_path(ctx)
        if not star.exists():
            return [star]
        stack = self.open_stack(ctx)
        return [star, *sorted({Path(p) for p in stack._files.paths})]

    def outputs(self, ctx):
        return [ctx.path("preprocessed.mrcs")]

    def run(self, ctx):
        from ..io.mrc import write_stack
        from ..reconstruct.preprocess import phase_flip, prepare_particles

        p = self.params
        stack = self.open_stack(ctx)
        box = self.working_box(stack.box)
        with _progress_bar(ctx, stack.n, "preprocess") as bar:
            images, px = prepare_particles(
                stack, box, particle_diameter_A=p["particle_diameter_A"], invert_contrast=bool(p["invert_contrast"]),
                whiten_noise=bool(p["whiten_noise"]), progress=bar,
            )
        if p["phase_flip"]:
            images = phase_flip(images, stack.ctf_params(), px)
        write_stack(ctx.path("preprocessed.mrcs"), images, px)
        log.info("preprocessed %d particles: %d px -> %d px, %.3f A/px%s%s%s", stack.n, stack.box, box, px,
                 ", whitened" if p["whiten_noise"] else "", ", inverted" if p["invert_contrast"] else "",
                 ", phase-flipped" if p["phase_flip"] else "")
        return {"n": stack.n, "original_box": stack.box, "working_box": box, "pixel_size_A": px,
                "original_pixel_size_A": stack.pixel_size_A, "star": str(self.star_path(ctx))}


class AbinitioStage:
    """Ab initio map from the preprocessed particles (SGD with marginalised poses).

    Any :class:`~cryorecon.reconstruct.abinitio.AbinitioSettings` field may be set in the
    ``[abinitio]`` table; the seed is the pipeline's. Writes ``map.mrc`` (+
    ``map_classNN.mrc``), ``particles.star`` (estimated poses, RELION 3.1) and
    ``history.csv``; checkpoints to ``checkpoint.npz`` and resumes from it.
    """

    name = "abinitio"

    def __init__(self, table):
        from ..reconstruct.abinitio import AbinitioSettings

        allowed = {k: None for k in asdict(AbinitioSettings())}
        allowed.pop("seed")
        self.params = _take(table, allowed, self.name)
        self.params = {k: v for k, v in self.params.items() if v is not None}

    def check(self, ctx):
        for key in ("n_particles", "working_box", "working_pixel_size_A"):
            if key not in ctx.facts:
                raise InputError("[pipeline] stages: abinitio needs a preprocess stage before it")
        self.settings(ctx)

    def settings(self, ctx, snr=None):
        """The run's settings; ``snr`` (estimated from the particles) sets the SGD budget."""
        from ..reconstruct.abinitio import default_settings

        f = ctx.facts
        overrides = {**self.params, "seed": ctx.seed}
        overrides.setdefault("use_ctf", f.get("use_ctf", True))
        try:
            return default_settings(f["n_particles"], f["working_box"], f["working_pixel_size_A"], snr=snr, **overrides)
        except TypeError as err:
            raise InputError(f"[abinitio]: a setting has the wrong type ({err})") from err

    def inputs(self, ctx):
        return [ctx.path("preprocessed.mrcs"), Path(ctx.facts["particles"])]

    def outputs(self, ctx):
        return [ctx.path("map.mrc"), ctx.path("particles.star"), ctx.path("history.csv")]

    def _checkpoint(self, ctx):
        return ctx.path("checkpoint.npz")

    def _checkpoint_files(self, ctx):
        cp = self._checkpoint(ctx)
        return [cp, *cp.parent.glob(f"{cp.stem}.optim-*.npz"), ctx.path("checkpoint.json")]

    def forget(self, ctx):
        """A forced rerun starts afresh: drop the checkpoint."""
        for p in self._checkpoint_files(ctx):
            p.unlink(missing_ok=True)

    def run(self, ctx):
        from ..backend import set_device
        from ..io.mrc import read_map
        from ..io.particles import ParticleStack
        from ..reconstruct.preprocess import estimate_snr
        from ..reconstruct.abinitio import Abinitio, write_outputs

        set_device(ctx.device)
        f = ctx.facts
        images, px = read_map(ctx.path("preprocessed.mrcs"))
        snr = estimate_snr(images)
        settings = self.settings(ctx, snr=snr)
        stack = ParticleStack.from_star(f["particles"], require_ctf=settings.use_ctf)
        ctf = stack.ctf_params() if settings.use_ctf else None
        # Resume only from a checkpoint made by this same stage on these same inputs.
        key = _json_normal({"settings": asdict(settings), "inputs": {str(p): sha256_file(p) for p in self.inputs(ctx)}})
        marker = ctx.path("checkpoint.json")
        resume = False
        if self._checkpoint(ctx).exists():
            try:
                resume = json.loads(marker.read_text()) == key
            except (OSError, json.JSONDecodeError):
                resume = False
            if not resume:
                log.info("abinitio: checkpoint from other settings or inputs; starting afresh")
                self.forget(ctx)
        from ..io.atomic import atomic_open

        with atomic_open(marker, "w") as fh:
            json.dump(key, fh)
        if resume:
            log.info("abinitio: resuming from %s", self._checkpoint(ctx))
        log.info("abinitio: %d particles, %d px at %.3f A/px, SNR %.3g; SGD for %.3g passes over the data, batch %d, target %.1f A, %d class(es)",
                 len(images), images.shape[-1], px, snr, settings.epochs, settings.batch_size, settings.target_res_A, settings.n_classes)
        engine = Abinitio(images, px, ctf, settings, checkpoint_path=self._checkpoint(ctx),
                          progress=ctx.progress, original_box=f["original_box"])
        result = engine.run(resume=resume)
        main_class = write_outputs(result, stack, ctx.run_dir, f["original_box"])
        hist = result.history.as_array()
        last = dict(zip(result.history.columns, hist[-1])) if len(hist) else {}
        log.info("abinitio: finished; final loss %.5g at %.1f A", last.get("loss", float("nan")), last.get("resolution_A", float("nan")))
        return {"resumed": resume, "settings": asdict(settings), "snr_estimate": snr if math.isfinite(snr) else None, "main_class": main_class, "pixel_size_A": result.pixel_size_A,
                "box": int(result.maps.shape[-1]), "iterations": int(len(hist)), "final": last}


class CompareStage:
    """Align the map to a reference (rotation, mirror, shift) and compute the FSC.

    Writes ``map_aligned.mrc``, ``fsc.csv`` and ``fsc.png``; with ``truth_star`` (the
    true poses) also the mean/median pose error after the alignment.
    """

    name = "compare"
    DEFAULTS = {"reference": None, "truth_star": None, "mask_radius_A": None}

    def __init__(self, table):
        self.params = _take(table, self.DEFAULTS, self.name)

    def reference(self, ctx) -> Path:
        if self.params["reference"] is not None:
            return ctx.config_path(self.params["reference"])
        if "truth_map" in ctx.facts:
            return Path(ctx.facts["truth_map"])
        raise InputError("[compare] reference: name the reference map, e.g. reference = \"truth.mrc\"")

    def truth_star(self, ctx):
        if self.params["truth_star"] is not None:
            return ctx.config_path(self.params["truth_star"])
        if "truth_map" in ctx.facts:  # a simulate stage: its STAR file holds the true poses
            return Path(ctx.facts["particles"])
        return None

    def check(self, ctx):
        ref = self.reference(ctx)
        if self.params["reference"] is not None and not ref.is_file():
            raise InputError(f"[compare] reference = {self.params['reference']!r}: {ref} does not exist: fix the path")
        ts = self.truth_star(ctx)
        if self.params["truth_star"] is not None and not ts.is_file():
            raise InputError(f"[compare] truth_star = {self.params['truth_star']!r}: {ts} does not exist: fix the path")
        if ref.is_file():
            from ..io.mrc import read_header_info

            shape = read_header_info(ref)["shape"]
            if len(shape) != 3 or len(set(shape)) != 1:
                raise InputError(f"[compare] reference {ref}: need a cubic 3D map, got shape {shape}")

    def inputs(self, ctx):
        ts = self.truth_star(ctx)
        return [ctx.path("map.mrc"), self.reference(ctx)] + ([ctx.path("particles.star"), ts] if ts else [])

    def outputs(self, ctx):
        return [ctx.path("map_aligned.mrc"), ctx.path("fsc.csv"), ctx.path("fsc.png")]

    def run(self, ctx):
        from .. import validate
        from ..forward.fourier import fourier_crop
        from ..io.mrc import read_map, write_map
        from ..io.particles import ParticleStack

        vol, px = read_map(ctx.path("map.mrc"))
        ref, ref_px = read_map(self.reference(ctx))
        ref_px = ref_px or px
        L = vol.shape[0]
        if ref.shape[0] != L:
            # Put the reference on the map's grid: Fourier-crop when the voxel sizes say so.
            expected = ref.shape[0] * ref_px / px
            if abs(expected - L) > 0.5 or ref.shape[0] < L:
                raise InputError(f"{self.reference(ctx)}: {ref.shape[0]} px at {ref_px:g} A/px does not match the map "
                                 f"({L} px at {px:g} A/px): give a reference of the same size in A")
            ref = fourier_crop(ref, L, ndim=3).astype(np.float32)
        aligned, info = validate.align_maps(vol, ref, pixel_size_A=px)
        write_map(ctx.path("map_aligned.mrc"), aligned, px)
        mask = None
        if self.params["mask_radius_A"] is not None:
            mask = validate.soft_spherical_mask(L, radius_A=self.params["mask_radius_A"], pixel_size_A=px)
        shells, curve = validate.fsc(aligned, ref, mask)
        validate.write_fsc_csv(ctx.path("fsc.csv"), shells, {"fsc_vs_reference": curve}, box=L, pixel_size_A=px)
        validate.plot_fsc(ctx.path("fsc.png"), {"ab initio map vs reference": (shells, curve)}, box=L, pixel_size_A=px,
                          title="FSC against the reference (after alignment)")
        res = validate.fsc_resolutions_A(curve, L, px)
        out = {"reference": str(self.reference(ctx)), "mirrored": bool(info["mirrored"]), "correlation": float(info["correlation"]),
               "fsc_0.143_A": float(res[0.143]), "fsc_0.5_A": float(res[0.5])}
        ts = self.truth_star(ctx)
        if ts is not None:
            est = ParticleStack.from_star(ctx.path("particles.star"), require_ctf=False).rotations
            true = ParticleStack.from_star(ts, require_ctf=False).rotations
            if est is not None and true is not None and len(est) == len(true):
                from ..geometry.rotations import angular_distance_deg

                err = angular_distance_deg(validate.map_poses(est, info), true)
                out.update(pose_error_median_deg=float(np.median(err)), pose_error_mean_deg=float(np.mean(err)),
                           pose_within_15deg=float(np.mean(err < 15)))
        log.info("compare: %s; FSC 0.5 %.2f A, 0.143 %.2f A%s", "mirrored" if out["mirrored"] else "same hand",
                 out["fsc_0.5_A"], out["fsc_0.143_A"],
                 f"; median pose error {out['pose_error_median_deg']:.1f} deg" if "pose_error_median_deg" in out else "")
        return out


class PlotsStage:
    """``loss.png``, ``slices.png`` and ``projections.png`` from the ab initio outputs."""

    name = "plots"
    DEFAULTS = {"n_views": 6, "view_tolerance_deg": 15.0}

    def __init__(self, table):
        self.params = _take(table, self.DEFAULTS, self.name)

    def check(self, ctx):
        if not 1 <= int(self.params["n_views"]) <= 12:
            raise InputError(f"[plots] n_views = {self.params['n_views']}: choose 1 to 12")

    def _compared(self, ctx) -> list[Path]:
        """The aligned map and its reference, where a compare stage of this run made them."""
        ref = ctx.results.get("compare", {}).get("reference")
        return [ctx.path("map_aligned.mrc"), Path(ref)] if ref else []

    def inputs(self, ctx):
        base = [ctx.path("history.csv"), ctx.path("map.mrc"), ctx.path("particles.star"), ctx.path("preprocessed.mrcs")]
        return base + self._compared(ctx)

    def outputs(self, ctx):
        return [ctx.path("loss.png"), ctx.path("slices.png"), ctx.path("projections.png")]

    def run(self, ctx):
        from ..report import plots
        from ..io.mrc import read_map
        from ..io.particles import ParticleStack

        history = plots.read_history_csv(ctx.path("history.csv"))
        plots.plot_history(ctx.path("loss.png"), history)
        vol, px = read_map(ctx.path("map.mrc"))
        shown = {"ab initio map": vol}
        compared = self._compared(ctx)
        if compared:
            aligned, _ = read_map(compared[0])
            ref, _ = read_map(compared[1])
            if ref.shape[0] > vol.shape[0]:  # compare put it on the map's grid the same way
                from ..forward.fourier import fourier_crop

                ref = fourier_crop(ref, vol.shape[0], ndim=3)
            if ref.shape == vol.shape:
                shown.update({"aligned to reference": aligned, "reference": ref})
        plots.plot_slices(ctx.path("slices.png"), shown, px)
        images, img_px = read_map(ctx.path("preprocessed.mrcs"))
        est = ParticleStack.from_star(ctx.path("particles.star"), require_ctf=False)
        ctf = est.ctf_params() if est.has_ctf else None
        shifts_px = est.shifts_A / img_px
        views = plots.plot_projections(
            ctx.path("projections.png"), vol, est.rotations, shifts_px, images, img_px, ctf_params=ctf,
            n_views=int(self.params["n_views"]), tolerance_deg=float(self.params["view_tolerance_deg"]),
            rng=np.random.default_rng([ctx.seed, 11]),
        )
        return {"views": views}


class ReportStage:
    """``report.md``: the settings, the numbers and the figures of the run."""

    name = "report"
    DEFAULTS = {"title": None}

    def __init__(self, table):
        self.params = _take(table, self.DEFAULTS, self.name)

    def check(self, ctx):
        pass

    def inputs(self, ctx):
        names = ["map.mrc", "history.csv", "loss.png", "slices.png", "projections.png", "fsc.csv"]
        return [ctx.path(n) for n in names if ctx.path(n).exists() or n in ("map.mrc", "history.csv")]

    def outputs(self, ctx):
        return [ctx.path("report.md")]

    def run(self, ctx):
        from ..report.markdown import write_report

        record_path = ctx.path(RECORD_NAME)
        record = json.loads(record_path.read_text()) if record_path.exists() else {"stages": {}}
        write_report(ctx.path("report.md"), ctx.run_dir, record, title=self.params["title"])
        return {}


#: Stage classes by config name, in their usual order.
STAGES = {cls.name: cls for cls in (SimulateStage, PreprocessStage, AbinitioStage, CompareStage, PlotsStage, ReportStage)}


def run_pipeline(path, run_dir=None, overrides=(), force=(), progress=True) -> tuple[Path, dict]:
    """Build a pipeline from a TOML file and run it; return (run folder, summaries)."""
    pipe = Pipeline.from_toml(path, run_dir=run_dir, overrides=overrides, progress=progress)
    results = pipe.run(force=force)
    return pipe.ctx.run_dir, results


def default_run_dir(toml_path) -> Path:
    """``runs/NAME``: NAME from ``[pipeline] name``, else the TOML file's stem."""
    try:
        with open(toml_path, "rb") as fh:
            name = tomllib.load(fh).get("pipeline", {}).get("name")
    except (OSError, tomllib.TOMLDecodeError):
        name = None
    return Path("runs") / (name or Path(toml_path).stem)


__all__ = [
    "Stage", "RunContext", "Pipeline", "STAGES", "SimulateStage", "PreprocessStage", "AbinitioStage",
    "CompareStage", "PlotsStage", "ReportStage", "load_config", "parse_override", "run_pipeline",
    "default_run_dir", "sha256_file",
]
