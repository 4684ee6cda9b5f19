"""The runner: stages in order in one run folder, each recorded in ``run.json``, reused when done."""
from __future__ import annotations

import logging
import time
from pathlib import Path

from .. import __version__
from ..errors import InputError
from .config import load_config, parse_head
from .context import RunContext
from .record import RECORD_NAME, Checksums, json_normal, read_record, stage_entry, still_valid, write_record

log = logging.getLogger("cryorecon.pipeline")

LOG_NAME = "run.log"


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
        """Build from an already parsed config (as :func:`~.config.load_config` returns)."""
        from .stages import STAGES

        names, seed, device = parse_head(config, STAGES)
        stages = [STAGES[name](config.get(name, {})) for name in names]
        ctx = RunContext(run_dir=Path(run_dir), config_dir=Path(config_dir), seed=seed, device=device, progress=progress)
        return cls(stages, ctx, config)

    # ------------------------------------------------------------------ record
    def _record_path(self) -> Path:
        return self.ctx.run_dir / RECORD_NAME

    def read_record(self) -> dict:
        """``run.json`` as a dict (empty skeleton where there is none yet)."""
        return read_record(self._record_path())

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
        checksums = Checksums(record.get("checksums", {}))
        log.info("pipeline %s in %s (cryorecon %s, seed %d): %s", self.config.get("pipeline", {}).get("name", "?"),
                 ctx.run_dir, __version__, ctx.seed, ", ".join(s.name for s in self.stages))
        record.update({"version": __version__, "seed": ctx.seed, "config": json_normal(self.config)})
        for stage in self.stages:
            params = json_normal(stage.params)
            in_sums = self._input_checksums(stage, checksums)
            prev = record["stages"].get(stage.name)
            if stage.name not in force and still_valid(prev, params, in_sums, ctx.seed, checksums):
                log.info("stage %s: done before with the same inputs and parameters; skipped", stage.name)
                ctx.results[stage.name] = prev.get("summary", {})
                prev["skipped"] = True
                continue
            self._run_one(stage, stage.name in force, params, in_sums, record, checksums)
        record["checksums"] = checksums.known
        write_record(self._record_path(), record)
        return dict(ctx.results)

    def _input_checksums(self, stage, checksums) -> dict:
        ins = [Path(p) for p in stage.inputs(self.ctx)]
        for p in ins:
            if not p.exists():
                raise InputError(f"stage {stage.name}: input {p} does not exist: run the stage that makes it or fix the path")
        return {str(p): checksums(p) for p in ins}

    def _run_one(self, stage, forced, params, in_sums, record, checksums):
        """Run one stage and record it; the record says unfinished until it is done."""
        ctx = self.ctx
        if forced:
            log.info("stage %s: forced", stage.name)
            hook = getattr(stage, "forget", None)
            if hook is not None:
                hook(ctx)
        # A stage about to run is no longer finished; a crash mid-way must not leave
        # a record that says it is.
        record["stages"].pop(stage.name, None)
        write_record(self._record_path(), record)
        log.info("stage %s: running", stage.name)
        t0 = time.perf_counter()
        summary = stage.run(ctx) or {}
        seconds = time.perf_counter() - t0
        outs = [Path(p) for p in stage.outputs(ctx)]
        missing = [str(p) for p in outs if not p.exists()]
        if missing:
            raise RuntimeError(f"stage {stage.name} did not write {', '.join(missing)}")
        out_sums = {str(p): checksums(p) for p in outs}
        record["stages"][stage.name] = stage_entry(params, in_sums, out_sums, seconds, ctx.seed, summary)
        record["checksums"] = checksums.known
        write_record(self._record_path(), record)
        ctx.results[stage.name] = record["stages"][stage.name]["summary"]
        log.info("stage %s: finished in %.1f s", stage.name, seconds)


def _attach_log(path: Path) -> logging.Handler:
    """Append INFO records of every ``cryorecon`` logger to ``path`` (the run log)."""
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S"))
    root = logging.getLogger("cryorecon")
    root.setLevel(logging.INFO)
    root.addHandler(handler)
    return handler


def run_pipeline(path, run_dir=None, overrides=(), force=(), progress=True) -> tuple[Path, dict]:
    """Build a pipeline from a TOML file and run it; return (run folder, summaries)."""
    pipe = Pipeline.from_toml(path, run_dir=run_dir, overrides=overrides, progress=progress)
    results = pipe.run(force=force)
    return pipe.ctx.run_dir, results


__all__ = ["Pipeline", "run_pipeline", "LOG_NAME"]
