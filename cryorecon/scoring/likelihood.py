"""The Gaussian likelihood of particle images, its noise model, and its gradient.

An image ``Y`` seen at rotation ``A`` and origin offset ``o`` is modelled, per Fourier
coefficient ``k`` of one Hermitian half-plane of the current band, as

    Y(k) = C(k) S_o(k) F(A^T k) + n(k),   n(k) ~ CN(0, sigma^2(|k|))

so that ``-log p(Y | A, o, F) = sum_k w_k |Y(k) - C S_o P_A(k)|^2 + const`` with
``w_k = m_k / (2 sigma_k^2)`` (``m_k`` the Hermitian multiplicity). Poses are
marginalised: the negative log-likelihood of an image is
``-log sum_{A,o} p(Y | A, o, F) p(A) p(o)``.

The gradient with respect to a slice value ``P`` (packed as ``d/dRe + i d/dIm``) is
``2 w C (C P - conj(S) Y)``; posterior-weighted and backprojected through the exact
adjoint of slice extraction it is the gradient with respect to the padded transform, and
:func:`cryorecon.forward.projector.volume_ft_adjoint` carries it to the voxels.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..forward import ctf as ctf_model
from ..forward import fourier, projector
from . import pose_search
from ..backend import array_module


@dataclass
class Band:
    """Half-plane Fourier coordinates with ``|k| < k_max_px``, sorted by radius.

    Sorting by radius makes every lower band a prefix (:meth:`prefix`), so a coarse
    search can use the first coefficients of the same arrays.
    """

    L: int
    k_max_px: float
    coords: object  # (M, 2) int (kx, ky), on the device
    multiplicity: object  # (M,) float32
    shell: object  # (M,) int, round(|k|)
    radius: np.ndarray  # (M,) float64, host copy for prefix look-ups

    @classmethod
    def make(cls, L: int, k_max_px: float, xp=np) -> "Band":
        coords, mult = fourier.band_coords(L, k_max_px, half=True)
        radius = np.hypot(coords[:, 0], coords[:, 1])
        order = np.argsort(radius, kind="stable")
        coords, mult, radius = coords[order], mult[order], radius[order]
        shell = np.rint(radius).astype(np.int64)
        return cls(L, float(k_max_px), xp.asarray(coords), xp.asarray(mult), xp.asarray(shell), radius)

    @property
    def size(self) -> int:
        return int(self.radius.size)

    def prefix(self, k_px: float) -> int:
        """Number of coefficients with ``|k| < k_px`` (they come first)."""
        return int(np.searchsorted(self.radius, k_px, side="left"))

    def truncated(self, k_px: float) -> "Band":
        """The band ``|k| < k_px`` cut from this one: the same as ``Band.make(L, k_px)``.

        Its device arrays are views of this band's prefix, so a schedule that marches
        the band limit can take every band from the widest one without copying new
        coordinates from the host each time the limit moves.
        """
        if k_px > self.k_max_px:
            raise ValueError(f"k_px {k_px} is beyond this band's limit {self.k_max_px}")
        n = self.prefix(k_px)
        return Band(self.L, float(k_px), self.coords[:n], self.multiplicity[:n], self.shell[:n], self.radius[:n])


class NoiseModel:
    """Per-shell noise variance ``sigma^2(|k|)`` of image Fourier coefficients.

    Estimated first from the images themselves (signal plus noise, which errs on the
    broad side and so keeps early posteriors soft), then updated from the residuals at
    the best poses as a running average.
    """

    def __init__(self, sigma2):
        self.sigma2 = sigma2

    @classmethod
    def from_images(cls, images_ft, n_shells: int) -> "NoiseModel":
        """Average ``|Y(k)|^2`` per shell over a stack of centred transforms."""
        xp = array_module(images_ft)
        L = images_ft.shape[-1]
        shells = xp.asarray(fourier.shell_index(L, 2)).ravel()
        power = xp.mean(xp.abs(images_ft.reshape(images_ft.shape[0], -1)) ** 2, axis=0)
        total, count = shell_sums(xp, shells, power, n_shells)
        return cls(_fill_empty(xp, total / xp.maximum(count, 1), count))

    def weights(self, band: Band):
        """``w_k = m_k / (2 sigma_k^2)`` on the band's coefficients."""
        return band.multiplicity / (2 * self.sigma2[band.shell])

    def update(self, band: Band, residual_power, rate: float = 0.2):
        """Blend in the mean residual power per shell (``(M,)`` averaged over images).

        Only shells inside the band change: outside it there is no fresh evidence.
        """
        xp = array_module(residual_power)
        n_shells = self.sigma2.shape[0]
        total, count = shell_sums(xp, band.shell, residual_power, n_shells)
        seen = count > 0
        fresh = total / xp.maximum(count, 1)
        self.sigma2 = xp.where(seen, (1 - rate) * self.sigma2 + rate * fresh, self.sigma2).astype(self.sigma2.dtype)

    def state(self) -> dict:
        return {"sigma2": self.sigma2}


def shell_sums(xp, shells, values, n_shells):
    """Sum of ``values`` and number of entries per shell index.

    Parameters
    ----------
    xp : module
        numpy or cupy.
    shells : (N,) int
        Shell index of each entry; indices outside ``[0, n_shells)`` are dropped.
    values : (N,) real
    n_shells : int

    Returns
    -------
    total, count : (n_shells,) float64
    """
    # Entries outside the range go to one overflow bin that is cut off at the end:
    # a boolean mask, or a bincount sized by the largest index, would need the data's
    # values on the host (a device sync on cupy).
    bins = xp.where((shells >= 0) & (shells < n_shells), shells, n_shells)
    if xp is np:
        total = np.bincount(bins, weights=values, minlength=n_shells + 1)[:n_shells].astype(np.float64)
        count = np.bincount(bins, minlength=n_shells + 1)[:n_shells].astype(np.float64)
    else:
        total = xp.zeros(n_shells + 1, dtype=xp.float64)
        count = xp.zeros(n_shells + 1, dtype=xp.float64)
        xp.add.at(total, bins, values.astype(xp.float64))
        # a 0-d device one, broadcast: a Python scalar may be staged through the host by
        # ufunc.at, and an array of ones as long as ``values`` costs memory for nothing
        xp.add.at(count, bins, xp.ones((), dtype=xp.float64))
        total, count = total[:n_shells], count[:n_shells]
    return total, count


def _fill_empty(xp, sigma2, count):
    """Shells without samples (corners) borrow the last populated shell's variance."""
    sigma2 = sigma2.astype(xp.float32)
    populated = count > 0
    # the last populated shell's index stays on the device: no mask, no host value
    last = xp.max(xp.where(populated, xp.arange(sigma2.shape[0]), -1))
    return xp.where(populated, sigma2, xp.take(sigma2, last)).astype(xp.float32)


def image_coefficients(images, band: Band):
    """Centred transforms of real images (B, L, L) gathered on the band: (B, M) complex."""
    return fourier.gather_coeffs(fourier.fft2c(images), band.coords)


def ctf_on_band(band: Band, pixel_size_A: float, ctf_params: dict | None, n_images: int, xp, dtype=np.float32):
    """The CTF of each image on the band's coefficients, (B, M); ones without CTF."""
    if ctf_params is None:
        return xp.ones((n_images, band.size), dtype=dtype)
    scale = 1.0 / (band.L * pixel_size_A)
    kx = band.coords[:, 0].astype(xp.float64) * scale
    ky = band.coords[:, 1].astype(xp.float64) * scale
    params = {key: xp.asarray(value, dtype=xp.float64) for key, value in ctf_params.items()}
    return ctf_model.ctf_values(kx, ky, **params).astype(dtype)


def slice_gradient(y, ctf, w, phases, slices, p):
    """Posterior-weighted gradient and curvature of the error with respect to slices.

    One row per (image, rotation) pair of non-negligible weight, so no work is spent on
    poses the posterior has dropped.

    Parameters
    ----------
    y, ctf : (Q, M)
        Image coefficients and CTF of the image of each row.
    w : (M,)
        Likelihood weights ``m_k / (2 sigma_k^2)``.
    phases : (T, M) or (Q, T, M) complex
        Shift phases, shared or per row.
    slices : (Q, M) complex
        Slice ``P_r`` of each row's rotation.
    p : (Q, T) real
        Posterior weight of each shift at that rotation.

    Returns
    -------
    grad : (Q, M) complex
        ``sum_t p 2 w C (C P - conj(S_t) Y)``.
    curvature : (Q, M) real
        ``sum_t p 2 w C^2``: the diagonal of the Hessian in each of Re and Im.
    """
    xp = array_module(y)
    a = xp.sum(p, axis=1)[:, None]
    conj_phases = xp.conj(phases)
    pc = p.astype(conj_phases.dtype)
    if conj_phases.ndim == 2:
        ybar = pc @ conj_phases
    else:
        ybar = xp.matmul(pc[:, None, :], conj_phases)[:, 0]
    wc = 2 * w * ctf
    grad = wc * (ctf * a * slices - ybar * y)
    return grad, wc * ctf * a


def marginal_nll_and_grad(volume, images, pixel_size_A, ctf_params, rotations, shifts_px, noise: NoiseModel, band: Band, pad: int = 2, log_prior_shift=None):
    """Marginal negative log-likelihood of ``images`` and its gradient in the voxels.

    The marginal runs over every pose in ``rotations x shifts_px`` with a uniform
    rotation prior; it is exact (no poses dropped), which makes it the reference the
    mini-batch engine's shortcuts are tested against.

    Parameters
    ----------
    volume : (L, L, L) real
    images : (B, L, L) real
    pixel_size_A : float
    ctf_params : dict or None
        Per-image CTF parameters for :func:`cryorecon.forward.ctf.ctf_values`.
    rotations : (R, 3, 3)
    shifts_px : (T, 2)
        Origin offsets ``(ox, oy)`` in pixels (RELION convention).
    noise : NoiseModel
    band : Band
    pad : int
    log_prior_shift : (T,) optional

    Returns
    -------
    nll : float
        ``sum_i -log sum_{r,t} p(Y_i | r, t) p(r) p(t)``.
    grad : (L, L, L) real
    """
    xp = array_module(volume)
    L = volume.shape[-1]
    f_pad = projector.volume_ft(volume, pad=pad)
    y = image_coefficients(images, band)
    ctf = ctf_on_band(band, pixel_size_A, ctf_params, images.shape[0], xp, dtype=volume.dtype)
    w = noise.weights(band).astype(volume.dtype)
    phases = fourier.shift_phase(band.coords, L, xp.asarray(shifts_px), dtype=y.dtype)
    slices = projector.extract(f_pad, xp.asarray(rotations), band.coords, pad=pad)
    terms = pose_search.batch_terms(y, ctf, w, phases)
    err = pose_search.errors_shared(terms, slices)
    n_rot = rotations.shape[0]
    log_prior = -np.log(n_rot) + (0.0 if log_prior_shift is None else log_prior_shift[None, :, None])
    score = err - log_prior
    b = images.shape[0]
    nll = -xp.sum(pose_search.logsumexp_neg(score.reshape(b, -1)))
    p = pose_search.posterior(score.reshape(b, -1), min_weight=0.0).reshape(score.shape)
    rows = lambda a: xp.repeat(a, n_rot, axis=0)  # noqa: E731  one row per (image, rotation)
    p_rows = xp.swapaxes(p, 1, 2).reshape(b * n_rot, -1)
    slice_rows = xp.broadcast_to(slices, (b,) + slices.shape).reshape(b * n_rot, -1)
    grad_slices, _ = slice_gradient(rows(y), rows(ctf), w, phases, slice_rows, p_rows)
    rot = xp.broadcast_to(xp.asarray(rotations), (b,) + tuple(rotations.shape)).reshape(-1, 3, 3)
    grad_f = projector.backproject(grad_slices, rot, band.coords, f_pad.shape, pad=pad)
    return float(nll), projector.volume_ft_adjoint(grad_f, L, pad=pad)
