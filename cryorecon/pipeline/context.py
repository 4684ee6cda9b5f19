"""What a pipeline's stages share (:class:`RunContext`) and what a stage is (:class:`Stage`)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable


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
        """``name`` inside the run folder."""
        return self.run_dir / name

    def config_path(self, value) -> Path:
        """A path from the config: absolute as given, else relative to the TOML's folder."""
        p = Path(value).expanduser()
        return p if p.is_absolute() else (self.config_dir / p).resolve()


@runtime_checkable
class Stage(Protocol):
    """One step of a pipeline: it reads its inputs, calls the library, writes its outputs.

    Attributes
    ----------
    name : str
        The stage's name in the config, ``run.json`` and ``--force``.
    params : dict
        The stage's settings (JSON-serialisable); a change reruns the stage.

    A stage may also define ``forget(ctx)``, called before a forced rerun (e.g. to drop
    a checkpoint).
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


__all__ = ["RunContext", "Stage"]
