"""The working box of a run: its particles on the device, its bands, masks and priors.

Everything both phases of ab initio (and the consensus split) need to know about the
data and the box, in one object: image coefficients and CTFs of any set of particles on
any band, the padded grid's band masks and per-shell regularisers, the real-space
mask, and the carry of a Fourier-space update to the voxels.
"""
from __future__ import annotations

import numpy as np

from ...backend import array_module, get_xp
from ...forward import fourier, masks, projector
from ...io.prefetch import PrefetchLoader
from ...scoring import likelihood
from .settings import AbinitioSettings, band_limit_px


class Workspace:
    """Particles (working box) and the Fourier geometry of their reconstruction.

    Parameters
    ----------
    images : (N, L, L) float32
        Particles, normalised, at the working box.
    pixel_size_A : float
    ctf_params : dict of (N,) arrays, or None
        Keys of :func:`cryorecon.forward.ctf.ctf_values`; None when the data have no CTF.
    settings : AbinitioSettings
        For the padding, the mask radius, non-negativity and the prior's strength.
    xp : module, optional
        numpy or cupy; the backend's by default.
    """

    def __init__(self, images, pixel_size_A, ctf_params, settings: AbinitioSettings, xp=None):
        self.xp = xp or get_xp()
        self.images = np.ascontiguousarray(images, dtype=np.float32)
        self.n, self.L = self.images.shape[0], self.images.shape[-1]
        self.pixel_size_A = float(pixel_size_A)
        self.ctf_params = ctf_params
        self.s = settings
        self.pad = settings.pad
        self.pL = projector.padded_size(self.L, settings.pad)
        self.mask = masks.soft_sphere(self.L, settings.mask_radius_fraction * self.L / 2, max(2.0, self.L / 32), ndim=3)
        self._device_mask = self.xp.asarray(self.mask)
        self._bands = {}
        self._band_masks = {}
        self._widest_band = None
        self._staged = None
        # None: keep the stack on the device when it fits; True: always read it batch by
        # batch, one batch ahead (for a device shared with other work)
        self.stream_particles = None
        # shell of every voxel of the padded transform, for the per-shell priors; the
        # count is taken on the host before the upload, never read back from the device
        shells = fourier.shell_index(self.pL, 3).ravel()
        self.n_pad_shells = int(shells.max()) + 1
        self._pad_shells = self.xp.asarray(shells)

    # ------------------------------------------------------------------ bands
    def band(self, k_px: float) -> likelihood.Band:
        """The band ``|k| < k_px``, clamped below Nyquist (the corners of the box are never fitted)."""
        key = round(min(float(k_px), self.L / 2 - 1), 1)
        if key not in self._bands:
            # every band is a prefix of the widest: the marching band needs no new uploads
            if self._widest_band is None:
                self._widest_band = likelihood.Band.make(self.L, self.L / 2 - 1, self.xp)
            self._bands[key] = self._widest_band.truncated(key)
        return self._bands[key]

    def band_at(self, res_A: float) -> likelihood.Band:
        """The band of resolution ``res_A``."""
        return self.band(band_limit_px(res_A, self.L, self.pixel_size_A))

    def band_mask(self, k_px):
        """Voxels of the padded grid inside the band (radius ``pad * k``), cached per band."""
        if k_px not in self._band_masks:
            r = self._pad_shells.reshape((self.pL,) * 3)
            self._band_masks[k_px] = (r < self.pad * k_px).astype(self.xp.float32)
        return self._band_masks[k_px]

    # -------------------------------------------------------------- particles
    def _stage_particles(self):
        """Put the stack and its CTF parameters on the device once, when they fit.

        A stack that takes at most a quarter of the free device memory (50,000 images of
        128 px are 3.3 GB) stays resident, so an iteration copies nothing from the host;
        a larger one is copied batch by batch. On the CPU this is the stack itself.
        """
        xp = self.xp
        if self._staged is not None:
            return self._staged
        images = self.images
        if xp is not np and not self.stream_particles:
            from ...backend import memory

            if self.images.nbytes <= 0.25 * memory.free_bytes(xp):
                images = xp.asarray(self.images)
        params = None if self.ctf_params is None else {k: xp.asarray(np.asarray(v), dtype=xp.float64) for k, v in self.ctf_params.items()}
        self._staged = (images, params)
        return self._staged

    @property
    def streamed(self) -> bool:
        """Whether full passes read the stack batch by batch (it is not on the device)."""
        return bool(self.stream_particles) or array_module(self._stage_particles()[0]) is not self.xp

    def loader(self, index_sets):
        """Images of each index set in turn, read and copied one set ahead."""
        return PrefetchLoader(lambda i: self.images[i], index_sets, xp=self.xp)

    def batch_data(self, idx, band, idx_device=None, loaded=None):
        """Image coefficients and CTF of particles ``idx`` on ``band``, on the device.

        ``idx_device`` is the same indices already on the device (taken from a
        permutation uploaded once per epoch), so that no index array is copied per batch;
        ``loaded`` is their images, already on the device (from a prefetching loader).
        """
        xp = self.xp
        images, params = self._stage_particles()
        if idx_device is None:
            idx_device = xp.asarray(idx)
        if loaded is not None:
            imgs = loaded
        else:
            imgs = images[idx_device] if array_module(images) is xp else xp.asarray(images[idx])
        y = likelihood.image_coefficients(imgs, band)
        params = None if params is None else {k: v[idx_device] for k, v in params.items()}
        ctf = likelihood.ctf_on_band(band, self.pixel_size_A, params, len(idx), xp)
        return y, ctf

    # ------------------------------------------------------------ regularisers
    def prior_lambda(self, f_pad):
        """Per-voxel Gaussian prior precision from the map's own power per shell.

        ``lambda = prior_strength / (2 tau^2)`` with ``tau^2`` the spherically averaged
        ``|F|^2`` of the current map, as RELION's regularised likelihood does.
        """
        xp = array_module(f_pad)
        shells = self._pad_shells
        total, count = likelihood.shell_sums(xp, shells, (f_pad.real**2 + f_pad.imag**2).ravel(), self.n_pad_shells)
        tau2 = total / xp.maximum(count, 1)
        tau2 = xp.maximum(tau2, 1e-3 * xp.max(tau2))
        lam = self.s.prior_strength / (2 * tau2)
        return lam[shells].reshape(f_pad.shape)

    def flat_lambda(self, curv, fraction: float = 0.01):
        """Tikhonov term for full-data steps: 1% of each shell's mean curvature.

        Relative to each shell, so the regularisation does not depend on the noise
        model's spectral shape: the oracle (noise from raw image power) and the hand-over
        (noise from residuals) then differ only in their poses.
        """
        xp = array_module(curv)
        shells, n = self._pad_shells, self.n_pad_shells
        flat = curv.ravel()
        total, _ = likelihood.shell_sums(xp, shells, flat, n)
        count, _ = likelihood.shell_sums(xp, shells, (flat > 0).astype(flat.dtype), n)
        mean = total / xp.maximum(count, 1)
        floor = xp.max(mean) * 1e-6 + 1e-30
        return (fraction * xp.maximum(mean, floor))[shells].reshape(curv.shape)

    # ------------------------------------------------------------------- maps
    def fourier(self, volume):
        """The padded transform of a map (what the engine scores and the optimizer steps)."""
        return projector.volume_ft(volume, pad=self.pad)

    def to_voxels(self, update_ft):
        """Carry an update of the padded transform to the voxels (the transform's pseudo-inverse).

        ``volume_ft_adjoint(volume_ft(v)) = n_pad v`` with ``n_pad = (pL)^3``, so the
        adjoint over ``n_pad`` is the transform's left inverse.
        """
        return projector.volume_ft_adjoint(update_ft, self.L, pad=self.pad) / float(self.pL) ** 3

    def apply_priors(self, volume):
        """The real-space priors: the spherical mask, and non-negativity when asked."""
        v = volume * self._device_mask
        if self.s.nonnegative:
            v = self.xp.maximum(v, 0)
        return v.astype(self.xp.float32)

    def low_pass(self, volume, res_A: float):
        """``volume`` with every frequency finer than ``res_A`` removed (a sharp cut)."""
        k = band_limit_px(res_A, self.L, self.pixel_size_A)
        xp = array_module(volume)
        keep = fourier.shell_index(self.L, 3, xp=xp) < k
        return fourier.ifft3c(fourier.fft3c(volume) * keep).real.astype(np.float32)
