"""Read the half-maps (and a mask) for post-processing, and check them against each other.

Every check that needs the files' headers lives here, so that each bad input is one
:class:`~cryorecon.errors.InputError` line naming the file and the fix, raised before
anything is written.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ...errors import InputError
from ...io.mrc import read_map
from .core import check_half_maps
from .mask import check_mask

__all__ = ["PostprocessInputs", "read_inputs"]


@dataclass(frozen=True)
class PostprocessInputs:
    """Two checked half-maps, an optional checked mask, the pixel size to use, and the file names."""

    half1: np.ndarray
    half2: np.ndarray
    mask: np.ndarray | None
    pixel_size_A: float
    names: tuple


def _same_size(a: float, b: float) -> bool:
    # Headers store the cell in float32: sizes from two files agree to ~1e-7.
    return math.isclose(a, b, rel_tol=1e-4)


def read_inputs(half1_path, half2_path, mask_path=None, pixel_size_A: float | None = None) -> PostprocessInputs:
    """Read and check the inputs of ``cryorecon postprocess``.

    Parameters
    ----------
    half1_path, half2_path : str or Path
        MRC half-maps: cubic, the same box, the same voxel size in their headers.
    mask_path : str or Path, optional
        MRC mask on the same grid, values in [0, 1]; a voxel size in its header must
        match the maps'.
    pixel_size_A : float, optional
        Overrides the headers (and then they are not compared with each other).

    Returns
    -------
    PostprocessInputs

    Raises
    ------
    InputError
        A file is missing or not MRC; maps of different boxes or voxel sizes; a mask of
        another box, voxel size or range; no pixel size anywhere.
    """
    names = (str(half1_path), str(half2_path), str(mask_path) if mask_path is not None else "mask")
    h1, px1 = read_map(half1_path)
    h2, px2 = read_map(half2_path)
    h1, h2 = check_half_maps(h1, h2, names[:2])
    if pixel_size_A is not None:
        px = float(pixel_size_A)
        if not (math.isfinite(px) and px > 0):
            raise InputError(f"--pixel-size {pixel_size_A}: give a positive pixel size in A")
    else:
        if px1 and px2 and not _same_size(px1, px2):
            raise InputError(f"{names[1]}: voxel size {px2:g} A differs from {names[0]}'s {px1:g} A: give half-maps "
                             "of one pixel size (or --pixel-size if a header is wrong)")
        px = px1 or px2
        if not px:
            raise InputError(f"{names[0]}: no voxel size in the header: pass --pixel-size")
    mask = None
    if mask_path is not None:
        raw, px_mask = read_map(mask_path)
        mask = check_mask(raw, h1.shape[0], names[2])
        if pixel_size_A is None and px_mask and not _same_size(px_mask, px):
            raise InputError(f"{names[2]}: voxel size {px_mask:g} A differs from the half-maps' {px:g} A: "
                             "make the mask on the maps' grid")
    return PostprocessInputs(h1, h2, mask, float(px), names)
