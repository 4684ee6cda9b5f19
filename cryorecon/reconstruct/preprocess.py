"""Particle preprocessing: normalise on the background, downsample, whiten, invert.

Each step is a function of an image batch so that a stack larger than memory streams
through :func:`prepare_particles` batch by batch.
"""
from __future__ import annotations

import numpy as np

from ..errors import InputError
from ..forward import fourier, masks


def _background(L: int, particle_diameter_px: float) -> np.ndarray:
    """Boolean (L, L): the pixels outside the particle's circle, ``r > diameter / 2``."""
    return ~masks.disc(L, particle_diameter_px / 2)


def normalise_background(images: np.ndarray, particle_diameter_px: float) -> np.ndarray:
    """Zero mean and unit standard deviation of each image's background (RELION's rule)."""
    bg = _background(images.shape[-1], particle_diameter_px)
    if bg.sum() < 16:
        raise InputError(
            f"particle diameter {particle_diameter_px:.1f} px leaves no background in a {images.shape[-1]} px box: "
            "pass a smaller --particle-diameter-A"
        )
    values = images[:, bg]
    mean = values.mean(axis=1)[:, None, None]
    std = values.std(axis=1)[:, None, None]
    return ((images - mean) / np.where(std > 0, std, 1.0)).astype(np.float32)


def estimate_snr(images: np.ndarray, max_images: int = 2000) -> float:
    """Signal-to-noise ratio of a particle stack, from its own pixels.

    The power inside the disc ``r < L/2`` over the power of the corners outside it,
    minus one: the corners hold no particle, so their variance is the noise variance.
    This is the SNR of the simulations (signal power of the CTF-modulated image inside
    that disc over the noise variance); on the benchmark's ribosome it reads 0.100 at
    0.1 and 0.020 at 0.02. A particle that fills the corners makes it read low.
    """
    L = images.shape[-1]
    inside = masks.disc(L, L / 2, inclusive=False)  # the simulator's SNR disc
    corners = ~inside
    sample = np.asarray(images[:max_images], dtype=np.float64)
    # each image's offset is its corners' mean; that estimate's own error (variance
    # sigma^2 / n) adds to every centred pixel inside and is taken from the corners
    n = int(corners.sum())
    centred = sample - sample[:, corners].mean(axis=1)[:, None, None]
    noise = np.mean(centred[:, corners] ** 2) / (1 - 1 / n)
    if not noise > 0:
        return float("inf")
    return max(float(np.mean(centred[:, inside] ** 2) / noise) - (1 + 1 / n), 0.0)


def noise_spectrum(images: np.ndarray, particle_diameter_px: float) -> np.ndarray:
    """Radially averaged power spectrum of the background (particle masked out), per shell."""
    L = images.shape[-1]
    bg = _background(L, particle_diameter_px).astype(np.float32)
    power = np.mean(np.abs(fourier.fft2c(images * bg)) ** 2, axis=0) / max(bg.mean(), 1e-6)
    shells = fourier.shell_index(L, 2)
    total = np.bincount(shells.ravel(), weights=power.ravel())
    count = np.bincount(shells.ravel())
    return total / np.maximum(count, 1)


def whiten(images: np.ndarray, spectrum: np.ndarray) -> np.ndarray:
    """Divide each Fourier shell by the noise amplitude, making coloured noise white."""
    L = images.shape[-1]
    shells = fourier.shell_index(L, 2)
    amp = np.sqrt(np.maximum(spectrum, 1e-12 * spectrum.max()))
    amp = amp / np.mean(amp[: L // 2])
    filt = 1.0 / amp[np.minimum(shells, spectrum.size - 1)]
    return fourier.ifft2c(fourier.fft2c(images) * filt).real.astype(np.float32)


def phase_flip(images: np.ndarray, ctf_params: dict, pixel_size_A: float, batch_size: int = 1024) -> np.ndarray:
    """Multiply each image's Fourier transform by the sign of its CTF.

    Afterwards the data follow ``|CTF| * F`` instead of ``CTF * F``: the sign flips are
    gone, the amplitude modulation (and the zeros) stay.

    Parameters
    ----------
    images : (N, L, L) array
    ctf_params : dict of (N,) arrays
        As :meth:`cryorecon.io.particles.ParticleStack.ctf_params` returns; the defocus
        is in Angstrom, so ``pixel_size_A`` must be the images' own (after any crop).
    pixel_size_A : float
    """
    from ..forward.ctf import ctf_image

    out = np.empty(images.shape, dtype=np.float32)
    L = images.shape[-1]
    for start in range(0, len(images), batch_size):
        sl = slice(start, min(start + batch_size, len(images)))
        params = {k: np.asarray(v)[sl] for k, v in ctf_params.items()}
        sign = np.sign(ctf_image(L, pixel_size_A, **params))
        out[sl] = fourier.ifft2c(fourier.fft2c(images[sl]) * sign).real
    return out


def prepare_particles(
    stack,
    working_box: int,
    particle_diameter_A: float | None = None,
    invert_contrast: bool = False,
    whiten_noise: bool = False,
    batch_size: int = 1024,
    progress=None,
) -> tuple[np.ndarray, float]:
    """Read, normalise and Fourier-crop every particle of ``stack`` to ``working_box``.

    Parameters
    ----------
    stack : ParticleStack
    working_box : int
        Box after downsampling (even, at most the original box).
    particle_diameter_A : float, optional
        Diameter of the particle; the background outside it sets each image's
        normalisation. Default: 80% of the box.
    invert_contrast : bool
        Multiply by -1 (for data where the particle is dark).
    whiten_noise : bool
        Estimate the background's power spectrum from the first batch and whiten.

    Returns
    -------
    images : (N, working_box, working_box) float32
    pixel_size_A : float
        The working pixel size.
    """
    L = stack.box
    if working_box > L or working_box % 2:
        raise InputError(f"working box {working_box} must be even and at most the particle box {L}")
    diameter_px = 0.8 * L if particle_diameter_A is None else particle_diameter_A / stack.pixel_size_A
    if diameter_px >= L * np.sqrt(2):
        raise InputError(f"--particle-diameter-A {particle_diameter_A} is larger than the box ({L * stack.pixel_size_A:.0f} A)")
    out = np.empty((stack.n, working_box, working_box), dtype=np.float32)
    spectrum = None
    for start in range(0, stack.n, batch_size):
        idx = np.arange(start, min(start + batch_size, stack.n))
        imgs = normalise_background(stack.images(idx), diameter_px)
        if invert_contrast:
            imgs = -imgs
        if whiten_noise:
            if spectrum is None:
                spectrum = noise_spectrum(imgs, diameter_px)
            imgs = whiten(imgs, spectrum)
        out[idx] = fourier.fourier_crop(imgs, working_box, ndim=2) if working_box < L else imgs
        if progress is not None:
            progress.update(len(idx))
    return out, stack.pixel_size_A * L / working_box
