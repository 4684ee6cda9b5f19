"""A reconstruction job as the napari widget runs it: the same pipeline as ``cryorecon abinitio``.

:class:`AbinitioJob` builds the config that ``cryorecon abinitio`` builds from its flags
(stages ``preprocess`` and ``abinitio``), writes it into the run folder as
``pipeline.toml`` and runs it with :class:`cryorecon.pipeline.Pipeline`, with an observer
installed by :func:`cryorecon.reconstruct.abinitio.watching`. An observer that asks to
stop leaves a checkpoint behind, so the same run resumes from the widget
(:meth:`AbinitioJob.run` with ``resume=True``) or from the command line
(:meth:`AbinitioJob.resume_command`). Nothing here imports napari or Qt.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InputError

__all__ = ["AbinitioJob", "JobOutcome", "to_toml"]

PIPELINE_FILE = "pipeline.toml"


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        # a JSON string is a valid TOML basic string
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} {value!r} as TOML")


def to_toml(config: dict) -> str:
    """A config of tables of scalars and lists as TOML text (None values left out).

    Examples
    --------
    >>> print(to_toml({"pipeline": {"name": "x", "stages": ["a"]}, "abinitio": {"max_iter": 5, "seed": None}}))
    [pipeline]
    name = "x"
    stages = ["a"]
    <BLANKLINE>
    [abinitio]
    max_iter = 5
    <BLANKLINE>
    """
    parts = []
    for table, values in config.items():
        lines = [f"[{table}]"] + [f"{k} = {_toml_value(v)}" for k, v in values.items() if v is not None]
        parts.append("\n".join(lines) + "\n")
    return "\n".join(parts)


@dataclass
class JobOutcome:
    """How a job ended: ``finished`` with the ab initio summary, or stopped at ``iteration``."""

    finished: bool
    map_path: Path | None = None
    summary: dict = field(default_factory=dict)
    iteration: int | None = None
    checkpoint: Path | None = None


@dataclass
class AbinitioJob:
    """An ab initio run of a STAR file's particles into a run folder.

    Parameters
    ----------
    particles : path
        RELION particle STAR file.
    out : path
        Run folder (``map.mrc``, ``particles.star``, ``history.csv``, ``checkpoint.npz``).
    classes : int
    target_res_A : float, optional
        Final band limit (default: Nyquist of the working box + 10%).
    device : {"auto", "cpu", "gpu"}
    seed : int
    working_box : int, optional
        Downsample the particles to this box (default as ``cryorecon abinitio``).
    max_iter : int, optional
        Cap on SGD iterations.
    settings : dict
        Any other :class:`~cryorecon.reconstruct.abinitio.AbinitioSettings` field
        (``checkpoint_every``, ``handover_passes`` ...).

    Examples
    --------
    >>> job = AbinitioJob("sample_data/particles.star", "runs/napari", max_iter=20)   # doctest: +SKIP
    >>> outcome = job.run(observer=lambda report: print(report.iteration))               # doctest: +SKIP
    """

    particles: Path
    out: Path
    classes: int = 1
    target_res_A: float | None = None
    device: str = "auto"
    seed: int = 0
    working_box: int | None = None
    max_iter: int | None = None
    settings: dict = field(default_factory=dict)

    def __post_init__(self):
        self.particles, self.out = Path(self.particles), Path(self.out)
        if self.device not in ("auto", "cpu", "gpu"):
            raise InputError(f"device {self.device!r}: choose auto, cpu or gpu")
        if int(self.classes) < 1:
            raise InputError(f"classes {self.classes}: give 1 or more")

    def config(self) -> dict:
        """The pipeline config, key for key what ``cryorecon abinitio`` builds from the same flags."""
        abinitio = {"n_classes": int(self.classes), "max_iter": self.max_iter, "target_res_A": self.target_res_A,
                    **self.settings}
        config = {
            "pipeline": {"name": "abinitio", "seed": int(self.seed), "device": self.device, "stages": ["preprocess", "abinitio"]},
            "preprocess": {"particles": str(self.particles.resolve()),
                           "working_box": self.working_box if self.working_box is not None else "auto", "ctf": True},
            "abinitio": abinitio,
        }
        return {k: {kk: vv for kk, vv in v.items() if vv is not None} for k, v in config.items()}

    def pipeline(self, progress: bool = False):
        """The :class:`~cryorecon.pipeline.Pipeline` of this job (its config checked)."""
        from ..pipeline import Pipeline

        if not self.particles.is_file():
            raise InputError(f"{self.particles}: STAR file not found: choose the particles' STAR file")
        return Pipeline.from_config(self.config(), self.out, self.out, progress=progress)

    def resume_command(self) -> str:
        """The command line that continues this run where it stopped."""
        return f"cryorecon run {self.out / PIPELINE_FILE} --out {self.out}"

    def can_resume(self) -> bool:
        """Whether the run folder holds a checkpoint to continue from."""
        return (self.out / "checkpoint.npz").is_file()

    def run(self, observer=None, resume: bool = False) -> JobOutcome:
        """Run the job; ``observer`` is told of every SGD iteration and may stop it.

        Parameters
        ----------
        observer : callable, optional
            ``observer(report) -> bool``, see :mod:`cryorecon.reconstruct.abinitio.observe`.
        resume : bool
            Reuse the finished preprocessing and continue ab initio from its checkpoint;
            otherwise start afresh (as ``cryorecon abinitio`` without ``--resume``).

        Returns
        -------
        JobOutcome
        """
        from ..io.atomic import atomic_open
        from ..reconstruct.abinitio import RunStopped, watching

        pipe = self.pipeline()
        self.out.mkdir(parents=True, exist_ok=True)
        with atomic_open(self.out / PIPELINE_FILE, "w") as fh:
            fh.write("# written by the cryorecon napari widget; continue with: " + self.resume_command() + "\n")
            fh.write(to_toml(self.config()))
        try:
            with watching(observer):
                results = pipe.run(force=() if resume else ("all",))
        except RunStopped as stop:
            return JobOutcome(False, iteration=stop.iteration, checkpoint=stop.checkpoint)
        return JobOutcome(True, map_path=self.out / "map.mrc", summary=results.get("abinitio", {}))
