"""What a run gives back: the per-iteration history, the result, and the files written.

``history.csv`` has one row per SGD iteration; ``map.mrc`` (and ``map_classNN.mrc``)
the maps at the working box; ``particles.star`` the poses, back in the particles' own
STAR file as RELION 3.1 angles and origins.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ...geometry.rotations import matrix_to_euler
from ...io.atomic import atomic_open
from .settings import AbinitioSettings


@dataclass
class History:
    """Per-iteration log, written as ``history.csv``.

    ``batch_snr`` is the batch gradient's signal-to-noise ratio that the hand-over
    reads (NaN where it was not measured); ``seconds`` stays the last column.
    """

    rows: list = field(default_factory=list)
    columns = ("iteration", "loss", "grad_norm", "k_max_px", "resolution_A", "batch_size", "batch_snr", "seconds")

    def add(self, **row):
        """One row; a column not given (``batch_snr`` where nothing was measured) is NaN."""
        unknown = set(row) - set(self.columns)
        if unknown:
            raise KeyError(f"History has no column(s) {sorted(unknown)}")
        self.rows.append([row.get(c, math.nan) for c in self.columns])

    def column(self, name) -> np.ndarray:
        """One column as float64."""
        return self.as_array()[:, self.columns.index(name)]

    def as_array(self) -> np.ndarray:
        return np.asarray(self.rows, dtype=np.float64).reshape(-1, len(self.columns))

    def write_csv(self, path):
        with atomic_open(path, "w") as fh:
            fh.write(",".join(self.columns) + "\n")
            for r in self.rows:
                fh.write(",".join(f"{v:.6g}" for v in r) + "\n")


@dataclass(frozen=True)
class HandoverRecord:
    """When and why the SGD phase ended.

    Attributes
    ----------
    reason : str
        ``"snr"`` (the batch gradient's SNR stayed above the threshold), ``"budget"``
        (the image visits ran out first) or ``"max_iter"``.
    iteration, visits : int
        SGD iterations and image visits done.
    budget : int
        The visit budget (``epochs`` passes).
    resolution_A : float
        The band at the last iteration.
    batch_snr : float
        The last measured batch gradient SNR (NaN if never measured).
    """

    reason: str
    iteration: int
    visits: int
    budget: int
    resolution_A: float
    batch_snr: float

    def as_dict(self) -> dict:
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in self.__dict__.items()}


@dataclass
class AbinitioResult:
    maps: np.ndarray  # (K, L, L, L) float32, working box
    pixel_size_A: float  # of the working box
    rotations: np.ndarray  # (N, 3, 3) best pose per particle
    shifts_px: np.ndarray  # (N, 2) best origin offsets, working pixels
    classes: np.ndarray  # (N,) best class
    class_probability: np.ndarray  # (N, K)
    history: History
    settings: AbinitioSettings
    handover: HandoverRecord | None = None  # when and why SGD ended


def write_outputs(result: AbinitioResult, stack, out_dir, original_box: int):
    """``map.mrc`` (and ``map_classNN.mrc``), ``particles.star`` and ``history.csv``.

    Maps are written at the working box with its voxel size; poses go back to the
    particles' own STAR file as RELION 3.1 angles (degrees) and origins (Angstrom).
    """
    from ...io.mrc import write_map  # mrcfile only for a run that writes maps

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    counts = np.bincount(result.classes, minlength=result.maps.shape[0])
    main_class = int(np.argmax(counts))
    write_map(out / "map.mrc", result.maps[main_class], result.pixel_size_A)
    if result.maps.shape[0] > 1:
        for k, m in enumerate(result.maps):
            write_map(out / f"map_class{k + 1:02d}.mrc", m, result.pixel_size_A)
    rot, tilt, psi = matrix_to_euler(result.rotations.astype(np.float64))
    shifts_A = result.shifts_px.astype(np.float64) * result.pixel_size_A
    extra = {"rlnClassNumber": result.classes + 1, "rlnMaxValueProbDistribution": result.class_probability.max(axis=1)}
    stack.write_star(out / "particles.star", euler_deg=np.stack([rot, tilt, psi], axis=1), shifts_A=shifts_A, extra_columns=extra)
    result.history.write_csv(out / "history.csv")
    return main_class
