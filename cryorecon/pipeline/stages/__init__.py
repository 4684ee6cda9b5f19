"""The stages a pipeline config may name, one module each.

A stage holds no science: it checks its config, reads its inputs, calls one library
function and writes the outputs (see :class:`~cryorecon.pipeline.context.Stage`).
"""
from .abinitio import AbinitioStage
from .compare import CompareStage
from .plots import PlotsStage
from .preprocess import PreprocessStage
from .report import ReportStage
from .simulate import SimulateStage

#: Stage classes by config name, in their usual order.
STAGES = {cls.name: cls for cls in (SimulateStage, PreprocessStage, AbinitioStage, CompareStage, PlotsStage, ReportStage)}

__all__ = ["STAGES", "SimulateStage", "PreprocessStage", "AbinitioStage", "CompareStage", "PlotsStage", "ReportStage"]
