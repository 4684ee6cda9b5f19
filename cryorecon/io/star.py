"""RELION STAR files in and out, through ``starfile``, with the 3.0 / 3.1 / 5 differences ironed out.

RELION 3.0 keeps everything per particle: voltage, Cs and amplitude contrast on every
row, the pixel size (if at all) as ``rlnDetectorPixelSize`` (micrometre) over
``rlnMagnification``, and origins in pixels (``rlnOriginX/Y``). RELION 3.1 and later
move the optics into a ``data_optics`` table joined by ``rlnOpticsGroup``, give the
pixel size as ``rlnImagePixelSize`` and the origins in Angstrom
(``rlnOriginXAngst/YAngst``). Mixing these up is the classic source of wrong shifts
(ASPIRE issues 735 and 1329).

:func:`read_particle_table` turns any of them into one per-particle DataFrame that
carries the optics per particle, the pixel size as ``rlnImagePixelSize`` and the
origins both in Angstrom and in pixels (where the pixel size is known).
:func:`write_particle_star` writes RELION 3.1 style, which RELION 3.1, 4 and 5 all
import.
"""
from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import starfile

from ..errors import InputError
from .atomic import atomic_write
from . import star_columns
# The STAR vocabulary is re-exported: ``from cryorecon.io.star import CTF_COLUMNS``.
from .star_columns import (
    ANGLE_COLUMNS,
    CTF_COLUMNS,
    CTF_REQUIRED_COLUMNS,
    OPTICS_COLUMNS,
    ctf_columns_from_params,
    ctf_params_from_table,
    has_ctf_columns,
)

__all__ = [
    "ParticleTable",
    "read_star",
    "read_particle_table",
    "write_particle_star",
    *star_columns.__all__,
]

_VERSION_RE = re.compile(r"^\s*#\s*version\s+(\d+)", re.IGNORECASE)


@dataclass
class ParticleTable:
    """A particle STAR file normalised to one row per particle.

    Attributes
    ----------
    particles : pandas.DataFrame
        Every column of the particle table, plus the optics columns of each particle's
        optics group, plus (where they can be derived) ``rlnImagePixelSize``,
        ``rlnOriginXAngst/YAngst`` and ``rlnOriginX/Y`` (pixels). The row order is the
        file's.
    optics_columns : list of str
        Columns that belong in ``data_optics`` when written back.
    version : str
        ``"3.0"`` (no optics table), ``"3.1"`` (optics table; also RELION 4) or ``"5"``
        (optics table and a ``# version 5xxxx`` comment).
    origin_units : str
        Where the origins came from: ``"angstrom"``, ``"pixel"`` or ``"none"``.
    path : pathlib.Path or None
        The STAR file read; image names are relative to its folder.
    """

    particles: pd.DataFrame
    optics_columns: list = field(default_factory=list)
    version: str = "3.1"
    origin_units: str = "none"
    path: Path | None = None

    def __len__(self) -> int:
        return len(self.particles)

    def with_pixel_size(self, pixel_size_A: float) -> "ParticleTable":
        """A copy with every pixel size set to ``pixel_size_A`` and the origins re-derived.

        Origins the file gave in Angstrom keep their physical value (the pixel ones are
        recomputed); origins given only in pixels are converted with the new size.
        """
        if not (np.isfinite(pixel_size_A) and pixel_size_A > 0):
            raise InputError(f"--pixel-size must be > 0 A, got {pixel_size_A}")
        df = self.particles.copy()
        if self.origin_units == "pixel":
            df = df.drop(columns=["rlnOriginXAngst", "rlnOriginYAngst"], errors="ignore")
        df["rlnImagePixelSize"] = float(pixel_size_A)
        df, units = _derive_origins(self.path, df)
        columns = list(self.optics_columns)
        if "rlnImagePixelSize" not in columns:
            columns.append("rlnImagePixelSize")
        return ParticleTable(df, columns, self.version, units, self.path)


def _version_comment(path: Path) -> int | None:
    """The number in RELION's ``# version NNNNN`` comment, if the file has one."""
    with open(path, encoding="utf-8", errors="replace") as handle:
        for _, line in zip(range(200), handle):
            match = _VERSION_RE.match(line)
            if match:
                return int(match.group(1))
    return None


def read_star(path) -> dict:
    """Read every data block of a STAR file.

    Parameters
    ----------
    path : str or os.PathLike
        STAR file.

    Returns
    -------
    dict of str to pandas.DataFrame
        Block name (without ``data_``) to table; a block of single values becomes a
        one-row table.

    Raises
    ------
    InputError
        The file is missing, cannot be parsed, holds no data block, or has a loop row
        with missing values.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: STAR file not found: check the path")
    try:
        raw = starfile.read(path, always_dict=True)
    except Exception as err:  # starfile raises many types for malformed text
        raise InputError(f"{path}: cannot parse STAR file ({err}): fix or re-export it") from None
    if not raw:
        raise InputError(f"{path}: no data_ block found: is this a STAR file?")
    blocks = {}
    for name, block in raw.items():
        if isinstance(block, dict):
            block = pd.DataFrame({key: [value] for key, value in block.items()})
        if not isinstance(block, pd.DataFrame):
            raise InputError(f"{path}: data_{name} is not a table: fix or re-export the file")
        missing = block.isna().any(axis=1).to_numpy()
        if missing.any():
            row = int(np.flatnonzero(missing)[0])
            raise InputError(
                f"{path}: data_{name} row {row + 1} has missing values (a short or broken "
                "line): fix or re-export the file"
            )
        blocks[name] = block
    return blocks


def _pick_particles(path: Path, blocks: dict) -> pd.DataFrame:
    if "particles" in blocks:
        return blocks["particles"]
    tables = [b for name, b in blocks.items() if name != "optics"]
    with_images = [b for b in tables if "rlnImageName" in b.columns]
    if len(with_images) == 1:
        return with_images[0]
    if len(tables) == 1:
        return tables[0]
    raise InputError(
        f"{path}: cannot tell which data block holds the particles: name it data_particles"
    )


def _merge_optics(path: Path, particles: pd.DataFrame, optics: pd.DataFrame) -> pd.DataFrame:
    if "rlnOpticsGroup" not in optics.columns:
        raise InputError(f"{path}: data_optics has no rlnOpticsGroup column: fix the STAR file")
    if "rlnOpticsGroup" not in particles.columns:
        if len(optics) != 1:
            raise InputError(
                f"{path}: particles have no rlnOpticsGroup but data_optics has {len(optics)} "
                "groups: add rlnOpticsGroup to data_particles"
            )
        particles = particles.assign(rlnOpticsGroup=optics["rlnOpticsGroup"].iloc[0])
    if optics["rlnOpticsGroup"].duplicated().any():
        raise InputError(f"{path}: data_optics lists an optics group twice: fix the STAR file")
    unknown = sorted(set(particles["rlnOpticsGroup"]) - set(optics["rlnOpticsGroup"]))
    if unknown:
        raise InputError(
            f"{path}: particles use optics group {unknown[0]} which data_optics lacks: "
            "fix the STAR file"
        )
    # Per-particle values win over the group's: RELION 3.1 files from some tools (ASPIRE)
    # repeat the optics per particle, and those are the more specific.
    extra = [c for c in optics.columns if c not in particles.columns or c == "rlnOpticsGroup"]
    merged = particles.merge(optics[extra], on="rlnOpticsGroup", how="left", sort=False)
    merged.index = particles.index
    return merged


def _synthesise_groups(particles: pd.DataFrame) -> pd.DataFrame:
    """Give a RELION 3.0 table optics groups: one per distinct set of optics values."""
    key = [c for c in OPTICS_COLUMNS if c in particles.columns]
    if not key:
        return particles.assign(rlnOpticsGroup=1)
    group = particles.groupby(key, sort=False, dropna=False).ngroup().to_numpy() + 1
    return particles.assign(rlnOpticsGroup=group)


def _check_pixel_sizes(path: Path, df: pd.DataFrame) -> None:
    values = df["rlnImagePixelSize"].to_numpy(dtype=np.float64)
    bad = ~(np.isfinite(values) & (values > 0))
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        group = df["rlnOpticsGroup"].iloc[row] if "rlnOpticsGroup" in df.columns else "-"
        raise InputError(
            f"{path}: pixel size is {values[row]} A (optics group {group}) but must be > 0: "
            "fix rlnImagePixelSize in the STAR file or pass --pixel-size"
        )


def read_particle_table(path, pixel_size_A: float | None = None) -> ParticleTable:
    """Read a RELION 3.0, 3.1 or 5 particle STAR file into a :class:`ParticleTable`.

    Parameters
    ----------
    path : str or os.PathLike
        Particle STAR file.
    pixel_size_A : float, optional
        Overrides every pixel size in the file (the CLI's ``--pixel-size``). Origins given
        in Angstrom keep their physical value; origins given in pixels are converted with
        this pixel size.

    Returns
    -------
    ParticleTable

    Raises
    ------
    InputError
        Unreadable file, optics groups that do not match, or a pixel size that is zero,
        negative or not a number.

    Notes
    -----
    RELION 3.0 pixel size is ``rlnDetectorPixelSize`` (micrometre) * 1e4 /
    ``rlnMagnification``. Where a file has both Angstrom and pixel origins, the Angstrom
    ones win (RELION 3.1 ignores the pixel ones) and the pixel ones are recomputed.
    """
    path = Path(path)
    blocks = read_star(path)
    particles = _pick_particles(path, blocks).copy()
    optics = blocks.get("optics")
    if optics is not None:
        comment = _version_comment(path)
        version = "5" if comment is not None and comment >= 50000 else "3.1"
        optics_columns = [c for c in optics.columns if c != "rlnOpticsGroup"]
        df = _merge_optics(path, particles, optics)
    else:
        version = "3.0"
        df = _synthesise_groups(particles)
        optics_columns = [c for c in OPTICS_COLUMNS if c in df.columns]
        if {"rlnDetectorPixelSize", "rlnMagnification"} <= set(df.columns) and (
            "rlnImagePixelSize" not in df.columns
        ):
            with np.errstate(divide="ignore", invalid="ignore"):
                df["rlnImagePixelSize"] = (
                    df["rlnDetectorPixelSize"].astype(np.float64)
                    * 1e4
                    / df["rlnMagnification"].astype(np.float64)
                )
            # Derived per particle from per-particle columns, so regroup with it.
            df = _synthesise_groups(df.drop(columns="rlnOpticsGroup"))
            optics_columns.append("rlnImagePixelSize")
    for extra in OPTICS_COLUMNS:
        if extra in df.columns and extra not in optics_columns:
            optics_columns.append(extra)

    if pixel_size_A is not None:
        return ParticleTable(df, optics_columns, version, "none", path).with_pixel_size(pixel_size_A)
    if "rlnImagePixelSize" in df.columns:
        _check_pixel_sizes(path, df)
    df, origin_units = _derive_origins(path, df)
    return ParticleTable(df, optics_columns, version, origin_units, path)


def _derive_origins(path, df: pd.DataFrame):
    """Add whichever of the Angstrom / pixel origins is missing; Angstrom wins if both."""
    has_angst = {"rlnOriginXAngst", "rlnOriginYAngst"} <= set(df.columns)
    has_pixel = {"rlnOriginX", "rlnOriginY"} <= set(df.columns)
    origin_units = "angstrom" if has_angst else ("pixel" if has_pixel else "none")
    if "rlnImagePixelSize" in df.columns:
        px = df["rlnImagePixelSize"].to_numpy(dtype=np.float64)
        for axis in ("X", "Y"):
            if has_angst:
                df[f"rlnOrigin{axis}"] = df[f"rlnOrigin{axis}Angst"].to_numpy(np.float64) / px
            elif has_pixel:
                df[f"rlnOrigin{axis}Angst"] = df[f"rlnOrigin{axis}"].to_numpy(np.float64) * px
    elif has_pixel and not has_angst:
        warnings.warn(
            f"{path}: origins are in pixels and no pixel size is known; "
            "Angstrom origins need --pixel-size"
        )
    return df.reset_index(drop=True), origin_units


def _split_optics(df: pd.DataFrame, optics_columns):
    """Split a per-particle table into (optics, particles) tables, RELION 3.1 style."""
    cols = [c for c in optics_columns if c in df.columns and c != "rlnOpticsGroup"]
    if "rlnOpticsGroup" in df.columns and cols:
        consistent = (df.groupby("rlnOpticsGroup", sort=False)[cols].nunique(dropna=False) <= 1)
        if not consistent.to_numpy().all():
            # A group whose particles disagree on voltage, pixel size ... cannot be one
            # RELION optics group, so give each distinct combination its own group.
            warnings.warn("optics values differ within an optics group; regrouping particles")
            df = df.drop(columns="rlnOpticsGroup")
    if "rlnOpticsGroup" not in df.columns:
        group = df.groupby(cols, sort=False, dropna=False).ngroup() + 1 if cols else 1
        df = df.assign(rlnOpticsGroup=group)
        if "rlnOpticsGroupName" in df.columns:
            df["rlnOpticsGroupName"] = [f"opticsGroup{g}" for g in df["rlnOpticsGroup"]]
    optics = df[["rlnOpticsGroup"] + cols].drop_duplicates("rlnOpticsGroup").reset_index(drop=True)
    if "rlnOpticsGroupName" not in optics.columns:
        optics.insert(1, "rlnOpticsGroupName", [f"opticsGroup{g}" for g in optics["rlnOpticsGroup"]])
    particles = df.drop(columns=cols)
    return optics, particles


def write_particle_star(path, table, pixel_size_A: float | None = None, image_size: int | None = None):
    """Write particles as a RELION 3.1 STAR file (``data_optics`` + ``data_particles``), atomically.

    Parameters
    ----------
    path : str or os.PathLike
        Destination STAR file.
    table : ParticleTable or pandas.DataFrame
        Normalised per-particle table (as from :func:`read_particle_table`). Angles
        ``rlnAngleRot/Tilt/Psi`` are written in degrees, origins as
        ``rlnOriginXAngst/YAngst``; pixel origins ``rlnOriginX/Y`` are converted and
        dropped. Every other column is kept: optics ones in ``data_optics``, the rest in
        ``data_particles``. ``rlnImageName`` is written as given (relative to ``path``'s
        folder is the caller's job).
    pixel_size_A : float, optional
        Fills ``rlnImagePixelSize`` when the table has none (RELION 3.1 requires it).
    image_size : int, optional
        Fills ``rlnImageSize`` when the table has none.

    Raises
    ------
    InputError
        No pixel size known anywhere.
    """
    if isinstance(table, ParticleTable):
        df, optics_columns = table.particles.copy(), list(table.optics_columns)
    else:
        df, optics_columns = pd.DataFrame(table).copy(), []
    for extra in OPTICS_COLUMNS:
        if extra in df.columns and extra not in optics_columns:
            optics_columns.append(extra)
    if "rlnImagePixelSize" not in df.columns:
        if pixel_size_A is None:
            raise InputError(f"{path}: no pixel size to write (RELION 3.1 needs one): pass --pixel-size")
        df["rlnImagePixelSize"] = float(pixel_size_A)
    if "rlnImageSize" not in df.columns and image_size is not None:
        df["rlnImageSize"] = int(image_size)
    if "rlnImageDimensionality" not in df.columns:
        df["rlnImageDimensionality"] = 2
    for name in ("rlnImagePixelSize", "rlnImageSize", "rlnImageDimensionality"):
        if name in df.columns and name not in optics_columns:
            optics_columns.append(name)

    px = df["rlnImagePixelSize"].to_numpy(np.float64)
    for axis in ("X", "Y"):
        angst, pixel = f"rlnOrigin{axis}Angst", f"rlnOrigin{axis}"
        if angst not in df.columns and pixel in df.columns:
            df[angst] = df[pixel].to_numpy(np.float64) * px
        if pixel in df.columns:
            df = df.drop(columns=pixel)

    optics, particles = _split_optics(df, optics_columns)
    with atomic_write(path) as tmp:
        # No float format: pandas then writes the shortest repr that round-trips float64,
        # so nothing is lost (starfile's default %.6f would cut small values).
        starfile.write({"optics": optics, "particles": particles}, tmp, float_format=None)
