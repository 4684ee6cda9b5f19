"""Preprocessing: background normalisation, whitening, phase flip, downsampling."""
from __future__ import annotations

import numpy as np
import pytest

from cryorecon.forward import fourier
from cryorecon.forward.ctf import ctf_image
from cryorecon.errors import InputError
from cryorecon.io.particles import ParticleStack
from cryorecon.reconstruct.preprocess import (
    estimate_snr,
    noise_spectrum,
    normalise_background,
    phase_flip,
    prepare_particles,
    whiten,
)


def test_normalise_background_uses_only_the_background():
    rng = np.random.default_rng(0)
    L = 32
    imgs = rng.normal(5.0, 3.0, size=(6, L, L)).astype(np.float32)
    y, x = np.indices((L, L)) - L // 2
    inside = x * x + y * y <= 10 ** 2  # the particle's closed disc of diameter 20 px
    imgs[:, inside] += 100.0  # a bright particle must not change the normalisation
    out = normalise_background(imgs, 20)
    bg = ~inside
    np.testing.assert_allclose(out[:, bg].mean(axis=1), 0, atol=1e-5)
    np.testing.assert_allclose(out[:, bg].std(axis=1), 1, atol=1e-5)
    assert out[:, inside].mean() > 20
    with pytest.raises(InputError, match="particle diameter"):
        normalise_background(imgs, 2 * L)


def test_whitening_flattens_coloured_noise():
    rng = np.random.default_rng(1)
    L, n = 48, 300
    white = rng.normal(size=(n, L, L)).astype(np.float32)
    shells = fourier.shell_index(L, 2)
    colour = 1.0 / (1.0 + (shells / 6.0) ** 2)  # strongly low-pass noise
    coloured = fourier.ifft2c(fourier.fft2c(white) * colour).real.astype(np.float32)
    spec = noise_spectrum(coloured, 0.0)
    assert spec[2] / spec[20] > 50
    flat = noise_spectrum(whiten(coloured, spec), 0.0)
    ratio = flat[1 : L // 2] / np.median(flat[1 : L // 2])
    assert np.all(np.abs(ratio - 1) < 0.25)


def test_phase_flip_gives_abs_ctf():
    rng = np.random.default_rng(2)
    L, px = 32, 3.0
    # band-limited below Nyquist: the Nyquist row has no Hermitian partner on an even grid
    clean = fourier.ifft2c(fourier.fft2c(rng.normal(size=(4, L, L))) * (fourier.shell_index(L, 2) < L // 2 - 1)).real
    params = {"defocus_u_A": np.array([8e3, 1.2e4, 1.6e4, 2e4]), "defocus_v_A": np.array([8e3, 1.1e4, 1.6e4, 2.1e4]),
              "defocus_angle_deg": np.array([0.0, 30.0, 0.0, 60.0]), "voltage_kV": np.full(4, 300.0),
              "cs_mm": np.full(4, 2.7), "amplitude_contrast": np.full(4, 0.1)}
    ctf = ctf_image(L, px, **params)
    observed = fourier.ifft2c(fourier.fft2c(clean) * ctf).real.astype(np.float32)
    expected = fourier.ifft2c(fourier.fft2c(clean) * np.abs(ctf)).real
    got = phase_flip(observed, params, px, batch_size=3)
    np.testing.assert_allclose(got, expected, atol=1e-4 * np.abs(expected).max())
    assert np.corrcoef(observed.ravel(), expected.ravel())[0, 1] < 0.9


@pytest.fixture(scope="module")
def small_stack(tmp_path_factory):
    from cryorecon.io.mrc import write_map
    from cryorecon.simulation.phantom import chiral_phantom
    from cryorecon.simulation.simulate import simulate_dataset

    d = tmp_path_factory.mktemp("pre")
    write_map(d / "phantom.mrc", chiral_phantom(32, rng=np.random.default_rng(0)), 3.0)
    simulate_dataset(d / "phantom.mrc", d, n=50, snr=1.0, seed=1)
    return ParticleStack.from_star(d / "particles.star")


def test_prepare_particles_downsamples(small_stack):
    images, px = prepare_particles(small_stack, 24, particle_diameter_A=60.0, batch_size=16)
    assert images.shape == (50, 24, 24) and images.dtype == np.float32
    assert px == pytest.approx(3.0 * 32 / 24)
    full = normalise_background(small_stack.images(np.arange(50)), 20.0)
    np.testing.assert_allclose(images, fourier.fourier_crop(full, 24, ndim=2), atol=1e-4)
    inverted, _ = prepare_particles(small_stack, 32, particle_diameter_A=60.0, invert_contrast=True)
    np.testing.assert_allclose(inverted, -full, atol=1e-5)
    for bad in (33, 40):
        with pytest.raises(InputError, match="working box"):
            prepare_particles(small_stack, bad)


@pytest.mark.parametrize("snr", [0.5, 0.1, 0.02])
def test_estimate_snr_reads_the_simulated_snr(snr):
    """The simulator's SNR (signal power inside the disc r < L/2 over the noise variance)."""
    from cryorecon.geometry.rotations import random_rotations
    from cryorecon.simulation.phantom import chiral_phantom
    from cryorecon.simulation.simulate import DEFAULT_OPTICS, draw_defocus_A, simulate_images

    rng = np.random.default_rng(4)
    L, n = 32, 1500
    volume = chiral_phantom(L, rng=0)
    defocus = draw_defocus_A(n, rng)
    ctf = {"defocus_u_A": defocus, "defocus_v_A": defocus, "defocus_angle_deg": np.zeros(n),
           **{k: np.full(n, v) for k, v in DEFAULT_OPTICS.items()}}
    images, _ = simulate_images(volume, random_rotations(n, rng), None, ctf, 5.0, snr=snr, rng=rng)
    assert estimate_snr(5.0 * images + 3.0) == pytest.approx(snr, rel=0.1)  # any scale and offset
    clean, _ = simulate_images(volume, random_rotations(4, rng), None, None, 5.0, rng=rng)
    assert estimate_snr(np.zeros((3, L, L))) == float("inf")
    assert estimate_snr(clean) > 100


@pytest.mark.parametrize("L", [31, 32])
def test_estimate_snr_is_its_formula(L):
    """Inside/corner power ratio over the integer disc ``x^2 + y^2 < (L/2)^2``, exactly."""
    rng = np.random.default_rng(9)
    images = rng.normal(2.0, 1.0, (50, L, L))
    images[:, L // 4 : 3 * L // 4, L // 4 : 3 * L // 4] += 0.7
    y, x = np.indices((L, L)) - L // 2
    inside = x * x + y * y < (L / 2) ** 2
    corners = ~inside
    n = int(corners.sum())
    centred = images - images[:, corners].mean(axis=1)[:, None, None]
    noise = np.mean(centred[:, corners] ** 2) / (1 - 1 / n)
    expected = float(np.mean(centred[:, inside] ** 2) / noise) - (1 + 1 / n)
    assert estimate_snr(images) == expected
