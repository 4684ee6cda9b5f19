"""Centred discrete Fourier transforms and the frequency bookkeeping around them.

Convention (used everywhere in cryorecon): zero frequency sits at index ``L//2``
along every transformed axis, and so does the real-space origin, i.e.
``fft2c(x) = fftshift(fft2(ifftshift(x)))``. The forward transform is
unnormalised and the inverse carries ``1/N``, as in numpy. Frequencies are
integers in "pixel" units, ``k in [-L//2, (L-1)//2]``; divide by ``L`` for
cycles/pixel and by ``L * pixel_size_A`` for 1/A.

Every function works on numpy or cupy arrays: the array module is taken from
the input (or passed as ``xp`` where there is no input array).
"""
from __future__ import annotations

import numpy as np

from ..backend import array_module
from .masks import radial_distance


def _axes(ndim):
    return tuple(range(-ndim, 0))


def _fftc(x, ndim, inverse):
    xp = array_module(x)
    axes = _axes(ndim)
    x = xp.fft.ifftshift(x, axes=axes)
    x = xp.fft.ifftn(x, axes=axes) if inverse else xp.fft.fftn(x, axes=axes)
    return xp.fft.fftshift(x, axes=axes)


def _complex_dtype(x):
    xp = array_module(x)
    if x.dtype in (xp.float64, xp.complex128):
        return xp.complex128
    return xp.complex64


def fft2c(x):
    """Centred, unnormalised 2D DFT over the last two axes (batched).

    Parameters
    ----------
    x : array (..., L, L)
        Real or complex images, origin at pixel ``L//2``.

    Returns
    -------
    array (..., L, L) complex
        complex64 for float32/complex64 input, complex128 for 64-bit input.
    """
    return _fftc(x, 2, False).astype(_complex_dtype(x), copy=False)


def ifft2c(x):
    """Inverse of :func:`fft2c` (carries the ``1/L^2``)."""
    return _fftc(x, 2, True).astype(_complex_dtype(x), copy=False)


def fft3c(v):
    """Centred, unnormalised 3D DFT over the last three axes."""
    return _fftc(v, 3, False).astype(_complex_dtype(v), copy=False)


def ifft3c(v):
    """Inverse of :func:`fft3c` (carries the ``1/L^3``)."""
    return _fftc(v, 3, True).astype(_complex_dtype(v), copy=False)


def freq_1d(L, xp=np):
    """Integer pixel frequencies of the centred layout: ``arange(L) - L//2``."""
    return xp.arange(L) - L // 2


def freq_grid_2d(L, xp=np):
    """Integer frequency grids ``(kx, ky)``, each (L, L), in the centred layout.

    ``kx`` varies along the last axis (columns) and ``ky`` along the first, matching
    ``img[y, x]``.
    """
    k = freq_1d(L, xp)
    ky, kx = xp.meshgrid(k, k, indexing="ij")
    return kx, ky


def shell_index(L, ndim=2, xp=np):
    """``round(|k|)`` in pixels for every point of the centred (L,)*ndim grid.

    Returns
    -------
    int array of shape ``(L,)*ndim``
        Shell number; shells ``>= L//2`` are the corners beyond Nyquist.
    """
    # |k| on the centred grid is the same distance from index L//2 as in real space
    return xp.rint(radial_distance(L, ndim, xp, dtype=xp.float64)).astype(xp.int64)


def band_coords(L, k_max_px, half=False):
    """Integer frequencies ``(kx, ky)`` of the centred L-grid with ``|k| < k_max_px``.

    Parameters
    ----------
    L : int
        Image size.
    k_max_px : float
        Band limit in pixel frequencies (``L/2`` is Nyquist).
    half : bool
        Keep one Hermitian half-plane only: ``ky > 0``, or ``ky == 0 and kx >= 0``.
        Points whose mirror ``-k`` lies outside the grid (the ``-L/2`` Nyquist row and
        column of an even grid) are kept too, with weight 1.

    Returns
    -------
    coords : numpy int64 array (M, 2)
        Columns ``(kx, ky)``, in row-major order of the centred image (ky slow).
    weight : numpy float32 array (M,), only when ``half=True``
        Multiplicity: 2 where ``-k`` is a distinct band point that was dropped, else 1,
        so that for a Hermitian-symmetric ``f`` (``f(-k) = f(k)``, e.g.
        ``Re(conj(X) Y)`` of two real images' transforms) the sum of ``f`` over the full
        band equals ``sum(weight * f)`` over the half band.
    """
    kx, ky = freq_grid_2d(L)
    inside = kx * kx + ky * ky < float(k_max_px) ** 2
    coords = np.stack([kx[inside], ky[inside]], axis=1).astype(np.int64)
    if not half:
        return coords
    lo, hi = -(L // 2), (L - 1) // 2
    mx, my = -coords[:, 0], -coords[:, 1]
    mirror_in_band = (mx >= lo) & (mx <= hi) & (my >= lo) & (my <= hi)
    upper = (coords[:, 1] > 0) | ((coords[:, 1] == 0) & (coords[:, 0] >= 0))
    keep = upper | ~mirror_in_band
    self_conj = (coords[:, 0] == 0) & (coords[:, 1] == 0)
    weight = np.where(mirror_in_band & ~self_conj, 2.0, 1.0).astype(np.float32)
    return coords[keep], weight[keep]


def gather_coeffs(images_ft, coords):
    """Pick the Fourier coefficients at ``coords`` from centred transforms.

    Parameters
    ----------
    images_ft : array (N, L, L) complex
        Centred transforms (:func:`fft2c`).
    coords : int array (M, 2)
        ``(kx, ky)`` pixel frequencies, e.g. from :func:`band_coords`.

    Returns
    -------
    array (N, M), on the device of ``images_ft``.
    """
    xp = array_module(images_ft)
    L = images_ft.shape[-1]
    c = xp.asarray(coords)
    flat = (c[:, 1] + L // 2) * L + (c[:, 0] + L // 2)
    return images_ft.reshape(images_ft.shape[:-2] + (L * L,))[..., flat]


def shift_phase(coords, L, shifts_px, dtype=np.complex64):
    """Phase factors ``exp(+2 pi i (kx ox + ky oy) / L)`` for each shift and frequency.

    This is RELION's convention: an image whose particle is off-centre by the origin
    offset ``o = (rlnOriginX, rlnOriginY)`` (in pixels) is ``slice_k * phase_k``, i.e.
    the projection translated by ``-o``; multiplying an image by the conjugate phase
    translates it by ``+o`` and centres it.

    Parameters
    ----------
    coords : int array (M, 2)
        ``(kx, ky)`` in pixel frequencies of the L-grid.
    L : int
        Image size.
    shifts_px : array (T, 2)
        Origin offsets ``(ox, oy)`` in pixels.
    dtype : complex dtype
        Output precision (the phase itself is computed in float64).

    Returns
    -------
    array (T, M) complex, on the device of ``coords``/``shifts_px``.
    """
    xp = array_module(coords, shifts_px)
    c = xp.asarray(coords, dtype=xp.float64)
    s = xp.asarray(shifts_px, dtype=xp.float64).reshape(-1, 2)
    phase = (2.0 * np.pi / L) * (s @ c.T)
    return (xp.cos(phase) + 1j * xp.sin(phase)).astype(dtype)


def _resize_slices(L_old, L_new):
    """Slices of the larger grid that hold the smaller one, both centred at L//2."""
    small, big = min(L_old, L_new), max(L_old, L_new)
    start = big // 2 - small // 2
    return slice(start, start + small)


def _resize(x, L_new, ndim, crop):
    xp = array_module(x)
    if ndim is None:
        if x.ndim == 3:
            raise ValueError(
                "a 3-D array is ambiguous: pass ndim=2 for an image stack or ndim=3 for a volume"
            )
        ndim = 2 if x.ndim == 2 or x.ndim > 3 else x.ndim
    L_old = x.shape[-1]
    if any(n != L_old for n in x.shape[-ndim:]):
        raise ValueError(f"last {ndim} axes must be square/cubic, got shape {x.shape}")
    if (crop and L_new > L_old) or (not crop and L_new < L_old):
        raise ValueError(f"cannot {'crop' if crop else 'pad'} size {L_old} to {L_new}")
    ft = _fftc(x, ndim, False)
    sl = (Ellipsis,) + (_resize_slices(L_old, L_new),) * ndim
    if crop:
        ft = ft[sl]
    else:
        out = xp.zeros(x.shape[:-ndim] + (L_new,) * ndim, dtype=ft.dtype)
        out[sl] = ft
        ft = out
    # The DFT sums L^ndim samples; rescale so real-space values (e.g. the mean) survive.
    ft = ft * (float(L_new) / L_old) ** ndim
    out = _fftc(ft, ndim, True)
    if not xp.iscomplexobj(x):
        out = out.real
    return out.astype(x.dtype, copy=False)


def fourier_crop(x, L_new, ndim=None):
    """Downsample by cropping the centred spectrum to ``L_new`` (values preserved).

    Parameters
    ----------
    x : array (..., L, L) or (L, L, L)
        Image(s) or a volume.
    L_new : int
        New size, ``<= L``.
    ndim : {2, 3, None}
        Number of trailing axes to resample. ``None`` means 2 for a 2-D array or a
        stack of 4+ dims; a 3-D array must say (stack of images or volume).

    Returns
    -------
    array of the same dtype; a constant image stays the same constant.
    """
    return _resize(x, L_new, ndim, crop=True)


def fourier_pad(x, L_new, ndim=None):
    """Upsample by zero-padding the centred spectrum to ``L_new`` (values preserved).

    See :func:`fourier_crop` for the arguments.
    """
    return _resize(x, L_new, ndim, crop=False)
