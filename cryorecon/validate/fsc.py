"""Fourier shell correlation between two maps, and the resolution where it crosses a threshold.

Shells are 1 pixel wide: shell ``s`` holds the frequencies with ``round(|k| L) = s``, the
spatial frequency ``s / (L pixel_size_A)`` in 1/A. Host numpy, float64.
"""
from __future__ import annotations

import numpy as np

from ..errors import InputError


def cubic_pair(map_a, map_b, what="maps"):
    """Both maps as float64, or an InputError unless they are cubic 3D boxes of one size."""
    a = np.asarray(map_a, dtype=np.float64)
    b = np.asarray(map_b, dtype=np.float64)
    if a.ndim != 3 or len(set(a.shape)) != 1 or a.shape != b.shape:
        raise InputError(f"{what}: need two cubic volumes of the same box, got {a.shape} and {b.shape}")
    return a, b


def _rfft_shells(L):
    """Shell index ``round(|k| L)`` and Hermitian multiplicity on the rfftn grid of an L^3 box."""
    kz = np.fft.fftfreq(L)[:, None, None]
    ky = np.fft.fftfreq(L)[None, :, None]
    kx = np.fft.rfftfreq(L)[None, None, :]
    shells = np.rint(np.sqrt(kx**2 + ky**2 + kz**2) * L).astype(np.int64)
    # The rfft half grid holds each +-k pair once, except the kx = 0 (and even-L Nyquist)
    # planes, which hold both members; weighting makes shell sums equal full-grid sums.
    weight = np.full(kx.shape, 2.0)
    weight[..., 0] = 1.0
    if L % 2 == 0:
        weight[..., -1] = 1.0
    return shells, np.broadcast_to(weight, shells.shape)


def fsc(map_a, map_b, mask=None):
    """Fourier shell correlation between two maps, in 1-pixel shells up to Nyquist.

    Parameters
    ----------
    map_a, map_b : (L, L, L) array
        The two maps (e.g. half maps), same box.
    mask : (L, L, L) array, optional
        Real-space mask multiplied into both maps first (e.g.
        :func:`cryorecon.forward.masks.soft_sphere`).

    Returns
    -------
    shell_index_px : (L//2 + 1,) int array
        Shell ``s`` holds frequencies with ``round(|k| L) = s``; ``s / (L pixel_size_A)`` is
        the spatial frequency in 1/A.
    fsc : (L//2 + 1,) float array
        ``Re sum F_a conj(F_b) / sqrt(sum |F_a|^2 sum |F_b|^2)`` per shell; 0 where a map
        has no power in the shell.

    Examples
    --------
    >>> v = np.random.default_rng(0).normal(size=(16, 16, 16))
    >>> shells, curve = fsc(v, v)
    >>> bool(np.allclose(curve, 1.0))
    True
    """
    a, b = cubic_pair(map_a, map_b, "fsc")
    if mask is not None:
        mask = np.asarray(mask, dtype=np.float64)
        a, b = a * mask, b * mask
    L = a.shape[0]
    Fa, Fb = np.fft.rfftn(a), np.fft.rfftn(b)
    shells, weight = _rfft_shells(L)
    n = L // 2 + 1
    keep = shells < n
    s, w = shells[keep], weight[keep]
    num = np.bincount(s, weights=w * (Fa[keep] * np.conj(Fb[keep])).real, minlength=n)
    pa = np.bincount(s, weights=w * np.abs(Fa[keep]) ** 2, minlength=n)
    pb = np.bincount(s, weights=w * np.abs(Fb[keep]) ** 2, minlength=n)
    denom = np.sqrt(pa * pb)
    curve = np.divide(num, denom, out=np.zeros(n), where=denom > 0)
    return np.arange(n), curve


def fsc_resolution_A(fsc_values, box, pixel_size_A, threshold=0.143):
    """Resolution (A) where the FSC first drops below ``threshold``, interpolated linearly.

    Shell ``s`` is the resolution ``box * pixel_size_A / s``. The crossing is found from
    shell 1 on (shell 0 is the mean). A curve that never drops below the threshold gives
    the resolution of its last shell (Nyquist); one that starts below gives ``inf``.

    Parameters
    ----------
    fsc_values : (n,) array
        FSC per 1-pixel shell, shell 0 first (as returned by :func:`fsc`).
    box : int
        Box size L in pixels.
    pixel_size_A : float
        Pixel size in Angstrom.
    threshold : float
        0.143 for half maps (Rosenthal & Henderson 2003), 0.5 against a reference.

    Examples
    --------
    >>> fsc_resolution_A([1.0, 0.9, 0.7, 0.3, 0.1, 0.0], 100, 1.0, 0.5)
    40.0
    """
    c = np.asarray(fsc_values, dtype=np.float64)
    below = np.nonzero(c[1:] < threshold)[0]
    if below.size == 0:
        return float(box * pixel_size_A / (len(c) - 1))
    i = below[0] + 1
    if i == 1 and c[0] < threshold:
        return float("inf")
    shell = (i - 1) + (c[i - 1] - threshold) / (c[i - 1] - c[i])
    return float(box * pixel_size_A / shell) if shell > 0 else float("inf")


def fsc_resolutions_A(fsc_values, box, pixel_size_A, thresholds=(0.143, 0.5)):
    """``{threshold: resolution_A}`` for each threshold (by default 0.143 and 0.5)."""
    return {t: fsc_resolution_A(fsc_values, box, pixel_size_A, t) for t in thresholds}


__all__ = ["fsc", "fsc_resolution_A", "fsc_resolutions_A", "cubic_pair"]
