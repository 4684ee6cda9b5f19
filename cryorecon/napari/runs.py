"""A finished run folder as the results widget and ``cryorecon view`` show it.

:class:`RunFolder` finds what a run wrote (``map.mrc`` and class maps, half-maps, mask,
post-processed maps, ``fsc.csv``, ``particles.star``, ``history.csv``) and turns it into
layers, curves and a histogram of the viewing directions. Nothing here imports napari
or Qt.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputError
from ._reader import read_mrc_layers

__all__ = ["RunFolder", "FscCurves", "pose_histogram"]


@dataclass
class FscCurves:
    """FSC curves over one set of shells, as ``fsc.csv`` holds them."""

    frequency: np.ndarray  # 1/A (1/px where the file says so)
    unit: str  # "A" or "px"
    curves: dict  # label -> (n,) array


def read_fsc_csv(path) -> FscCurves:
    """Read an ``fsc.csv`` (written by :func:`cryorecon.validate.curves.write_fsc_csv`)."""
    path = Path(path)
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    if len(rows) < 2 or len(rows[0]) < 4 or not rows[0][1].startswith("frequency_1/"):
        raise InputError(f"{path}: not an FSC table (shell, frequency, resolution, curves...): rewrite it with cryorecon fsc")
    header, body = rows[0], np.array(rows[1:], dtype=np.float64)
    curves = {label: body[:, 3 + i] for i, label in enumerate(header[3:])}
    return FscCurves(body[:, 1], header[1].split("/", 1)[1], curves)


def pose_histogram(rotations, bins: tuple[int, int] = (36, 18)):
    """Counts of viewing directions over azimuth and elevation, equal-area in elevation.

    The direction of image ``i`` is the map axis it projects along, ``A_i^T e_z``. The
    elevation bins are equal in ``sin(elevation)``, so that uniform directions on the
    sphere give equal expected counts in every bin.

    Parameters
    ----------
    rotations : (N, 3, 3) array
        RELION rotation matrices.
    bins : (n_azimuth, n_elevation)

    Returns
    -------
    counts : (n_elevation, n_azimuth) int array
        Row 0 is the south pole's band.
    azimuth_edges_deg, elevation_edges_deg : arrays
    """
    from ..report.plots import view_directions

    d = view_directions(np.asarray(rotations, dtype=np.float64))
    azimuth = np.degrees(np.arctan2(d[:, 1], d[:, 0]))
    sin_el = np.clip(d[:, 2], -1.0, 1.0)
    az_edges = np.linspace(-180.0, 180.0, bins[0] + 1)
    sin_edges = np.linspace(-1.0, 1.0, bins[1] + 1)
    counts, _, _ = np.histogram2d(sin_el, azimuth, bins=(sin_edges, az_edges))
    return counts.astype(np.int64), az_edges, np.degrees(np.arcsin(sin_edges))


def _role(name: str) -> str:
    n = name.lower()
    if "mask" in n:
        return "mask"
    if "half" in n:
        return "half"
    return "map"


@dataclass
class RunFolder:
    """What a run folder holds, found by name.

    Attributes
    ----------
    path : pathlib.Path
    maps : list of pathlib.Path
        Every ``.mrc``/``.map`` file, ``map.mrc`` first.
    fsc : pathlib.Path or None
    particles : pathlib.Path or None
        ``particles.star`` with the estimated poses.
    history : pathlib.Path or None
    """

    path: Path
    maps: list = field(default_factory=list)
    fsc: Path | None = None
    particles: Path | None = None
    history: Path | None = None

    @classmethod
    def open(cls, path) -> "RunFolder":
        """The run folder at ``path``.

        Raises
        ------
        InputError
            Not a folder, or a folder with no map in it.
        """
        path = Path(path)
        if not path.is_dir():
            raise InputError(f"{path}: not a run folder: give the folder a cryorecon run wrote")
        maps = sorted(p for p in path.iterdir() if p.suffix.lower() in (".mrc", ".map") and p.is_file())
        maps.sort(key=lambda p: (p.name != "map.mrc", p.name))
        if not maps:
            raise InputError(f"{path}: no map (.mrc) in this folder: is the run finished? (cryorecon run ... --out {path})")

        def found(name):
            p = path / name
            return p if p.is_file() else None

        return cls(path, maps, found("fsc.csv"), found("particles.star"), found("history.csv"))

    def layers(self) -> list:
        """Every map as an iso-surface layer at its scale; half-maps and masks start hidden."""
        out = []
        for p in self.maps:
            data, kwargs, kind = read_mrc_layers(p)[0]
            role = _role(p.stem)
            kwargs["metadata"]["role"] = role
            if role != "map" or (out and p.stem != "map"):
                kwargs["visible"] = False
            if role == "mask":
                kwargs.update(colormap="magenta", opacity=0.3, iso_threshold=0.5 * float(np.max(data)))
            out.append((data, kwargs, kind))
        return out

    def fsc_curves(self) -> FscCurves | None:
        """The FSC curves of ``fsc.csv``, or None where the run has none."""
        return read_fsc_csv(self.fsc) if self.fsc else None

    def rotations(self):
        """The particles' estimated rotations (N, 3, 3), or None without poses."""
        if self.particles is None:
            return None
        from ..io.star import read_particle_table
        from ..io.star_columns import ANGLE_COLUMNS
        from ..geometry.rotations import euler_to_matrix

        df = read_particle_table(self.particles).particles
        if not all(c in df.columns for c in ANGLE_COLUMNS):
            return None
        rot, tilt, psi = (df[c].to_numpy(np.float64) for c in ANGLE_COLUMNS)
        return euler_to_matrix(rot, tilt, psi)

    def pose_histogram(self, bins=(36, 18)):
        """:func:`pose_histogram` of the run's poses, or None without poses."""
        r = self.rotations()
        return None if r is None else pose_histogram(r, bins)
