"""A map averaged over the operators of a point group: ``(1/G) sum_g V(g^T x)``.

It lives with the forward model, not in :mod:`cryorecon.geometry.symmetry`, because it
resamples with the projector's trilinear interpolation and geometry sits below the
projector.
"""
from __future__ import annotations

import numpy as np

from ..backend import array_module
from .projector import _real_dtype, trilinear

# Points interpolated per slab in symmetrize_map: bounds the temporaries (~100 B/point).
_POINTS_PER_SLAB = 1 << 18


def symmetrize_map(volume, group):
    """The average of a map carried by every operator: ``(1/G) sum_g V(g^T x)``.

    Resampled with the projector's trilinear interpolation
    (:func:`~cryorecon.forward.projector.trilinear`) about the centre ``n // 2`` of each
    axis, so it also symmetrises a centred transform (``volume_ft``): the transform of
    ``V(g^T x)`` is ``F(g^T k)``. Points carried outside the box count as 0, so the
    content should lie inside the sphere of radius ``L // 2 - 1``. Operators that
    permute the grid (90 and 180 degree turns about x, y, z, for odd L) are exact.

    Parameters
    ----------
    volume : array (nz, ny, nx), real or complex, numpy or cupy
        ``V[z, y, x]``.
    group : SymmetryGroup

    Returns
    -------
    array of the shape, dtype and array module of ``volume``
        Invariant under every operator up to the interpolation.

    Examples
    --------
    >>> v = np.zeros((5, 5, 5)); v[2, 2, 3] = 1.0          # one voxel at x = +1
    >>> from cryorecon.geometry.symmetry import symmetry_group
    >>> s = symmetrize_map(v, symmetry_group("C4"))
    >>> float(s[2, 3, 2]), float(s[2, 2, 1])               # now also at y = +1, x = -1
    (0.25, 0.25)
    """
    xp = array_module(volume)
    real = _real_dtype(volume)
    nz, ny, nx = volume.shape
    cz, cy, cx = nz // 2, ny // 2, nx // 2
    ops_T = xp.asarray(np.transpose(group.operators, (0, 2, 1)), dtype=real)
    y, x = xp.meshgrid(xp.arange(ny, dtype=real) - cy, xp.arange(nx, dtype=real) - cx, indexing="ij")
    out = xp.empty_like(volume)
    slab = max(1, _POINTS_PER_SLAB // (ny * nx))
    for z0 in range(0, nz, slab):
        z = xp.arange(z0, min(nz, z0 + slab), dtype=real) - cz
        shape = (len(z), ny, nx)
        pts = xp.stack([xp.broadcast_to(x, shape), xp.broadcast_to(y, shape),
                        xp.broadcast_to(z[:, None, None], shape)]).reshape(3, -1)
        acc = xp.zeros(pts.shape[1], dtype=volume.dtype)
        for gT in ops_T:
            src = gT @ pts
            acc += trilinear(volume, (src[2] + cz, src[1] + cy, src[0] + cx))
        out[z0:z0 + len(z)] = (acc / group.order).reshape(shape)
    return out


__all__ = ["symmetrize_map"]
