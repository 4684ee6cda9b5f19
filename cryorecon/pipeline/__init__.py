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

Modules: :mod:`.config` (TOML, ``--set``, key checks), :mod:`.context` (what stages
share), :mod:`.record` (``run.json``, checksums, reuse), :mod:`.runner` (the
:class:`Pipeline`), and :mod:`.stages` (one module per stage).
"""
from .config import default_run_dir, load_config, parse_override
from .context import RunContext, Stage
from .record import sha256_file
from .runner import Pipeline, run_pipeline
from .stages import (
    STAGES,
    AbinitioStage,
    CompareStage,
    PlotsStage,
    PreprocessStage,
    ReportStage,
    SimulateStage,
)

__all__ = [
    "Stage", "RunContext", "Pipeline", "STAGES", "SimulateStage", "PreprocessStage", "AbinitioStage",
    "CompareStage", "PlotsStage", "ReportStage", "load_config", "parse_override", "run_pipeline",
    "default_run_dir", "sha256_file",
]
