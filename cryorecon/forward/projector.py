"""The projector: central slices of a padded 3D transform and their exact adjoint.

By the central-slice theorem the 2D transform of a projection along the viewing
axis of pose ``A`` is the 3D transform sampled on the plane ``A^T (kx, ky, 0)``.
We zero-pad the map ``pad`` times (RELION pads 2x), take the centred 3D DFT once
(:func:`volume_ft`) and interpolate it trilinearly on that plane
(:func:`extract`). :func:`backproject` scatters values back with the same eight
weights, so it is the exact adjoint of :func:`extract`. The stencil is
:func:`trilinear_corners`, and :func:`trilinear` is the package's one trilinear
interpolator (map alignment in :mod:`cryorecon.validate` uses it too); :func:`volume_ft_adjoint`
is the exact adjoint of :func:`volume_ft`. Together they carry gradients from
Fourier coefficients back to voxels.

All array code goes through ``xp`` (numpy or cupy, taken from the inputs); the
interpolation is vectorised over (rotation, frequency) pairs and chunked over
rotations to bound memory. float32 input gives complex64 results, float64 input
stays in double precision.
"""
from __future__ import annotations

import numpy as np

from ..backend import kernels
from ..backend import array_module
from .fourier import fft3c, freq_grid_2d, ifft2c, ifft3c

# Interpolation points handled per chunk. Each point needs ~100 bytes of temporaries;
# chunks of ~1e5 points keep them in cache on a CPU and avoid fresh page-faulting
# allocations, which cost more than the arithmetic.
_POINTS_PER_CHUNK = 1 << 17
_POINTS_PER_CHUNK_GPU = 1 << 22


def padded_size(L, pad=2):
    """Edge of the zero-padded grid for an L-map padded ``pad`` times."""
    return int(round(pad * L))


def _real_dtype(a):
    xp = array_module(a)
    return xp.float64 if a.dtype in (xp.float64, xp.complex128) else xp.float32


def volume_ft(volume, pad=2):
    """Zero-pad a real map ``pad`` times (centred) and take its centred 3D DFT.

    Parameters
    ----------
    volume : array (L, L, L) real
        The map ``V[z, y, x]``, centre at ``L//2``.
    pad : float
        Padding factor; the padded edge is ``round(pad * L)``.

    Returns
    -------
    array (pL, pL, pL) complex
        Unnormalised, so ``volume_ft(V)[pL//2 + pad*k]`` equals ``fft3c(V)[L//2 + k]``
        for integer k.
    """
    xp = array_module(volume)
    L = volume.shape[-1]
    pL = padded_size(L, pad)
    start = pL // 2 - L // 2
    big = xp.zeros((pL, pL, pL), dtype=_real_dtype(volume))
    big[start:start + L, start:start + L, start:start + L] = volume
    return fft3c(big)


def volume_ft_adjoint(G, L, pad=2):
    """Exact adjoint of :func:`volume_ft` for the real inner product ``Re <., .>``.

    Parameters
    ----------
    G : array (pL, pL, pL) complex
    L : int
        Edge of the unpadded map.

    Returns
    -------
    array (L, L, L) real
        ``Re`` of the cropped adjoint DFT, so that
        ``Re <volume_ft(V), G> == <V, volume_ft_adjoint(G)>``.
    """
    pL = G.shape[-1]
    if pL != padded_size(L, pad):
        raise ValueError(f"G has edge {pL}, expected {padded_size(L, pad)} for L={L}, pad={pad}")
    # The centred DFT's adjoint is N times its inverse: the shifts are permutations
    # whose transposes are the opposite shifts.
    back = ifft3c(G) * float(pL) ** 3
    start = pL // 2 - L // 2
    return back[start:start + L, start:start + L, start:start + L].real.copy()


def _slice_points(rotations, coords, pad, pL, xp, dtype):
    """Padded-grid coordinates ``pL//2 + pad * A^T (kx, ky, 0)`` as (R, M) x, y, z."""
    A = xp.asarray(rotations, dtype=dtype).reshape(-1, 3, 3)
    c = xp.asarray(coords, dtype=dtype)
    kx, ky = c[:, 0], c[:, 1]
    centre = pL // 2
    # (A^T k)_j = sum_i A[i, j] k_i with k = (kx, ky, 0).
    pts = []
    for j in range(3):
        p = A[:, 0, j, None] * kx[None, :] + A[:, 1, j, None] * ky[None, :]
        pts.append(p * pad + centre)
    return pts


def trilinear_corners(coords_zyx, shape):
    """Flat indices and weights of the 8 trilinear neighbours of points on a 3D grid.

    The one trilinear stencil of the package: :func:`trilinear` gathers with it and
    :func:`backproject` scatters with it, which is what makes the pair exact adjoints.

    Parameters
    ----------
    coords_zyx : sequence of three arrays, or array (3, ...)
        Fractional grid indices ``(z, y, x)`` of the points, all of one shape; integer
        values are grid nodes (index ``i`` is ``grid[i]``, no centring).
    shape : tuple of int (nz, ny, nx)
        Shape of the grid.

    Yields
    ------
    flat_index, weight : arrays of the points' shape
        One pair per corner, in the order (z, y, x) = (0, 0, 0), (0, 0, 1), ..., (1, 1, 1);
        ``flat_index`` indexes the C-ordered grid. A corner off the grid has weight 0 and
        a clipped (safe) index.
    """
    gz, gy, gx = coords_zyx
    xp = array_module(gz)
    nz, ny, nx = (int(n) for n in shape)
    itype = xp.int32 if nz * ny * nx < 2 ** 31 else xp.int64
    utype = xp.uint32 if itype == xp.int32 else xp.uint64
    per_axis = []
    for g, n in ((gz, nz), (gy, ny), (gx, nx)):
        g0 = xp.floor(g)
        f = g - g0
        i0 = g0.astype(itype)
        i1 = i0 + 1
        # A neighbour off the grid holds zero: weight 0 and a safe (clipped) index. The
        # unsigned view folds "i >= 0 and i < n" into one comparison.
        w0 = (1 - f) * (i0.view(utype) < n)
        w1 = f * (i1.view(utype) < n)
        per_axis.append(((xp.clip(i0, 0, n - 1), w0), (xp.clip(i1, 0, n - 1), w1)))
    (z0, z1), (y0, y1), (x0, x1) = per_axis
    for iz, wz in (z0, z1):
        for iy, wy in (y0, y1):
            zy = (iz * ny + iy) * nx
            wzy = wz * wy
            for ix, wx in (x0, x1):
                yield zy + ix, wzy * wx


def trilinear(grid, coords_zyx):
    """Trilinear interpolation of a 3D grid at fractional index coordinates.

    Parameters
    ----------
    grid : array (nz, ny, nx), real or complex (numpy or cupy)
    coords_zyx : sequence of three arrays, or array (3, ...)
        Fractional indices ``(z, y, x)`` into ``grid``, all of one shape, in the real
        dtype the weights should have (float32 keeps a complex64 grid in complex64).

    Returns
    -------
    array of the points' shape
        ``sum_corners w * grid[corner]`` (see :func:`trilinear_corners`); neighbours
        outside the grid count as 0.

    Examples
    --------
    >>> g = np.arange(8.0).reshape(2, 2, 2)
    >>> float(trilinear(g, (np.array(0.5), np.array(0.5), np.array(0.5))))
    3.5
    """
    xp = array_module(grid)
    flat = grid.reshape(-1)
    acc = None
    for idx, w in trilinear_corners(coords_zyx, grid.shape):
        term = xp.take(flat, idx) * w
        acc = term if acc is None else acc + term
    return acc


def _corner_weights(rotations, coords, pad, pL, xp, dtype):
    """:func:`trilinear_corners` of the slice points of ``rotations`` on the padded grid."""
    gx, gy, gz = _slice_points(rotations, coords, pad, pL, xp, dtype)
    return trilinear_corners((gz, gy, gx), (pL, pL, pL))


def _rotation_chunks(R, M, xp):
    # A GPU wants big launches; its memory bound is the only limit there.
    points = _POINTS_PER_CHUNK if xp is np else _POINTS_PER_CHUNK_GPU
    step = max(1, points // max(M, 1))
    for r0 in range(0, R, step):
        yield slice(r0, min(R, r0 + step))


def extract(vol_ft, rotations, coords, pad=2):
    """Central slices of a padded transform, trilinearly interpolated.

    Parameters
    ----------
    vol_ft : array (pL, pL, pL) complex
        From :func:`volume_ft`.
    rotations : array (R, 3, 3)
        RELION matrices ``A`` (host or device); the slice is at ``A^T (kx, ky, 0)``.
    coords : int array (M, 2)
        ``(kx, ky)`` in pixel frequencies of the unpadded L-grid.
    pad : float
        The padding used by :func:`volume_ft`.

    Returns
    -------
    array (R, M) complex, dtype of ``vol_ft``
        Points whose neighbours fall outside the grid get those neighbours as 0.
    """
    xp = array_module(vol_ft)
    if xp is not np:
        return kernels.extract(vol_ft, rotations, coords, pad)
    pL = vol_ft.shape[-1]
    dtype = _real_dtype(vol_ft)
    rotations = np.asarray(rotations) if array_module(rotations) is np else rotations
    R = rotations.reshape(-1, 3, 3).shape[0]
    M = len(coords)
    out = xp.empty((R, M), dtype=vol_ft.dtype)
    rot_all = rotations.reshape(-1, 3, 3)
    for sl in _rotation_chunks(R, M, xp):
        gx, gy, gz = _slice_points(rot_all[sl], coords, pad, pL, xp, dtype)
        out[sl] = trilinear(vol_ft, (gz, gy, gx))
    return out


def extract_nearest(vol_ft, rotations, coords, pad=2):
    """Central slices by nearest-neighbour look-up on the padded grid: for pose search.

    One gather per point instead of trilinear's eight. On a 2x padded grid the nearest
    sample is at most half a padded voxel (a quarter of an original Fourier pixel per
    axis) away, which is accurate enough to rank poses; gradients still go through the
    exact trilinear pair :func:`extract` / :func:`backproject`.

    Parameters and returns as for :func:`extract`.
    """
    xp = array_module(vol_ft)
    pL = vol_ft.shape[-1]
    dtype = _real_dtype(vol_ft)
    rot_all = xp.asarray(rotations).reshape(-1, 3, 3)
    R, M = rot_all.shape[0], len(coords)
    flat = vol_ft.reshape(-1)
    out = xp.empty((R, M), dtype=vol_ft.dtype)
    for sl in _rotation_chunks(R, M, xp):
        gx, gy, gz = (xp.rint(g).astype(xp.int32) for g in _slice_points(rot_all[sl], coords, pad, pL, xp, dtype))
        inside = (gx >= 0) & (gx < pL) & (gy >= 0) & (gy < pL) & (gz >= 0) & (gz < pL)
        idx = (xp.clip(gz, 0, pL - 1) * pL + xp.clip(gy, 0, pL - 1)) * pL + xp.clip(gx, 0, pL - 1)
        out[sl] = xp.where(inside, xp.take(flat, idx), 0)
    return out


def _scatter(values, rotations, coords, shape, pad, real):
    xp = array_module(values)
    pL = shape[-1]
    dtype = _real_dtype(values)
    rot_all = rotations.reshape(-1, 3, 3)
    R, M = values.shape
    if real:
        values = xp.real(values).astype(dtype, copy=False)
    if xp is np:
        # bincount is a much faster scatter-add than np.add.at; it sums in float64,
        # which only makes the adjoint more exact.
        n = pL ** 3
        acc = [np.zeros(n) for _ in range(1 if real else 2)]
        for sl in _rotation_chunks(R, M, xp):
            part = values[sl]
            corners = list(_corner_weights(rot_all[sl], coords, pad, pL, xp, dtype))
            idx = np.concatenate([i.ravel() for i, _ in corners])
            acc[0] += np.bincount(idx, weights=np.concatenate([(part.real * w).ravel() for _, w in corners]), minlength=n)
            if not real:
                acc[1] += np.bincount(idx, weights=np.concatenate([(part.imag * w).ravel() for _, w in corners]), minlength=n)
        out = acc[0].astype(values.dtype) if real else (acc[0] + 1j * acc[1]).astype(values.dtype)
        return out.reshape(shape)
    # One thread per (rotation, frequency) with atomic adds: see kernels.
    return kernels.backproject(values, rot_all, coords, shape, pad, real=real)


def backproject(values, rotations, coords, shape, pad=2):
    """Exact adjoint of :func:`extract`: scatter-add with the same trilinear weights.

    Parameters
    ----------
    values : array (R, M) complex
        One value per (rotation, frequency).
    rotations : array (R, 3, 3)
    coords : int array (M, 2)
        As for :func:`extract`.
    shape : tuple (pL, pL, pL)
        Shape of the padded transform.

    Returns
    -------
    array (pL, pL, pL) complex
        ``Re <extract(F), values> == Re <F, backproject(values)>`` for every F.
    """
    if array_module(values) is np:
        rotations = np.asarray(rotations)
    return _scatter(values, rotations, coords, tuple(shape), pad, real=False)


def backproject_weights(weights, rotations, coords, shape, pad=2):
    """:func:`backproject` for real values (e.g. ``CTF^2`` for a diagonal preconditioner).

    Returns
    -------
    array (pL, pL, pL) real
    """
    if array_module(weights) is np:
        rotations = np.asarray(rotations)
    return _scatter(weights, rotations, coords, tuple(shape), pad, real=True)


def full_coords(L):
    """All ``(kx, ky)`` of the centred L-grid, row-major (ky slow), as (L*L, 2) ints."""
    kx, ky = freq_grid_2d(L)
    return np.stack([kx.ravel(), ky.ravel()], axis=1)


def project(volume, rotations, pad=2, vol_ft=None):
    """Real-space projections of a map along the poses ``rotations``.

    Parameters
    ----------
    volume : array (L, L, L) real
    rotations : array (R, 3, 3)
        RELION matrices ``A``; ``P[y, x] = sum_z V(A^T (x, y, z))``.
    pad : float
    vol_ft : array, optional
        A precomputed ``volume_ft(volume, pad)`` to reuse.

    Returns
    -------
    array (R, L, L) real, dtype of ``volume``
    """
    L = volume.shape[-1]
    F = volume_ft(volume, pad) if vol_ft is None else vol_ft
    slices = extract(F, rotations, full_coords(L), pad)
    images = ifft2c(slices.reshape(-1, L, L))
    return images.real.astype(volume.dtype, copy=False)
