"""Moving a map: rotation (proper or improper) with a shift, and the exact mirror image.

Conventions follow RELION (see ``../shared/data/README.md``): ``V[z, y, x]``, centre at
index ``L // 2``, rotation matrices act on ``(x, y, z)`` column vectors, and a map is
projected as ``P[y, x] = sum_z V(A^T (x, y, z))``.

:func:`rotate_volume` with an orthogonal ``G`` (a rotation, or a rotation times the
mirror ``J = diag(1, 1, -1)``) and a shift ``s`` (pixels, ``(x, y, z)``) returns
``W(x) = V(G^T (x - s))``: the map carried by ``G`` and then moved by ``s``. Projecting
``W`` along ``A`` gives the projection of ``V`` along ``A @ G`` (shifted), so a map rotated
by ``R`` looks, along ``A``, like the original looks along ``A @ R``.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

MIRROR = np.diag([1.0, 1.0, -1.0])  # J: z -> -z about the centre, in (x, y, z)


def rotate_volume(vol, A, shift_px=None, order=3):
    """Resample ``vol`` carried by the orthogonal matrix ``A`` and moved by ``shift_px``.

    Returns ``W(x) = V(A^T (x - shift_px))`` with ``x`` in pixels from the centre
    ``L // 2``, ``(x, y, z)`` order. Projecting ``W`` along a pose ``B`` equals projecting
    ``vol`` along ``B @ A`` (see the module docstring). ``A`` may be improper (a
    rotation times :data:`MIRROR`) to produce a mirrored map.

    Parameters
    ----------
    vol : (Lz, Ly, Lx) array
        Map, ``V[z, y, x]``.
    A : (3, 3) array
        Orthogonal matrix acting on ``(x, y, z)``.
    shift_px : (3,) array, optional
        Translation ``(x, y, z)`` in pixels applied after the rotation.
    order : int
        Spline order for :func:`scipy.ndimage.map_coordinates` (1 or 3). Outside the box
        is zero.

    Returns
    -------
    (Lz, Ly, Lx) float32 array
    """
    vol = np.asarray(vol)
    A = np.asarray(A, dtype=np.float64)
    s = np.zeros(3) if shift_px is None else np.asarray(shift_px, dtype=np.float64)
    centre = np.array([n // 2 for n in vol.shape[::-1]], dtype=np.float64)  # (x, y, z)
    axes = [np.arange(n, dtype=np.float64) - c for n, c in zip(vol.shape[::-1], centre)]
    zz, yy, xx = np.meshgrid(axes[2], axes[1], axes[0], indexing="ij")
    pts = np.stack([xx.ravel() - s[0], yy.ravel() - s[1], zz.ravel() - s[2]])
    src = A.T @ pts + centre[:, None]
    # Real-space resampling wants splines (order 3) for a clean aligned map; the Fourier
    # alignment search itself interpolates with the projector's trilinear stencil.
    out = ndimage.map_coordinates(
        np.asarray(vol, dtype=np.float64), src[::-1], order=order, mode="constant", cval=0.0,
        prefilter=order > 1,
    )
    return out.reshape(vol.shape).astype(np.float32)


def mirror_volume(vol):
    """The mirror image ``V(J x)`` with ``J = diag(1, 1, -1)``: z reflected about ``L // 2``.

    Exact (no interpolation); for even L the plane ``z = 0`` has no partner and is zero.
    """
    vol = np.asarray(vol)
    L = vol.shape[0]
    c = L // 2
    src = 2 * c - np.arange(L)
    out = np.zeros_like(vol)
    ok = (src >= 0) & (src < L)
    out[ok] = vol[src[ok]]
    return out


__all__ = ["MIRROR", "rotate_volume", "mirror_volume"]
