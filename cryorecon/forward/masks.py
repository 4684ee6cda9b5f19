"""Real-space masks of the centred box: the one home for every sphere, circle and disc.

All masks share the convention of :mod:`cryorecon.forward.fourier`: the centre is the
pixel (voxel) ``L//2`` along every axis, and distances are in pixels. Distances are
computed in float64 from integer offsets, so a hard mask compares exact values and two
callers that ask for the same mask get the same pixels bit for bit.

Every function works on numpy or cupy: pass ``xp``.
"""
from __future__ import annotations

import numpy as np

__all__ = ["radial_distance", "soft_sphere", "disc"]


def _distance64(L, ndim, xp):
    """float64 ``|r|`` of every point of the ``(L,)*ndim`` grid from its centre."""
    c = xp.arange(L, dtype=xp.float64) - L // 2
    # Sparse grids broadcast to the same sums as full ones, without ndim full copies.
    grids = xp.meshgrid(*([c] * ndim), indexing="ij", sparse=True)
    return xp.sqrt(sum(g * g for g in grids))


def radial_distance(L, ndim=3, xp=np, dtype=np.float32):
    """Distance in pixels of each pixel (voxel) from the centre ``L//2``.

    Parameters
    ----------
    L : int
        Box side length.
    ndim : int
        2 for an image, 3 for a volume.
    xp : module
        numpy or cupy.
    dtype : dtype
        Output type (the distance itself is computed in float64).

    Returns
    -------
    array of shape ``(L,)*ndim``

    Examples
    --------
    >>> r = radial_distance(4, ndim=2)
    >>> float(r[2, 0]), float(r[2, 2]), round(float(r[0, 0]), 4)
    (2.0, 0.0, 2.8284)
    """
    return _distance64(L, ndim, xp).astype(dtype)


def soft_sphere(L, radius_px, edge_px=3.0, *, ndim=3, xp=np, dtype=np.float32):
    """Sphere (``ndim=3``) or circle (``ndim=2``) with a raised-cosine edge.

    The value at distance ``r`` from the centre ``L//2`` is 1 for ``r <= radius_px``,
    ``0.5 * (1 + cos(pi (r - radius_px) / edge_px))`` for
    ``radius_px < r < radius_px + edge_px`` and 0 beyond. ``edge_px <= 0`` gives the
    hard mask ``r <= radius_px`` as 0/1 values.

    Parameters
    ----------
    L : int
        Box side length.
    radius_px : float
        Radius of the flat inside, in pixels.
    edge_px : float
        Width of the cosine edge, in pixels.
    ndim : int
        2 or 3.
    xp : module
        numpy or cupy.
    dtype : dtype
        Output type (computed in float64).

    Returns
    -------
    array of shape ``(L,)*ndim`` with values in [0, 1]

    Examples
    --------
    >>> m = soft_sphere(16, 4.0, 2.0, ndim=2)
    >>> float(m[8, 8]), float(m[8, 13]), float(m[8, 15])
    (1.0, 0.5, 0.0)
    """
    r = _distance64(L, ndim, xp)
    if edge_px <= 0:
        return (r <= radius_px).astype(dtype)
    t = xp.clip((r - radius_px) / edge_px, 0.0, 1.0)
    return (0.5 * (1.0 + xp.cos(np.pi * t))).astype(dtype)


def disc(L, radius_px, *, ndim=2, inclusive=True, xp=np):
    """Hard boolean disc (``ndim=2``) or ball (``ndim=3``) around the centre ``L//2``.

    Parameters
    ----------
    L : int
        Box side length.
    radius_px : float
        Radius in pixels.
    ndim : int
        2 or 3.
    inclusive : bool
        True: ``r <= radius_px`` (the closed disc; its complement ``~disc(...)`` is the
        background ``r > radius_px`` outside a particle of that radius). False:
        ``r < radius_px`` (the simulator's SNR disc, ``disc(L, L / 2,
        inclusive=False)``).
    xp : module
        numpy or cupy.

    Returns
    -------
    bool array of shape ``(L,)*ndim``

    Examples
    --------
    >>> int(disc(8, 2.0).sum()), int(disc(8, 2.0, inclusive=False).sum())
    (13, 9)
    """
    r = _distance64(L, ndim, xp)
    return r <= radius_px if inclusive else r < radius_px
