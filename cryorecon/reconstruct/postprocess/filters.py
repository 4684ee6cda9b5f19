"""Spherically symmetric filters on a map's spectrum, and its shell-averaged amplitude.

Everything here lives on the centred Fourier grid of :mod:`cryorecon.forward.fourier`:
``fft3c`` of an ``L^3`` map, pixel frequencies ``|k|`` from the centre ``L//2`` and 1-pixel
shells ``round(|k|)`` (:func:`~cryorecon.forward.fourier.shell_index`), the same shells as
:func:`cryorecon.validate.fsc`. Shell ``s`` is the spatial frequency ``s / (L
pixel_size_A)`` in 1/A; shells beyond ``L//2`` are the corners past Nyquist.

Post-processing runs once per map, on the host, in float32 with float64 where a sum
or an exponent needs it.
"""
from __future__ import annotations

import numpy as np

from ...forward.fourier import fft3c, ifft3c, shell_index
from ...forward.masks import radial_distance
from ...scoring.likelihood import shell_sums

__all__ = [
    "raised_cosine_falloff", "RadialGrid", "shell_mean_amplitude", "fsc_weights",
    "bfactor_filter", "low_pass_filter", "apply_filter",
]


def raised_cosine_falloff(x, start, width):
    """1 up to ``start``, a raised cosine down to 0 over ``width``, 0 beyond.

    ``0.5 * (1 + cos(pi (x - start) / width))`` for ``start < x < start + width``: the edge
    of a soft mask (``x`` a distance in pixels) or of a low-pass filter (``x`` a frequency).
    ``width <= 0`` is the hard step ``x <= start``.

    Examples
    --------
    >>> raised_cosine_falloff(np.array([0.0, 2.0, 3.0, 4.0, 9.0]), 2.0, 2.0).tolist()
    [1.0, 1.0, 0.5, 0.0, 0.0]
    """
    x = np.asarray(x, dtype=np.float64)
    if width <= 0:
        return (x <= start).astype(np.float64)
    t = np.clip((x - start) / width, 0.0, 1.0)
    return 0.5 * (1.0 + np.cos(np.pi * t))


class RadialGrid:
    """``|k|`` (pixel frequencies) and shells of the centred ``L^3`` grid, computed once.

    Parameters
    ----------
    L : int
        Box size in pixels.
    pixel_size_A : float
        Pixel size in Angstrom.
    """

    def __init__(self, L: int, pixel_size_A: float):
        self.L = int(L)
        self.pixel_size_A = float(pixel_size_A)
        self.k_px = radial_distance(self.L, 3, dtype=np.float64)
        self.shells = shell_index(self.L, 3)
        self.n_shells = self.L // 2 + 1

    @property
    def box_A(self) -> float:
        """Box length ``L * pixel_size_A``: shell ``s`` is the resolution ``box_A / s``."""
        return self.L * self.pixel_size_A

    def per_voxel(self, per_shell):
        """Spread a ``(n_shells,)`` curve onto the grid; the corners past Nyquist get 0."""
        values = np.append(np.asarray(per_shell, dtype=np.float64), 0.0)
        return values[np.minimum(self.shells, self.n_shells)]


def shell_mean_amplitude(spectrum, grid: RadialGrid):
    """Mean ``|F|`` per shell ``0 .. L//2`` of a centred spectrum (0 where a shell is empty)."""
    total, count = shell_sums(np, grid.shells.ravel(), np.abs(spectrum).ravel(), grid.n_shells)
    return np.divide(total, count, out=np.zeros(grid.n_shells), where=count > 0)


def fsc_weights(fsc_curve):
    """Per-shell FSC weighting ``sqrt(2 FSC / (1 + FSC))`` (Rosenthal & Henderson 2003).

    The weight estimates the correlation of the combined map with the true one from the
    half-map FSC. As in RELION, every shell from the first one whose FSC is below 1e-4
    on gets 0: past that point the map is noise.

    Examples
    --------
    >>> fsc_weights([1.0, 0.5, 0.3, -0.1, 0.2]).round(4).tolist()
    [1.0, 0.8165, 0.6794, 0.0, 0.0]
    """
    f = np.asarray(fsc_curve, dtype=np.float64)
    w = np.sqrt(np.divide(2.0 * f, 1.0 + f, out=np.zeros_like(f), where=f > 0))
    gone = np.nonzero(f < 1e-4)[0]
    if gone.size:
        w[gone[0]:] = 0.0
    return w


def bfactor_filter(grid: RadialGrid, b_factor_A2: float):
    """``exp(-B s^2 / 4)`` per voxel, ``s = |k| / (L pixel_size_A)`` in 1/A.

    RELION's sign: a negative ``B`` (what ``rlnBfactorUsedForSharpening`` reports after a
    Guinier fit) amplifies high frequencies, i.e. sharpens; a positive one blurs.
    """
    s = grid.k_px / grid.box_A
    return np.exp(-0.25 * float(b_factor_A2) * s * s)


def low_pass_filter(grid: RadialGrid, resolution_A: float, edge_shells: float = 2.0):
    """1 below ``resolution_A``, a raised cosine ``edge_shells`` wide centred on it, then 0.

    RELION's default edge is 2 shells: from one shell below the filter's shell to one
    above. A hard cut would ring in real space.
    """
    k_cut = grid.box_A / float(resolution_A)
    return raised_cosine_falloff(grid.k_px, k_cut - edge_shells / 2.0, edge_shells)


def apply_filter(volume, per_voxel):
    """Multiply a real map's centred spectrum by a real ``(L, L, L)`` filter; float32 map back.

    A filter that depends on ``|k|`` only is symmetric under ``k -> -k``, so the product
    is the spectrum of a real map and taking the real part drops only rounding.
    """
    spectrum = fft3c(np.asarray(volume, dtype=np.float32)) * np.asarray(per_voxel, dtype=np.float32)
    return ifft3c(spectrum).real.astype(np.float32)
