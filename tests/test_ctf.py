"""CTF: sign at zero, analytical zeros, astigmatism angle, envelope, layout."""
import numpy as np
import pytest

from cryorecon.forward.ctf import ctf_at_coords, ctf_image, ctf_values, electron_wavelength_A
from cryorecon.forward.fourier import band_coords, freq_grid_2d

BASE = dict(defocus_u_A=20000.0, defocus_v_A=20000.0, defocus_angle_deg=0.0,
            voltage_kV=300.0, cs_mm=2.7, amplitude_contrast=0.1)


def test_wavelength():
    # 300 kV: 0.019687 A; 200 kV: 0.025079 A (standard tables).
    assert electron_wavelength_A(300.0) == pytest.approx(0.019687, abs=2e-6)
    assert electron_wavelength_A(200.0) == pytest.approx(0.025079, abs=2e-6)


def test_ctf_at_zero_is_plus_q():
    c = ctf_values(np.zeros(1), np.zeros(1), **dict(BASE, amplitude_contrast=[0.07, 0.1]))
    np.testing.assert_allclose(c[:, 0], [0.07, 0.1], rtol=1e-12)


def test_zeros_at_analytical_positions():
    """Zeros where chi + atan(Q / sqrt(1 - Q^2)) = n pi; solve the quadratic in k^2."""
    lam = electron_wavelength_A(300.0)
    df, cs, q = 20000.0, 2.7e7, 0.1
    phi = np.arctan2(q, np.sqrt(1 - q * q))
    zeros = []
    for n in range(1, 6):
        # (pi/2) Cs lam^3 u^2 - pi lam df u + (n pi - phi) = 0, smaller root u = k^2.
        a, b, c = 0.5 * np.pi * cs * lam ** 3, -np.pi * lam * df, n * np.pi - phi
        u = (-b - np.sqrt(b * b - 4 * a * c)) / (2 * a)
        zeros.append(np.sqrt(u))
    k = np.asarray(zeros)
    vals = ctf_values(k, np.zeros_like(k), **BASE)[0]
    np.testing.assert_allclose(vals, 0.0, atol=1e-9)
    # Sign changes across each zero, and the first lobe is positive (underfocus).
    eps = 1e-5
    assert np.all(ctf_values(k - eps, 0 * k, **BASE)[0] * ctf_values(k + eps, 0 * k, **BASE)[0] < 0)
    assert ctf_values(np.array([k[0] / 2]), np.zeros(1), **BASE)[0, 0] > 0.1


def test_astigmatism_angle_convention():
    """df(angle) = (U+V)/2 + (U-V)/2 cos(2 (angle - rlnDefocusAngle)): U along the angle."""
    U, V, ang = 25000.0, 15000.0, 30.0
    astig = dict(BASE, defocus_u_A=U, defocus_v_A=V, defocus_angle_deg=ang)
    r = 0.05
    for direction, df in ((ang, U), (ang + 90, V), (ang + 180, U)):
        t = np.deg2rad(direction)
        kx, ky = np.array([r * np.cos(t)]), np.array([r * np.sin(t)])
        got = ctf_values(kx, ky, **astig)
        want = ctf_values(np.array([r]), np.zeros(1), **dict(BASE, defocus_u_A=df, defocus_v_A=df))
        np.testing.assert_allclose(got, want, atol=1e-10)
    # Mirror symmetry about the astigmatism axis, and ky is the first image axis.
    img = ctf_image(64, 2.0, dtype=np.float64, **dict(astig, defocus_angle_deg=90.0))
    kx, ky = freq_grid_2d(64)
    along_y = img[0][kx == 0][ky[kx == 0] == 10]
    single = ctf_values(np.zeros(1), np.array([10 / 128.0]), **dict(BASE, defocus_u_A=U, defocus_v_A=U))
    np.testing.assert_allclose(along_y, single[0], atol=1e-10)


def test_phase_shift_and_bfactor():
    k = np.linspace(0, 0.2, 50)
    plain = ctf_values(k, 0 * k, **BASE)[0]
    shifted = ctf_values(k, 0 * k, **BASE, phase_shift_deg=90.0)[0]
    # A 90-degree phase plate turns sin into cos: CTF(0) becomes sqrt(1 - Q^2).
    assert shifted[0] == pytest.approx(np.sqrt(1 - 0.01))
    assert not np.allclose(plain, shifted)
    damped = ctf_values(k, 0 * k, **BASE, bfactor_A2=100.0)[0]
    np.testing.assert_allclose(damped, plain * np.exp(-25.0 * k * k), atol=1e-12)


def test_batch_shapes_dtypes_and_layout():
    L, px = 32, 3.0
    dfs = np.array([10000.0, 15000.0, 20000.0])
    img = ctf_image(L, px, **dict(BASE, defocus_u_A=dfs, defocus_v_A=dfs))
    assert img.shape == (3, L, L) and img.dtype == np.float32
    np.testing.assert_allclose(img[:, L // 2, L // 2], 0.1, rtol=1e-6)
    # Isotropic CTF is symmetric under k -> -k on the shared part of the grid.
    np.testing.assert_allclose(img[:, 1:, 1:], img[:, 1:, 1:][:, ::-1, ::-1], atol=1e-5)
    coords = band_coords(L, 10)
    at = ctf_at_coords(coords, L, px, **dict(BASE, defocus_u_A=dfs, defocus_v_A=dfs))
    assert at.shape == (3, len(coords))
    np.testing.assert_allclose(at, img[:, coords[:, 1] + L // 2, coords[:, 0] + L // 2], atol=1e-6)
    k64 = np.zeros((2, 5))
    assert ctf_values(k64, k64, **BASE).shape == (1, 2, 5)
    assert ctf_values(k64, k64, **BASE).dtype == np.float64
