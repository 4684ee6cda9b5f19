"""Aligning a map onto a reference: rotation, hand (mirror) and shift.

An ab initio map can come out with either hand, so :func:`align_maps` searches the map
and its mirror image. The search works on Fourier coefficients in a band: by Parseval the
real part of ``sum_k F_ref(k) conj(F_W(k))`` is the correlation of the band-passed maps,
and for ``W = rotate_volume(mov, G, s)``, ``F_W(k) = F_mov(G^T k) exp(-2 pi i k.s / L)``.
A rotation then costs one trilinear interpolation of the padded transform (the
projector's :func:`~cryorecon.forward.projector.trilinear`) and a shift a phase, with no
real-space resampling inside the search.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy import fft as sp_fft
from scipy import optimize
from scipy.spatial.transform import Rotation

from ..errors import InputError
from ..forward.masks import soft_sphere
from ..forward.projector import trilinear
from ..geometry.rotations import angular_distance_deg
from .fsc import cubic_pair
from .transform import MIRROR, rotate_volume

#: Rotations scored per batch of the global search (bounds the (batch, n_k) temporaries).
_GLOBAL_BATCH = 256


# ------------------------------------------------------------ the Fourier matcher
def _centred_ft_padded(vol, pad, kmax):
    """Centred 3D FT of ``vol`` zero-padded ``pad`` times, cropped to |k| <= kmax + 2.

    Element ``[m + pad*k_z, m + pad*k_y, m + pad*k_x]`` (``m`` the middle) is
    ``sum_x V(x) exp(-2 pi i k.x / L)`` with ``x`` from the centre ``L // 2``.
    """
    L = vol.shape[0]
    P = pad * L
    big = np.zeros((P, P, P))
    o = P // 2 - L // 2
    big[o:o + L, o:o + L, o:o + L] = vol
    F = np.fft.fftshift(np.fft.fftn(np.fft.ifftshift(big)))
    half = int(np.ceil(pad * (kmax + 2)))
    m = P // 2
    crop = F[m - half:m + half + 1, m - half:m + half + 1, m - half:m + half + 1]
    return np.ascontiguousarray(crop, dtype=np.complex64), half


def _half_shell_k(kmax):
    """Integer frequencies (x, y, z), one of each +-k pair, 0 < |k| <= kmax."""
    r = int(np.floor(kmax))
    g = np.arange(-r, r + 1)
    kz, ky, kx = np.meshgrid(g, g, g, indexing="ij")
    k = np.stack([kx.ravel(), ky.ravel(), kz.ravel()], axis=1)
    n2 = (k**2).sum(1)
    first = (k[:, 0] > 0) | ((k[:, 0] == 0) & (k[:, 1] > 0)) | ((k[:, 0] == 0) & (k[:, 1] == 0) & (k[:, 2] > 0))
    return k[first & (n2 <= kmax**2) & (n2 > 0)].astype(np.float64)


class _FourierMatcher:
    """Correlation of the reference with the moved map, in the band ``0 < |k| <= kmax``."""

    def __init__(self, moving, reference, kmax, pad=2):
        L = moving.shape[0]
        self.L, self.pad = L, pad
        self.k = _half_shell_k(kmax)
        self.Fm, self.half = _centred_ft_padded(moving, pad, kmax)
        Fr, rhalf = _centred_ft_padded(reference, 1, kmax)
        idx = (self.k[:, ::-1] + rhalf).astype(np.int64)
        self.Fr = Fr[idx[:, 0], idx[:, 1], idx[:, 2]]
        self.norm_r = np.sqrt(np.sum(np.abs(self.Fr) ** 2))

    def sample(self, G):
        """``F_mov(G^T k)`` for a stack of matrices G (n, 3, 3) -> (n, n_k)."""
        q = np.matmul(self.k[None], G)  # row k @ G is (G^T k)^T, in (x, y, z)
        # float32 indices keep the complex64 transform in complex64 through the weights.
        idx = (q * self.pad + self.half).astype(np.float32)
        return trilinear(self.Fm, (idx[..., 2], idx[..., 1], idx[..., 0]))

    def correlation(self, G, shift_px):
        """Normalised band correlation of the reference with ``rotate_volume(mov, G, shift_px)``."""
        Fw = self.sample(G[None])[0]
        phase = np.exp(2j * np.pi * (self.k @ np.asarray(shift_px)) / self.L)
        num = np.real(np.sum(self.Fr * np.conj(Fw) * phase))
        return num / (self.norm_r * np.sqrt(np.sum(np.abs(Fw) ** 2)) + 1e-300)

    def best_shifts(self, G, n_grid, max_shift_px):
        """Best shift on an ``n_grid``^3 lattice (spacing L / n_grid px) for each G."""
        F = self.sample(G)  # (n, n_k)
        norms = np.sqrt(np.sum(np.abs(F) ** 2, axis=1)) * self.norm_r + 1e-300
        prod = self.Fr[None] * np.conj(F)
        kk = np.rint(self.k).astype(np.int64) % n_grid
        grid = np.zeros((len(G), n_grid, n_grid, n_grid), dtype=np.complex64)
        grid[:, kk[:, 2], kk[:, 1], kk[:, 0]] = prod
        # Both members of each +-k pair: the product of two real maps' FTs is Hermitian.
        grid[:, (-kk[:, 2]) % n_grid, (-kk[:, 1]) % n_grid, (-kk[:, 0]) % n_grid] = np.conj(prod)
        cc = sp_fft.ifftn(grid, axes=(1, 2, 3), workers=-1).real * (n_grid**3 / 2.0)
        step = self.L / n_grid
        lag = np.fft.fftfreq(n_grid) * n_grid * step
        lz, ly, lx = np.meshgrid(lag, lag, lag, indexing="ij")
        allowed = (lx**2 + ly**2 + lz**2) <= max_shift_px**2 + 1e-9
        cc = np.where(allowed[None], cc, -np.inf)
        flat = cc.reshape(len(G), -1).argmax(1)
        iz, iy, ix = np.unravel_index(flat, (n_grid,) * 3)
        shifts = np.stack([lx[iz, iy, ix], ly[iz, iy, ix], lz[iz, iy, ix]], axis=1)
        return cc.reshape(len(G), -1)[np.arange(len(G)), flat] / norms, shifts


# ------------------------------------------------------------------ the steps
class _Candidate(NamedTuple):
    mirrored: bool
    rotation: np.ndarray
    shift_px: np.ndarray


def _bands(L, pixel_size_A, coarse_resolution_A, fine_resolution_A):
    """Band limits (cycles per box) of the global, middle and final searches."""

    def band(res_A, default_cycles):
        if res_A is None:
            return min(default_cycles, L / 2 - 2)
        if not pixel_size_A:
            raise InputError("align: a resolution in Angstrom needs the pixel size (--pixel-size)")
        return min(L * pixel_size_A / res_A, L / 2 - 2)

    k_coarse = band(coarse_resolution_A, 5.0)
    k_fine = max(band(fine_resolution_A, 20.0), k_coarse)
    return k_coarse, min(2 * k_coarse, k_fine), k_fine


def _shift_lattice(k_coarse, L):
    """Points per axis of the global shift lattice: spacing ~1/3 of the band's shortest wavelength."""
    n_grid = int(np.clip(np.ceil(3 * k_coarse), 8, L))
    return n_grid + n_grid % 2


def _global_search(matcher, rots, try_mirror, n_grid, max_shift_px):
    """Score and best lattice shift of every grid rotation, proper first, then mirrored."""
    scores, shifts = [], []
    for mirrored in [False, True] if try_mirror else [False]:
        mats = rots @ MIRROR if mirrored else rots
        for start in range(0, len(mats), _GLOBAL_BATCH):
            cc, sh = matcher.best_shifts(mats[start:start + _GLOBAL_BATCH], n_grid, max_shift_px)
            scores.append(cc)
            shifts.append(sh)
    return np.concatenate(scores), np.concatenate(shifts)


def _distinct_candidates(scores, shifts, rots, n_candidates, min_separation_deg):
    """The best-scoring solutions, at most one per peak: grid neighbours of a peak are the same one."""
    picked = []
    for n in np.argsort(-scores):
        mirrored, R = bool(n >= len(rots)), rots[n % len(rots)]
        if not any(c.mirrored == mirrored and angular_distance_deg(R, c.rotation) < min_separation_deg for c in picked):
            picked.append(_Candidate(mirrored, R, shifts[n]))
        if len(picked) == n_candidates:
            break
    return picked


def _refine(matcher, start, step_rad, shift_step_px, xatol, maxiter):
    """Nelder-Mead over a rotation vector (left-multiplying the start's) and the shift."""
    J = MIRROR if start.mirrored else np.eye(3)

    def cost(p):
        R = Rotation.from_rotvec(p[:3]).as_matrix() @ start.rotation
        return -matcher.correlation(R @ J, p[3:])

    x0 = np.concatenate([np.zeros(3), start.shift_px])
    simplex = np.vstack([x0] + [x0 + np.eye(6)[i] * (step_rad if i < 3 else shift_step_px) for i in range(6)])
    res = optimize.minimize(
        cost, x0, method="Nelder-Mead",
        options={"initial_simplex": simplex, "xatol": xatol, "fatol": 1e-6, "maxiter": maxiter},
    )
    return -res.fun, _Candidate(start.mirrored, Rotation.from_rotvec(res.x[:3]).as_matrix() @ start.rotation, res.x[3:])


def _local_search(m_mov, m_ref, picked, bands, coarse_step_deg, n_grid):
    """Refine every candidate in the middle band, then the winner in the fine band."""
    L = m_mov.shape[0]
    _, k_mid, k_fine = bands
    mid = _FourierMatcher(m_mov, m_ref, k_mid)
    refined = [_refine(mid, c, np.radians(coarse_step_deg) / 2, L / n_grid / 2, 2e-3, 300) for c in picked]
    best = max(refined, key=lambda t: t[0])[1]
    if k_fine > k_mid:
        fine = _FourierMatcher(m_mov, m_ref, k_fine)
        best = _refine(fine, best, np.radians(1.0), 0.3, 2e-4, 400)[1]
    return best


def _masked_centred(vol, mask):
    v = vol * mask
    return v - v.mean()


def _masked_correlation(a, b, mask):
    """Pearson correlation of the masked maps over the mask's support."""
    w = mask > 0
    return float(np.corrcoef((a * mask)[w], (b * mask)[w])[0, 1])


def align_maps(
    moving,
    reference,
    pixel_size_A=None,
    *,
    try_mirror=True,
    coarse_step_deg=15.0,
    coarse_resolution_A=None,
    fine_resolution_A=None,
    max_shift_px=None,
    n_candidates=4,
    mask=None,
):
    """Rotate, mirror and shift ``moving`` onto ``reference``.

    The search is global, then local, on Fourier coefficients in a band (module
    docstring):

    1. a coarse SO(3) grid (:func:`cryorecon.geometry.so3_grid.so3_grid`) in a low band,
       with an FFT translation search for every rotation and hand;
    2. Nelder-Mead refinement of rotation and shift of the best few distinct
       candidates in a middle band, then of the winner in a fine band;
    3. ``rotate_volume`` (cubic splines) of the full map with the result.

    Parameters
    ----------
    moving, reference : (L, L, L) array
        Maps in the same box.
    pixel_size_A : float, optional
        Pixel size; needed only when the band limits are given in Angstrom.
    try_mirror : bool
        Search the mirror image as well (default). With False, the hand is kept.
    coarse_step_deg : float
        Spacing of the global rotation grid.
    coarse_resolution_A, fine_resolution_A : float, optional
        Band limits of the global search and of the final refinement. By default the
        global search uses frequencies up to 5 cycles per box (the shape at ~L/5 px
        resolution, which the coarse grid samples well) and the refinement up to
        ``min(L/2 - 2, 20)`` cycles per box. The middle band is twice the coarse one.
    max_shift_px : float, optional
        Largest translation searched (default ``L / 4``).
    n_candidates : int
        Distinct coarse solutions refined locally.
    mask : (L, L, L) array, optional
        Real-space mask applied to both maps (default: a soft sphere of radius L/2 - 3
        with a 3 px edge).

    Returns
    -------
    aligned_map : (L, L, L) float32 array
        ``rotate_volume(moving, info["matrix"], info["shift_px"])``.
    info : dict
        ``rotation`` (3, 3) proper rotation R; ``mirrored`` bool; ``matrix`` ``R`` or
        ``R @ MIRROR``; ``shift_px`` (x, y, z); ``correlation``: real-space Pearson
        correlation of the aligned map with the reference inside the mask.

    Examples
    --------
    >>> from cryorecon.simulation.phantom import chiral_phantom
    >>> from cryorecon.validate.transform import mirror_volume
    >>> ref = chiral_phantom(24, rng=0)
    >>> aligned, info = align_maps(mirror_volume(ref), ref)   # doctest: +SKIP
    >>> info["mirrored"]                                     # doctest: +SKIP
    True
    """
    from ..geometry.so3_grid import so3_grid

    mov, ref = cubic_pair(moving, reference, "align_maps")
    L = mov.shape[0]
    mask = np.asarray(soft_sphere(L, L / 2 - 3.0, 3.0) if mask is None else mask, dtype=np.float64)
    m_mov, m_ref = _masked_centred(mov, mask), _masked_centred(ref, mask)
    bands = _bands(L, pixel_size_A, coarse_resolution_A, fine_resolution_A)
    n_grid = _shift_lattice(bands[0], L)
    rots = np.asarray(so3_grid(coarse_step_deg), dtype=np.float64).reshape(-1, 3, 3)
    scores, shifts = _global_search(_FourierMatcher(m_mov, m_ref, bands[0]), rots, try_mirror, n_grid,
                                    L / 4 if max_shift_px is None else max_shift_px)
    picked = _distinct_candidates(scores, shifts, rots, n_candidates, 2.5 * coarse_step_deg)
    best = _local_search(m_mov, m_ref, picked, bands, coarse_step_deg, n_grid)

    G = best.rotation @ MIRROR if best.mirrored else best.rotation
    aligned = rotate_volume(mov, G, best.shift_px, order=3)
    info = {"rotation": best.rotation, "mirrored": best.mirrored, "matrix": G, "shift_px": np.asarray(best.shift_px),
            "correlation": _masked_correlation(aligned, ref, mask)}
    return aligned, info


__all__ = ["align_maps"]
