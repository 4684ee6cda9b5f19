"""The solvent mask of post-processing: made from the combined map, or given and checked.

The automatic mask follows ``relion_mask_create``: low-pass the map, binarise it at a
density threshold, extend the binary mask by a few pixels, and add a raised-cosine soft
edge. A soft edge matters: a sharp one puts the mask's own high frequencies into both
half-maps alike and inflates their FSC (the phase-randomisation test measures what is
left of that).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ...errors import InputError
from .filters import RadialGrid, apply_filter, low_pass_filter, raised_cosine_falloff

__all__ = ["AutoMaskSettings", "auto_mask", "check_mask"]


@dataclass(frozen=True)
class AutoMaskSettings:
    """How to make a soft mask from the combined map (as ``relion_mask_create``).

    Attributes
    ----------
    threshold : float or None
        Density at which the low-passed map is binarised, in the map's units (RELION's
        ``--ini_threshold``). None: ``threshold_fraction`` of the low-passed map's maximum.
    threshold_fraction : float
        Used when ``threshold`` is None (cryoSPARC's dynamic-mask default is 0.2).
    lowpass_A : float
        Low-pass the map to this resolution first, so that noise does not speckle the
        mask (RELION's GUI default 15 A); 0 to skip.
    extend_px : float
        Grow the binary mask by this many pixels (RELION's default 3).
    soft_edge_px : float
        Width of the raised-cosine edge outside the grown mask (RELION's default 6).
    """

    threshold: float | None = None
    threshold_fraction: float = 0.2
    lowpass_A: float = 15.0
    extend_px: float = 3.0
    soft_edge_px: float = 6.0

    def check(self) -> None:
        """InputError naming the setting unless every value makes sense."""
        if self.threshold is not None and not np.isfinite(self.threshold):
            raise InputError(f"auto-mask threshold {self.threshold}: give a finite density")
        if self.threshold is None and not 0 < self.threshold_fraction < 1:
            raise InputError(f"auto-mask threshold fraction {self.threshold_fraction:g}: give a value in (0, 1)")
        for name in ("lowpass_A", "extend_px", "soft_edge_px"):
            value = getattr(self, name)
            if not (np.isfinite(value) and value >= 0):
                raise InputError(f"auto-mask {name} {value:g}: give a number >= 0")


def auto_mask(combined_map, pixel_size_A: float, settings: AutoMaskSettings = AutoMaskSettings()):
    """Soft mask of the density in ``combined_map``: threshold, extend, soft edge.

    Parameters
    ----------
    combined_map : (L, L, L) array
        The average of the two half-maps.
    pixel_size_A : float
        Pixel size in Angstrom.
    settings : AutoMaskSettings

    Returns
    -------
    (L, L, L) float32 array with values in [0, 1]
        1 within ``extend_px`` of a voxel above the threshold, falling to 0 over
        ``soft_edge_px`` further out.

    Raises
    ------
    InputError
        No voxel reaches the threshold (nothing to mask), or a setting is out of range.

    Examples
    --------
    >>> from cryorecon.forward.masks import soft_sphere
    >>> m = auto_mask(soft_sphere(32, 5.0, 0.0), 2.0, AutoMaskSettings(threshold=0.5, lowpass_A=0))
    >>> float(m[16, 16, 16]), float(m[16, 16, 16 + 5 + 3]), float(m[16, 16, 16 + 5 + 3 + 6])
    (1.0, 1.0, 0.0)
    """
    settings.check()
    volume = np.asarray(combined_map, dtype=np.float32)
    grid = RadialGrid(volume.shape[0], pixel_size_A)
    # A filter past Nyquist would do nothing; 2 px is Nyquist.
    if settings.lowpass_A > 2 * pixel_size_A:
        volume = apply_filter(volume, low_pass_filter(grid, settings.lowpass_A))
    if settings.threshold is not None:
        threshold = float(settings.threshold)
    elif volume.max() > 0:
        threshold = settings.threshold_fraction * float(volume.max())
    else:
        raise InputError("auto-mask: the combined map has no positive density (is its contrast inverted?): "
                         "give a threshold or --mask")
    inside = volume >= threshold
    if not inside.any():
        raise InputError(
            f"auto-mask: no voxel of the {'low-passed ' if settings.lowpass_A else ''}combined map reaches "
            f"the threshold {threshold:.4g} (map max {float(volume.max()):.4g}): lower the threshold or give --mask"
        )
    # Distance (px) of every voxel to the nearest one above the threshold, 0 inside.
    distance = ndimage.distance_transform_edt(~inside)
    return raised_cosine_falloff(distance, settings.extend_px, settings.soft_edge_px).astype(np.float32)


def check_mask(mask, box: int, name: str = "mask"):
    """The mask as float32, or an InputError unless it is an ``box^3`` volume in [0, 1].

    Values within 1e-6 of the range are accepted (float rounding in files), as RELION
    does; they are clipped into it.
    """
    m = np.asarray(mask, dtype=np.float32)
    if m.shape != (box,) * 3:
        raise InputError(
            f"{name}: mask box {m.shape} differs from the half-maps' {(box,) * 3}: make the mask on the maps' grid"
        )
    lo, hi = float(m.min()), float(m.max())
    if not (np.isfinite(lo) and np.isfinite(hi)) or lo < -1e-6 or hi > 1 + 1e-6:
        raise InputError(
            f"{name}: mask values run from {lo:.4g} to {hi:.4g}, outside [0, 1] (1 = protein, 0 = solvent): "
            "rescale the mask"
        )
    if not hi > 0:
        raise InputError(f"{name}: mask is 0 everywhere: give a mask that covers the particle")
    return np.clip(m, 0.0, 1.0)
