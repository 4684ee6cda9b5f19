"""Centred transforms, frequency bookkeeping, resampling and masks."""
import numpy as np
import pytest

from cryorecon.forward.fourier import (
    band_coords,
    fft2c,
    fft3c,
    fourier_crop,
    fourier_pad,
    freq_grid_2d,
    gather_coeffs,
    ifft2c,
    ifft3c,
    shell_index,
    shift_phase,
)


@pytest.mark.parametrize("L", [8, 9])
def test_centred_convention(L):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, L, L)).astype(np.float32)
    X = fft2c(x)
    assert X.dtype == np.complex64
    np.testing.assert_allclose(X, np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(x, axes=(-2, -1))), axes=(-2, -1)), rtol=1e-4, atol=1e-4)
    # Zero frequency at L//2 holds the unnormalised sum.
    np.testing.assert_allclose(X[:, L // 2, L // 2], x.sum(axis=(1, 2)), rtol=1e-5)
    np.testing.assert_allclose(ifft2c(X).real, x, atol=1e-5)
    # A delta at the origin pixel L//2 has a flat, real spectrum.
    d = np.zeros((L, L, L))
    d[L // 2, L // 2, L // 2] = 1.0
    np.testing.assert_allclose(fft3c(d), np.ones((L, L, L)), atol=1e-12)
    v = rng.standard_normal((L, L, L))
    np.testing.assert_allclose(ifft3c(fft3c(v)).real, v, atol=1e-12)


def test_freq_grid_and_shells():
    kx, ky = freq_grid_2d(6)
    assert kx[0].tolist() == [-3, -2, -1, 0, 1, 2] and (kx[:, 0] == -3).all()
    assert ky[:, 0].tolist() == [-3, -2, -1, 0, 1, 2]
    s = shell_index(6, 2)
    assert s[3, 3] == 0 and s[3, 5] == 2 and s[0, 0] == 4
    s3 = shell_index(5, 3)
    assert s3.shape == (5, 5, 5) and s3[2, 2, 2] == 0 and s3[0, 2, 2] == 2


@pytest.mark.parametrize("L, kmax", [(16, 5.5), (16, 8), (16, 12), (15, 7.5)])
def test_band_half_weights_reproduce_full_sums(L, kmax):
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((2, 1, L, L))
    X, Y = fft2c(x), fft2c(y)
    full = band_coords(L, kmax)
    assert np.all(full[:, 0] ** 2 + full[:, 1] ** 2 < kmax ** 2)
    assert len(full) == np.sum(np.hypot(*freq_grid_2d(L)) < kmax)
    half, w = band_coords(L, kmax, half=True)
    f_full = np.real(np.conj(gather_coeffs(X, full)) * gather_coeffs(Y, full)).sum()
    f_half = (w * np.real(np.conj(gather_coeffs(X, half)) * gather_coeffs(Y, half))).sum()
    np.testing.assert_allclose(f_half, f_full, rtol=1e-10)
    assert len(half) < 0.6 * len(full)


def test_gather_coeffs_indexing():
    X = np.arange(2 * 8 * 8).reshape(2, 8, 8)
    c = np.array([[0, 0], [1, 0], [0, -2], [-4, 3]])
    g = gather_coeffs(X, c)
    assert g.tolist() == [[X[i, 4, 4], X[i, 4, 5], X[i, 2, 4], X[i, 7, 0]] for i in range(2)]


def test_shift_phase_translates_image():
    """image = slice * phase(o) is the projection moved by -o (RELION origin convention)."""
    L = 16
    rng = np.random.default_rng(2)
    img = rng.standard_normal((L, L))
    coords = np.stack([c.ravel() for c in freq_grid_2d(L)], axis=1)
    o = np.array([[3.0, -2.0]])
    ph = shift_phase(coords, L, o, dtype=np.complex128)
    assert ph.shape == (1, L * L)
    moved = ifft2c((fft2c(img).ravel() * ph[0]).reshape(L, L)).real
    # Integer shifts are exact circular translations: x -> x - 3, y -> y + 2.
    np.testing.assert_allclose(moved, np.roll(img, (2, -3), axis=(0, 1)), atol=1e-12)
    assert shift_phase(coords, L, np.zeros((1, 2))).dtype == np.complex64


@pytest.mark.parametrize("ndim", [2, 3])
def test_crop_pad_preserve_values(ndim):
    rng = np.random.default_rng(3)
    L = 16
    shape = (4,) + (L,) * 2 if ndim == 2 else (L,) * 3
    const = np.full(shape, 2.5, np.float32)
    small = fourier_crop(const, 10, ndim=ndim)
    assert small.dtype == np.float32 and small.shape[-1] == 10
    np.testing.assert_allclose(small, 2.5, rtol=1e-5)
    np.testing.assert_allclose(fourier_pad(const, 20, ndim=ndim), 2.5, rtol=1e-5)
    # A band-limited signal survives pad then crop exactly, and its mean survives crop.
    # (Odd size: an even grid's unpaired Nyquist term is not real after padding.)
    x = rng.standard_normal(shape)
    x_small = fourier_crop(x, 9, ndim=ndim)
    back = fourier_crop(fourier_pad(x_small, 24, ndim=ndim), 9, ndim=ndim)
    np.testing.assert_allclose(back, x_small, atol=1e-12)
    axes = tuple(range(-ndim, 0))
    np.testing.assert_allclose(x_small.mean(axis=axes), x.mean(axis=axes), atol=1e-12)
    with pytest.raises(ValueError):
        fourier_crop(np.zeros((8, 8, 8)), 4)
