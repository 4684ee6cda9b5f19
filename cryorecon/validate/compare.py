"""Comparing a map with a reference: the one function behind every face that does it.

:func:`compare_maps` puts the reference on the map's grid, aligns rotation, hand and
shift (optionally), computes the FSC and its resolutions and, given estimated and true
poses, the pose error after the alignment. The pipeline's ``compare`` stage and the
``cryorecon fsc`` and ``cryorecon align`` commands all call it and only read and write
files around it.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from ..errors import InputError
from .align import align_maps
from .curves import plot_fsc, write_fsc_csv
from .fsc import fsc, fsc_resolutions_A
from .pose_error import PoseError

log = logging.getLogger("cryorecon.validate")

#: Resolution thresholds reported: 0.143 (half maps), 0.5 (against a reference).
THRESHOLDS = (0.143, 0.5)


def _check_cubic(vol, label):
    if vol.ndim != 3 or len(set(vol.shape)) != 1:
        raise InputError(f"{label}: need a cubic 3D map, got shape {vol.shape}")


def on_map_grid(reference, box, pixel_size_A=None, reference_pixel_size_A=None, *, label="reference"):
    """The reference on the map's ``box^3`` grid: as it is, or Fourier-cropped to it.

    A larger reference covering the same extent in Angstrom (``box_ref *
    reference_pixel_size_A == box * pixel_size_A`` within half a pixel) is cropped in
    Fourier space to the map's box, which keeps its values at the map's pixel size.

    Parameters
    ----------
    reference : (n, n, n) array
    box : int
        The map's box in pixels.
    pixel_size_A : float, optional
        The map's pixel size; needed only when the boxes differ.
    reference_pixel_size_A : float, optional
        The reference's pixel size (default: the map's).
    label : str
        Names the reference (its file) in error messages.

    Returns
    -------
    (box, box, box) array
    """
    from ..forward.fourier import fourier_crop

    ref = np.asarray(reference)
    _check_cubic(ref, label)
    n = ref.shape[0]
    if n == box:
        return ref
    if not pixel_size_A:
        raise InputError(f"{label}: box {n} px differs from the map's {box} px and no pixel size relates them: "
                         "give the pixel size (--pixel-size) or a reference in the same box")
    ref_px = reference_pixel_size_A or pixel_size_A
    if abs(n * ref_px / pixel_size_A - box) > 0.5 or n < box:
        raise InputError(f"{label}: {n} px at {ref_px:g} A/px does not match the map "
                         f"({box} px at {pixel_size_A:g} A/px): give a reference of the same size in A")
    return fourier_crop(ref, box, ndim=3).astype(np.float32)


@dataclass
class Comparison:
    """What :func:`compare_maps` found.

    Attributes
    ----------
    aligned_map : (L, L, L) array
        The map moved onto the reference (the map itself when not aligned).
    reference : (L, L, L) array
        The reference on the map's grid.
    pixel_size_A : float or None
    shell_index_px, fsc : (L//2 + 1,) arrays
        The FSC of ``aligned_map`` with ``reference``, per 1-pixel shell.
    resolution_A : dict
        ``{threshold: resolution_A}`` for :data:`THRESHOLDS`; empty without a pixel size.
    alignment : dict or None
        The ``info`` of :func:`~cryorecon.validate.align.align_maps` (None when not aligned).
    pose_error : PoseError or None
        Given estimated and true poses of the same particles.
    """

    aligned_map: np.ndarray
    reference: np.ndarray
    pixel_size_A: float | None
    shell_index_px: np.ndarray
    fsc: np.ndarray
    resolution_A: dict
    alignment: dict | None = None
    pose_error: PoseError | None = None

    @property
    def box(self) -> int:
        return int(self.aligned_map.shape[0])

    def summary(self) -> dict:
        """JSON-ready numbers: ``fsc_0.143_A``, ``fsc_0.5_A``, hand, correlation, pose error."""
        out = {f"fsc_{t:g}_A": float(r) for t, r in self.resolution_A.items()}
        if self.alignment is not None:
            out.update(mirrored=bool(self.alignment["mirrored"]), correlation=float(self.alignment["correlation"]))
        if self.pose_error is not None:
            out.update(self.pose_error.as_dict())
        return out

    def write_fsc(self, csv_path=None, png_path=None, *, label="fsc", column=None, title=None):
        """Write the curve to ``fsc.csv`` (column ``column``, default ``label``) and/or ``fsc.png``."""
        px = self.pixel_size_A or None
        if csv_path is not None:
            write_fsc_csv(csv_path, self.shell_index_px, {column or label: self.fsc}, box=self.box, pixel_size_A=px)
        if png_path is not None:
            plot_fsc(png_path, {label: (self.shell_index_px, self.fsc)}, box=self.box, pixel_size_A=px, title=title)


def _pose_error(est_rotations, true_rotations, alignment):
    if alignment is None or est_rotations is None or true_rotations is None:
        return None
    if len(est_rotations) != len(true_rotations):
        log.warning("pose error skipped: %d estimated poses but %d true ones", len(est_rotations), len(true_rotations))
        return None
    return PoseError.from_poses(est_rotations, true_rotations, alignment)


def compare_maps(volume, reference, pixel_size_A=None, *, reference_pixel_size_A=None, mask=None, align=True,
                 try_mirror=True, est_rotations=None, true_rotations=None, reference_label="reference") -> Comparison:
    """Compare a map with a reference: regrid, align (rotation, hand, shift), FSC, pose error.

    Parameters
    ----------
    volume : (L, L, L) array
        The map to judge (e.g. an ab initio result).
    reference : (n, n, n) array
        The reference; a larger box covering the same extent is Fourier-cropped to the
        map's grid (:func:`on_map_grid`).
    pixel_size_A : float, optional
        The map's pixel size. Without it there are no resolutions in A.
    reference_pixel_size_A : float, optional
        The reference's pixel size (default: the map's).
    mask : (L, L, L) array, optional
        Real-space mask for the FSC (e.g. :func:`cryorecon.forward.masks.soft_sphere`);
        the alignment uses its own default mask.
    align : bool
        Align the map onto the reference first (default). False compares them as they
        are (half maps).
    try_mirror : bool
        Let the alignment flip the hand.
    est_rotations, true_rotations : (N, 3, 3) arrays, optional
        Estimated poses of the map's particles and their true poses in the reference's
        frame; with both (and ``align``), the pose error after the alignment.
    reference_label : str
        Names the reference in error messages (e.g. its file).

    Returns
    -------
    Comparison

    Examples
    --------
    >>> from cryorecon.simulation.phantom import chiral_phantom
    >>> v = chiral_phantom(16, rng=0)
    >>> c = compare_maps(v, v, 4.0, align=False)
    >>> c.summary()["fsc_0.143_A"]
    8.0
    """
    vol = np.asarray(volume)
    _check_cubic(vol, "map")
    L = vol.shape[0]
    ref = on_map_grid(reference, L, pixel_size_A, reference_pixel_size_A, label=reference_label)
    alignment = None
    aligned = vol
    if align:
        aligned, alignment = align_maps(vol, ref, pixel_size_A=pixel_size_A or None, try_mirror=try_mirror)
    shells, curve = fsc(aligned, ref, mask)
    resolution = fsc_resolutions_A(curve, L, pixel_size_A, THRESHOLDS) if pixel_size_A else {}
    return Comparison(aligned, ref, pixel_size_A or None, shells, curve, resolution, alignment,
                      _pose_error(est_rotations, true_rotations, alignment))


__all__ = ["compare_maps", "Comparison", "on_map_grid", "THRESHOLDS"]
