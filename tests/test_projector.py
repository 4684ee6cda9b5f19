"""The projector: adjointness, the central-slice theorem, and RELION/ASPIRE references."""
import mrcfile
import numpy as np
import pytest
import starfile

from cryorecon.forward.fourier import band_coords, fft2c, ifft2c, shift_phase
from cryorecon.geometry.rotations import euler_to_matrix, random_rotations
from cryorecon.forward.projector import (
    backproject,
    backproject_weights,
    extract,
    full_coords,
    project,
    volume_ft,
    volume_ft_adjoint,
)

TOL = {np.float32: 1e-5, np.float64: 1e-10}


def _corr(a, b):
    a = a - a.mean()
    b = b - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def _rel(a, b):
    return abs(a - b) / max(abs(a), abs(b))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("L, pad", [(16, 2), (15, 2), (12, 1.5)])
def test_extract_backproject_adjoint(dtype, L, pad):
    rng = np.random.default_rng(1)
    V = rng.standard_normal((L, L, L)).astype(dtype)
    F = volume_ft(V, pad)
    # A random complex F, not one Hermitian-symmetric, so the test sees every entry.
    F = (F + rng.standard_normal(F.shape) * 3 + 1j * rng.standard_normal(F.shape)).astype(F.dtype)
    R = random_rotations(7, rng)
    # Full grid (corners reach outside the padded cube for pad 1.5) and a band.
    for coords in (full_coords(L), band_coords(L, L / 3)):
        e = extract(F, R, coords, pad)
        assert e.shape == (7, len(coords)) and e.dtype == F.dtype
        y = (rng.standard_normal(e.shape) + 1j * rng.standard_normal(e.shape)).astype(e.dtype)
        b = backproject(y, R, coords, F.shape, pad)
        assert b.shape == F.shape and b.dtype == F.dtype
        lhs = np.vdot(e.astype(np.complex128), y).real
        rhs = np.vdot(F.astype(np.complex128), b).real
        assert _rel(lhs, rhs) < TOL[dtype]
        w = rng.random(e.shape).astype(dtype)
        bw = backproject_weights(w, R, coords, F.shape, pad)
        assert bw.dtype == dtype
        lhs = np.sum(e.real.astype(np.float64) * w)
        rhs = np.sum(F.real.astype(np.float64) * bw)
        assert _rel(lhs, rhs) < TOL[dtype]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("L", [16, 15])
def test_volume_ft_adjoint(dtype, L):
    rng = np.random.default_rng(2)
    V = rng.standard_normal((L, L, L)).astype(dtype)
    F = volume_ft(V)
    G = (rng.standard_normal(F.shape) + 1j * rng.standard_normal(F.shape)).astype(F.dtype)
    a = volume_ft_adjoint(G, L)
    assert a.shape == V.shape and a.dtype == dtype
    lhs = np.vdot(F.astype(np.complex128), G).real
    rhs = np.sum(V.astype(np.float64) * a)
    assert _rel(lhs, rhs) < TOL[dtype]


@pytest.mark.parametrize("L", [16, 17])
def test_central_slice_identity_is_exact(L):
    rng = np.random.default_rng(3)
    V = rng.standard_normal((L, L, L))
    F = volume_ft(V)
    s = extract(F, np.eye(3)[None], full_coords(L)).reshape(L, L)
    np.testing.assert_allclose(s, fft2c(V.sum(axis=0)), atol=1e-9 * np.abs(s).max())
    np.testing.assert_allclose(project(V, np.eye(3)[None])[0], V.sum(axis=0), atol=1e-10)


def test_project_matches_rotated_sum():
    """A 90-degree pose needs no interpolation: the projection is a sum along another axis."""
    rng = np.random.default_rng(4)
    # Odd L: the map of kx -> -kx stays on the grid (an even grid's Nyquist would not).
    L = 13
    V = rng.standard_normal((L, L, L))
    # tilt 90: A = Ry(90); A^T (x, y, z) = (z, y, -x), so P[y, x] = sum_z V[-x, y, z].
    P = project(V, euler_to_matrix(0, 90, 0))[0]
    expect = V.sum(axis=2).T[:, ::-1]
    np.testing.assert_allclose(P, expect, atol=1e-9)


def test_float32_stays_float32():
    V = np.zeros((8, 8, 8), np.float32)
    assert volume_ft(V).dtype == np.complex64
    assert project(V, np.eye(3)[None]).dtype == np.float32


def _load_relion(shared_data, name):
    d = shared_data / "relion_project_reference"
    star = starfile.read(d / f"rln_proj_64_{name}.star")
    parts = star["particles"] if isinstance(star, dict) else star
    images = mrcfile.read(d / f"rln_proj_64_{name}.mrcs")
    A = euler_to_matrix(parts["rlnAngleRot"], parts["rlnAngleTilt"], parts["rlnAnglePsi"])
    if "rlnOriginX" in parts:  # RELION 3.0 pixel offsets
        o = np.stack([parts["rlnOriginX"], parts["rlnOriginY"]], axis=1)
    else:  # centred file: offsets in A at pixel size 1.0
        o = np.stack([parts["rlnOriginXAngst"], parts["rlnOriginYAngst"]], axis=1)
    return A, o.astype(np.float64), images


def _forward(F, A, offsets_px, L, ctf=None):
    coords = full_coords(L)
    slices = extract(F, A, coords)
    phase = np.stack([shift_phase(coords, L, o[None])[0] for o in offsets_px])
    model = slices * phase
    if ctf is not None:
        model = model * ctf.reshape(len(A), -1)
    return ifft2c(model.reshape(-1, L, L)).real


@pytest.fixture(scope="module")
def ribosome_ft(shared_data):
    V = mrcfile.read(shared_data / "ribosome70S" / "ribosome70S_L64.mrc").astype(np.float32)
    return volume_ft(V)


@pytest.mark.parametrize("name", ["centered", "shifted"])
def test_relion_project_reference(shared_data, ribosome_ft, name):
    A, o, images = _load_relion(shared_data, name)
    L = images.shape[-1]
    good = [_corr(p, im) for p, im in zip(_forward(ribosome_ft, A, o, L), images)]
    assert min(good) >= 0.99, good
    transposed = _forward(ribosome_ft, np.transpose(A, (0, 2, 1)), o, L)
    assert max(_corr(p, im) for p, im in zip(transposed, images)) < 0.5
    if name == "shifted":
        flipped = _forward(ribosome_ft, A, -o, L)
        assert max(_corr(p, im) for p, im in zip(flipped, images)) < 0.5


def test_aspire_forward_model_with_ctf(shared_data, ribosome_ft):
    """Projection x CTF x shift reproduces ASPIRE's simulated particles (RELION 3.1 STAR)."""
    from cryorecon.forward.ctf import ctf_image

    d = shared_data / "aspire_ctf_shift_200"
    star = starfile.read(d / "particles.star")
    optics, parts = star["optics"], star["particles"]
    images = mrcfile.read(d / "particles.mrcs")
    L = images.shape[-1]
    px = float(optics["rlnImagePixelSize"].iloc[0])
    A = euler_to_matrix(parts["rlnAngleRot"], parts["rlnAngleTilt"], parts["rlnAnglePsi"])
    np.testing.assert_allclose(A, np.load(d / "relion_A_matrices.npy"), atol=1e-5)
    o = np.stack([parts["rlnOriginXAngst"], parts["rlnOriginYAngst"]], axis=1) / px
    ctf = ctf_image(
        L, px,
        defocus_u_A=parts["rlnDefocusU"].to_numpy(), defocus_v_A=parts["rlnDefocusV"].to_numpy(),
        defocus_angle_deg=parts["rlnDefocusAngle"].to_numpy(), voltage_kV=parts["rlnVoltage"].to_numpy(),
        cs_mm=parts["rlnSphericalAberration"].to_numpy(),
        amplitude_contrast=parts["rlnAmplitudeContrast"].to_numpy(),
    )

    def corrs(model):
        return np.array([_corr(m, im) for m, im in zip(model, images)])

    good = corrs(_forward(ribosome_ft, A, o, L, ctf))
    assert good.min() >= 0.99, good.min()
    # Each convention error alone is caught.
    assert corrs(_forward(ribosome_ft, A, o, L, -ctf)).max() < 0
    assert np.median(corrs(_forward(ribosome_ft, A, -o, L, ctf))) < 0.5
    assert np.median(corrs(_forward(ribosome_ft, np.transpose(A, (0, 2, 1)), o, L, ctf))) < 0.5


@pytest.mark.gpu
def test_cupy_matches_numpy_and_is_adjoint():
    import cupy

    rng = np.random.default_rng(5)
    L = 16
    V = rng.standard_normal((L, L, L)).astype(np.float32)
    R = random_rotations(9, rng)
    coords = band_coords(L, L / 2 + 2)
    F_np = volume_ft(V)
    F_cp = volume_ft(cupy.asarray(V))
    np.testing.assert_allclose(cupy.asnumpy(F_cp), F_np, rtol=1e-4, atol=1e-3)
    e_cp = extract(F_cp, R, cupy.asarray(coords))
    np.testing.assert_allclose(cupy.asnumpy(e_cp), extract(F_np, R, coords), rtol=1e-4, atol=1e-3)
    y = (rng.standard_normal(e_cp.shape) + 1j * rng.standard_normal(e_cp.shape)).astype(np.complex64)
    b_cp = backproject(cupy.asarray(y), R, coords, F_np.shape)
    assert b_cp.dtype == cupy.complex64
    np.testing.assert_allclose(cupy.asnumpy(b_cp), backproject(y, R, coords, F_np.shape), rtol=1e-4, atol=1e-4)
    lhs = float(cupy.vdot(e_cp.astype(cupy.complex128), cupy.asarray(y)).real)
    rhs = float(cupy.vdot(F_cp.astype(cupy.complex128), b_cp).real)
    assert _rel(lhs, rhs) < 1e-5
    w = rng.random(e_cp.shape).astype(np.float32)
    bw = backproject_weights(cupy.asarray(w), R, coords, F_np.shape)
    np.testing.assert_allclose(cupy.asnumpy(bw), backproject_weights(w, R, coords, F_np.shape), rtol=1e-4, atol=1e-4)
    P = project(cupy.asarray(V), R)
    np.testing.assert_allclose(cupy.asnumpy(P), project(V, R), rtol=1e-3, atol=1e-3)
