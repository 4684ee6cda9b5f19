"""Judging a map: FSC and resolution, alignment to a reference (mirror included), pose error.

Runs once per reconstruction, on the host, with numpy and scipy. Conventions follow
RELION (see ``../shared/data/README.md``): ``V[z, y, x]``, centre at index ``L // 2``,
rotation matrices act on ``(x, y, z)`` column vectors, and a map is projected as
``P[y, x] = sum_z V(A^T (x, y, z))``.

Transforming a map
------------------
:func:`rotate_volume` with an orthogonal ``G`` (a rotation, or a rotation times the
mirror ``J = diag(1, 1, -1)``) and a shift ``s`` (pixels, ``(x, y, z)``) returns
``W(x) = V(G^T (x - s))``: the map carried by ``G`` and then moved by ``s``. Projecting
``W`` along ``A`` gives the projection of ``V`` along ``A @ G`` (shifted), so a map rotated
by ``R`` looks, along ``A``, like the original looks along ``A @ R``.

Pose error through a mirror
---------------------------
:func:`align_maps` finds ``G`` and ``s`` with ``rotate_volume(moving, G, s) ~ reference``.
A reconstruction's pose ``A_est`` then corresponds to the reference pose
``A_true = A_est @ G^T`` when ``G`` is a rotation. When ``G = R J`` is improper,
``A_true @ G`` is improper too; a projection cannot tell ``B`` from ``D B`` with
``D = diag(1, 1, -1)`` (it flips only the direction of summation), so the reconstruction
holds the proper ``A_est = D A_true G`` and ``A_true = D A_est G^T``.
"""
from __future__ import annotations

import csv

import numpy as np
from scipy import fft as sp_fft
from scipy import ndimage, optimize
from scipy.spatial.transform import Rotation

from ..errors import InputError
from ..io.atomic import atomic_open, atomic_write

MIRROR = np.diag([1.0, 1.0, -1.0])  # J: z -> -z about the centre, in (x, y, z)


# --------------------------------------------------------------------------- FSC

def _cubic_pair(map_a, map_b, what="maps"):
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
        Real-space mask multiplied into both maps first (e.g. :func:`soft_spherical_mask`).

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
    a, b = _cubic_pair(map_a, map_b, "fsc")
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


def soft_spherical_mask(L, radius_px=None, *, radius_A=None, pixel_size_A=None, width_px=3.0):
    """Soft-edged spherical mask of an L^3 box, centred at ``L // 2`` (host numpy).

    Give the radius either in pixels or, with ``pixel_size_A``, in Angstrom. The default
    radius is ``L / 2 - width_px``, so the soft edge ends inside the box. The shape is
    :func:`cryorecon.forward.fourier.soft_sphere_mask`'s.
    """
    from ..forward import fourier

    if radius_A is not None:
        if not pixel_size_A:
            raise InputError("mask radius in Angstrom needs the pixel size (--pixel-size)")
        radius_px = radius_A / pixel_size_A
    if radius_px is None:
        radius_px = L / 2 - width_px
    return np.asarray(fourier.soft_sphere_mask(L, radius_px, width_px, 3, np), dtype=np.float32)


# ------------------------------------------------------------ moving maps around

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


# ------------------------------------------------------------------- alignment

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


_CORNERS = [(dz, dy, dx) for dz in (0, 1) for dy in (0, 1) for dx in (0, 1)]


def _trilinear(grid, coords_zyx):
    """Trilinear interpolation of a complex grid at float index coordinates (..., 3).

    The eight corners are gathered in one fancy-indexing call: on a small grid that
    sits in cache this is several times quicker than eight separate passes.
    """
    shape = grid.shape
    c = np.asarray(coords_zyx, dtype=np.float32).reshape(-1, 3)
    base = np.floor(c)
    f = c - base
    base = base.astype(np.int64)
    i0 = (base[:, 0] * shape[1] + base[:, 1]) * shape[2] + base[:, 2]
    offsets = np.array([(dz * shape[1] + dy) * shape[2] + dx for dz, dy, dx in _CORNERS])
    vals = grid.ravel()[i0[:, None] + offsets]
    wz = np.stack([1 - f[:, 0], f[:, 0]], 1)
    wy = np.stack([1 - f[:, 1], f[:, 1]], 1)
    wx = np.stack([1 - f[:, 2], f[:, 2]], 1)
    w = (wz[:, :, None, None] * wy[:, None, :, None] * wx[:, None, None, :]).reshape(-1, 8)
    return np.einsum("nc,nc->n", vals, w).reshape(np.shape(coords_zyx)[:-1])


def _half_shell_k(L, kmax):
    """Integer frequencies (x, y, z), one of each +-k pair, 0 < |k| <= kmax."""
    r = int(np.floor(kmax))
    g = np.arange(-r, r + 1)
    kz, ky, kx = np.meshgrid(g, g, g, indexing="ij")
    k = np.stack([kx.ravel(), ky.ravel(), kz.ravel()], axis=1)
    n2 = (k**2).sum(1)
    first = (k[:, 0] > 0) | ((k[:, 0] == 0) & (k[:, 1] > 0)) | ((k[:, 0] == 0) & (k[:, 1] == 0) & (k[:, 2] > 0))
    return k[first & (n2 <= kmax**2) & (n2 > 0)].astype(np.float64)


class _FourierMatcher:
    """Correlation of the reference with the moved map, in a band of Fourier space.

    By Parseval, the real part of ``sum_k F_ref(k) conj(F_W(k))`` over a band is the
    correlation of the band-passed maps, and ``F_W(k) = F_mov(G^T k) exp(-2 pi i k.s / L)``
    for ``W = rotate_volume(mov, G, s)``, so rotations cost an interpolation of the padded
    FT and shifts a phase: no real-space resampling inside the search.
    """

    def __init__(self, moving, reference, kmax, pad=2):
        L = moving.shape[0]
        self.L, self.pad = L, pad
        self.k = _half_shell_k(L, kmax)
        self.Fm, self.half = _centred_ft_padded(moving, pad, kmax)
        Fr, rhalf = _centred_ft_padded(reference, 1, kmax)
        idx = (self.k[:, ::-1] + rhalf).astype(np.int64)
        self.Fr = Fr[idx[:, 0], idx[:, 1], idx[:, 2]]
        self.norm_r = np.sqrt(np.sum(np.abs(self.Fr) ** 2))

    def sample(self, G):
        """``F_mov(G^T k)`` for a stack of matrices G (n, 3, 3) -> (n, n_k)."""
        q = np.matmul(self.k[None], G)  # row k @ G is (G^T k)^T
        return _trilinear(self.Fm, q[..., ::-1] * self.pad + self.half)

    def correlation(self, G, shift_px):
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


def _prepare(vol, mask):
    v = np.asarray(vol, dtype=np.float64) * mask
    return v - v.mean()


def _refine(matcher, R0, mirrored, shift0, step_rad, shift_step_px, xatol, maxiter):
    """Nelder-Mead over a rotation vector (left-multiplying ``R0``) and the shift."""
    J = MIRROR if mirrored else np.eye(3)

    def cost(p):
        R = Rotation.from_rotvec(p[:3]).as_matrix() @ R0
        return -matcher.correlation(R @ J, p[3:])

    x0 = np.concatenate([np.zeros(3), shift0])
    simplex = np.vstack([x0] + [x0 + np.eye(6)[i] * (step_rad if i < 3 else shift_step_px) for i in range(6)])
    res = optimize.minimize(
        cost, x0, method="Nelder-Mead",
        options={"initial_simplex": simplex, "xatol": xatol, "fatol": 1e-6, "maxiter": maxiter},
    )
    return -res.fun, Rotation.from_rotvec(res.x[:3]).as_matrix() @ R0, res.x[3:]


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

    An ab initio map can come out with either hand, so both ``moving`` and its mirror
    image are searched. The search is global, then local, and works on Fourier
    coefficients in a band (the correlation of band-passed maps, by Parseval):

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
        Real-space mask applied to both maps (default: a soft sphere of radius L/2 - 3).

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
    >>> ref = chiral_phantom(24, rng=0)
    >>> moving = mirror_volume(ref)
    >>> aligned, info = align_maps(moving, ref)   # doctest: +SKIP
    >>> info["mirrored"]                         # doctest: +SKIP
    True
    """
    from ..geometry.so3_grid import so3_grid

    mov, ref = _cubic_pair(moving, reference, "align_maps")
    L = mov.shape[0]
    if mask is None:
        mask = soft_spherical_mask(L)
    mask = np.asarray(mask, dtype=np.float64)
    m_mov, m_ref = _prepare(mov, mask), _prepare(ref, mask)
    if max_shift_px is None:
        max_shift_px = L / 4

    def band(res_A, default_cycles):
        if res_A is None:
            return min(default_cycles, L / 2 - 2)
        if not pixel_size_A:
            raise InputError("align: a resolution in Angstrom needs the pixel size (--pixel-size)")
        return min(L * pixel_size_A / res_A, L / 2 - 2)

    k_coarse = band(coarse_resolution_A, 5.0)
    k_fine = max(band(fine_resolution_A, 20.0), k_coarse)
    k_mid = min(2 * k_coarse, k_fine)

    coarse = _FourierMatcher(m_mov, m_ref, k_coarse)
    # Shift lattice ~ 1/3 of the shortest wavelength in the band, so the peak is not missed.
    n_grid = int(np.clip(np.ceil(3 * k_coarse), 8, L))
    n_grid += n_grid % 2
    rots = np.asarray(so3_grid(coarse_step_deg), dtype=np.float64).reshape(-1, 3, 3)
    hands = [False, True] if try_mirror else [False]
    scores, shifts = [], []
    for mirrored in hands:
        mats = rots @ MIRROR if mirrored else rots
        for start in range(0, len(mats), 256):
            cc, sh = coarse.best_shifts(mats[start:start + 256], n_grid, max_shift_px)
            scores.append(cc)
            shifts.append(sh)
    scores, shifts = np.concatenate(scores), np.concatenate(shifts)
    order = np.argsort(-scores)

    # Distinct candidates only: grid neighbours of one peak are the same solution.
    picked = []
    for n in order:
        mirrored, R = bool(n >= len(rots)), rots[n % len(rots)]
        if not any(m2 == mirrored and _angle_deg(R, R2) < 2.5 * coarse_step_deg for m2, R2, _ in picked):
            picked.append((mirrored, R, shifts[n]))
        if len(picked) == n_candidates:
            break

    step = np.radians(coarse_step_deg) / 2
    mid = _FourierMatcher(m_mov, m_ref, k_mid)
    refined = [_refine(mid, R, m, s, step, L / n_grid / 2, 2e-3, 300) for m, R, s in picked]
    _, R, shift = max(refined, key=lambda t: t[0])
    mirrored = picked[int(np.argmax([t[0] for t in refined]))][0]
    if k_fine > k_mid:
        fine = _FourierMatcher(m_mov, m_ref, k_fine)
        _, R, shift = _refine(fine, R, mirrored, shift, np.radians(1.0), 0.3, 2e-4, 400)

    G = R @ MIRROR if mirrored else R
    aligned = rotate_volume(mov, G, shift, order=3)
    w = mask > 0
    corr = float(np.corrcoef((aligned * mask)[w], (ref * mask)[w])[0, 1])
    info = {"rotation": R, "mirrored": mirrored, "matrix": G, "shift_px": np.asarray(shift), "correlation": corr}
    return aligned, info


def _angle_deg(A, B):
    return float(np.degrees(np.arccos(np.clip((np.trace(A @ B.T) - 1) / 2, -1.0, 1.0))))


# ------------------------------------------------------------------- pose error

def map_poses(est_rotations, alignment_info):
    """Carry poses of the moving map into the reference frame found by :func:`align_maps`.

    ``A_true = A_est @ G^T`` for a rotation ``G``; ``D @ A_est @ G^T`` with
    ``D = diag(1, 1, -1)`` when ``G`` includes the mirror (module docstring). The result is
    always a proper rotation.
    """
    A = np.asarray(est_rotations, dtype=np.float64)
    G = np.asarray(alignment_info["matrix"], dtype=np.float64)
    out = A @ G.T
    if np.linalg.det(G) < 0:
        out = MIRROR @ out
    return out


def pose_error_deg(est_rotations, true_rotations, alignment_info):
    """Median angular distance (degrees) between estimated and true poses after alignment.

    Parameters
    ----------
    est_rotations : (N, 3, 3) array
        RELION pose matrices of the reconstruction (the ``moving`` map of
        :func:`align_maps`).
    true_rotations : (N, 3, 3) array
        True RELION pose matrices (the frame of ``reference``).
    alignment_info : dict
        The ``info`` returned by :func:`align_maps` (uses ``matrix``).
    """
    from ..geometry.rotations import angular_distance_deg

    mapped = map_poses(est_rotations, alignment_info)
    return float(np.median(angular_distance_deg(mapped, np.asarray(true_rotations, dtype=np.float64))))


# ------------------------------------------------------------------- reporting

def write_fsc_csv(path, shell_index_px, curves, *, box, pixel_size_A=None):
    """Write FSC curves as CSV: shell, frequency (1/A), resolution (A), one column per curve.

    ``curves`` is an (n,) array or a ``{label: (n,) array}`` dict over the same shells.
    Without ``pixel_size_A`` the frequency and resolution columns are in pixels.
    """
    if not isinstance(curves, dict):
        curves = {"fsc": curves}
    shells = np.asarray(shell_index_px, dtype=np.float64)
    px = pixel_size_A or 1.0
    freq = shells / (box * px)
    with np.errstate(divide="ignore"):
        res = np.where(shells > 0, 1.0 / np.where(freq > 0, freq, 1), np.inf)
    unit = "A" if pixel_size_A else "px"
    header = ["shell", f"frequency_1/{unit}", f"resolution_{unit}", *curves]
    with atomic_open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        for i in range(len(shells)):
            w.writerow([int(shells[i]), f"{freq[i]:.6f}", f"{res[i]:.4f}", *(f"{float(c[i]):.6f}" for c in curves.values())])
    return path


def plot_fsc(path, curves, thresholds=(0.143, 0.5), *, box=None, pixel_size_A=None, title=None):
    """Plot FSC curves to a PNG, written atomically.

    Parameters
    ----------
    path : str or Path
        Output PNG.
    curves : dict
        ``{label: (shell_index_px, fsc)}``.
    thresholds : tuple of float
        Horizontal lines, each labelled with every curve's resolution when the pixel size
        is known.
    box, pixel_size_A : optional
        With both, the x axis is spatial frequency (1/A) and resolutions are reported.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    in_A = box is not None and pixel_size_A is not None
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, (shells, values) in curves.items():
        shells = np.asarray(shells, dtype=np.float64)
        x = shells / (box * pixel_size_A) if in_A else shells
        text = label
        if in_A:
            text += " (" + ", ".join(f"{t:g}: {fsc_resolution_A(values, box, pixel_size_A, t):.1f} A" for t in thresholds) + ")"
        ax.plot(x, values, label=text)
    for t in thresholds:
        ax.axhline(t, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("spatial frequency (1/A)" if in_A else "shell (px)")
    ax.set_ylabel("FSC")
    ax.set_ylim(-0.1, 1.05)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    try:
        with atomic_write(path) as tmp:
            fig.savefig(tmp, dpi=120, format="png")
    finally:
        plt.close(fig)
    return path
