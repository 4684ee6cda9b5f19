"""Tests of cryorecon.validate: FSC, resolution, map transforms, alignment, pose error, comparison."""
import csv

import numpy as np
import pytest

from cryorecon.errors import InputError
from cryorecon.forward.fourier import fourier_crop
from cryorecon.forward.masks import soft_sphere
from cryorecon.geometry.rotations import angular_distance_deg, random_rotations
from cryorecon.simulation.phantom import chiral_phantom
from cryorecon.forward.projector import project
from cryorecon.validate import (
    MIRROR,
    PoseError,
    align_maps,
    compare_maps,
    fsc,
    fsc_resolution_A,
    fsc_resolutions_A,
    map_poses,
    mirror_volume,
    on_map_grid,
    plot_fsc,
    pose_error_deg,
    pose_errors_deg,
    rotate_volume,
    write_fsc_csv,
)


def _corr(a, b):
    return float(np.corrcoef(np.ravel(a), np.ravel(b))[0, 1])


@pytest.fixture(scope="module")
def phantom32():
    return chiral_phantom(32, rng=3)


# ----------------------------------------------------------------------- FSC

def test_fsc_of_map_with_itself_is_one():
    v = np.random.default_rng(0).normal(size=(24, 24, 24)).astype(np.float32)
    shells, curve = fsc(v, v)
    assert shells.tolist() == list(range(13))
    np.testing.assert_allclose(curve, 1.0, atol=1e-10)


def test_fsc_of_independent_noise_is_near_zero():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(2, 32, 32, 32))
    _, curve = fsc(a, b)
    # A shell of n independent coefficients has FSC ~ N(0, 1/n); skip the tiny inner shells.
    assert np.all(np.abs(curve[4:]) < 0.1)
    assert abs(curve[4:].mean()) < 0.02


def test_fsc_matches_full_grid_definition():
    # The rfft half-grid sums with Hermitian weights must equal plain full-grid sums.
    rng = np.random.default_rng(2)
    a = rng.normal(size=(10, 10, 10))
    b = a + rng.normal(size=a.shape)
    Fa, Fb = np.fft.fftn(a), np.fft.fftn(b)
    f = np.fft.fftfreq(10) * 10
    kz, ky, kx = np.meshgrid(f, f, f, indexing="ij")
    s = np.rint(np.sqrt(kx**2 + ky**2 + kz**2)).astype(int)
    ref = []
    for i in range(6):
        m = s == i
        ref.append(np.real(np.sum(Fa[m] * np.conj(Fb[m]))) / np.sqrt(np.sum(abs(Fa[m]) ** 2) * np.sum(abs(Fb[m]) ** 2)))
    np.testing.assert_allclose(fsc(a, b)[1], ref, rtol=1e-10)


def test_fsc_falls_where_noise_takes_over():
    # Signal with power only below shell 8, plus independent noise: FSC crosses near 8.
    L = 32
    rng = np.random.default_rng(3)
    F = np.fft.fftn(rng.normal(size=(L, L, L)))
    f = np.fft.fftfreq(L) * L
    kz, ky, kx = np.meshgrid(f, f, f, indexing="ij")
    signal = np.fft.ifftn(F * (np.sqrt(kx**2 + ky**2 + kz**2) < 8)).real * 10
    a = signal + rng.normal(size=signal.shape)
    b = signal + rng.normal(size=signal.shape)
    _, curve = fsc(a, b)
    assert curve[3] > 0.9 and abs(curve[12]) < 0.15
    res = fsc_resolution_A(curve, L, 2.0, 0.143)
    assert L * 2.0 / 9 < res < L * 2.0 / 7


def test_fsc_resolution_interpolates_between_shells():
    curve = np.array([1.0, 0.9, 0.7, 0.3, 0.1, 0.0])
    # Crosses 0.5 half-way between shells 2 and 3: shell 2.5 -> 100 * 1.0 / 2.5 A.
    assert fsc_resolution_A(curve, 100, 1.0, 0.5) == pytest.approx(40.0)
    # 0.143 between shells 3 (0.3) and 4 (0.1): 3 + 0.157 / 0.2.
    assert fsc_resolution_A(curve, 100, 1.0, 0.143) == pytest.approx(100 / 3.785)
    both = fsc_resolutions_A(curve, 100, 1.0)
    assert set(both) == {0.143, 0.5}
    # Never below: Nyquist of the curve.
    assert fsc_resolution_A(np.ones(6), 10, 2.0) == pytest.approx(4.0)


def test_fsc_rejects_mismatched_boxes():
    with pytest.raises(InputError):
        fsc(np.zeros((8, 8, 8)), np.zeros((10, 10, 10)))


def test_fsc_csv_and_png(tmp_path):
    shells, curve = fsc(*np.random.default_rng(4).normal(size=(2, 16, 16, 16)))
    path = write_fsc_csv(tmp_path / "fsc.csv", shells, {"half": curve}, box=16, pixel_size_A=2.5)
    rows = list(csv.reader(open(path)))
    assert rows[0] == ["shell", "frequency_1/A", "resolution_A", "half"]
    assert float(rows[3][2]) == pytest.approx(16 * 2.5 / 2)
    assert float(rows[5][3]) == pytest.approx(curve[4], abs=1e-6)
    png = plot_fsc(tmp_path / "fsc.png", {"half": (shells, curve)}, box=16, pixel_size_A=2.5)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fsc.csv", "fsc.png"]


# ---------------------------------------------------------- transforms & poses

def test_rotate_volume_convention_against_projector(phantom32):
    # Pin: W = rotate_volume(V, R) projects along A like V projects along A @ R (not A @ R.T).
    rng = np.random.default_rng(5)
    R = random_rotations(1, rng)[0]
    A = random_rotations(3, rng)
    pw = project(rotate_volume(phantom32, R), A)
    right = project(phantom32, A @ R)
    wrong = project(phantom32, A @ R.T)
    for i in range(3):
        assert _corr(pw[i], right[i]) > 0.999
        assert _corr(pw[i], wrong[i]) < 0.9


def test_rotate_volume_shift_moves_density_in_x_y_z(phantom32):
    moved = rotate_volume(phantom32, np.eye(3), shift_px=(3, -2, 1), order=1)
    # W(x) = V(x - s): W[z, y, x] = V[z - 1, y + 2, x - 3], exact for integer shifts.
    np.testing.assert_allclose(moved[6:-6, 6:-6, 6:-6], phantom32[5:-7, 8:-4, 3:-9], atol=1e-6)


def test_mirror_volume_is_the_improper_transform(phantom32):
    np.testing.assert_allclose(mirror_volume(phantom32), rotate_volume(phantom32, MIRROR, order=1), atol=1e-6)
    np.testing.assert_array_equal(mirror_volume(mirror_volume(phantom32))[1:], phantom32[1:])


@pytest.mark.parametrize("mirrored", [False, True])
def test_map_poses_makes_projections_agree(phantom32, mirrored):
    # Build a "reconstruction" V_est with rotate_volume(V_est, G) = V_true, then check
    # that the mapped poses project V_true like the estimated poses project V_est.
    rng = np.random.default_rng(6)
    R = random_rotations(1, rng)[0]
    G = R @ MIRROR if mirrored else R
    v_est = rotate_volume(phantom32, G.T)
    a_true = random_rotations(4, rng)
    info = {"matrix": G, "rotation": R, "mirrored": mirrored}
    # Solve for the estimated poses the way the derivation says, then invert with map_poses.
    a_est = a_true @ G
    if mirrored:
        a_est = MIRROR @ a_est
    assert np.allclose(np.linalg.det(a_est), 1.0)
    img_est, img_true = project(v_est, a_est), project(phantom32, a_true)
    for i in range(4):
        assert _corr(img_est[i], img_true[i]) > 0.995
    np.testing.assert_allclose(map_poses(a_est, info), a_true, atol=1e-12)
    assert pose_error_deg(a_est, a_true, info) < 1e-5
    # A pose perturbed by a known angle gives that error.
    tilt = np.array([[1, 0, 0], [0, np.cos(0.1), -np.sin(0.1)], [0, np.sin(0.1), np.cos(0.1)]])
    assert pose_error_deg(a_est @ tilt, a_true, info) == pytest.approx(np.degrees(0.1), rel=1e-6)


# ------------------------------------------------------------------ alignment

@pytest.mark.parametrize("mirrored", [False, True])
def test_align_maps_recovers_rotation_shift_and_hand(phantom32, mirrored):
    rng = np.random.default_rng(7 + mirrored)
    R = random_rotations(1, rng)[0]
    shift = np.array([2.0, -1.5, 1.0])
    G = R @ MIRROR if mirrored else R
    # moving = the reference carried by G^-1 and shifted: aligning must find G back.
    moving = rotate_volume(rotate_volume(phantom32, np.eye(3), -shift), G.T)
    aligned, info = align_maps(moving, phantom32)
    assert info["mirrored"] is mirrored
    assert info["correlation"] > 0.95
    assert angular_distance_deg(info["rotation"], R) < 3.0
    np.testing.assert_allclose(info["shift_px"], shift, atol=0.5)
    assert _corr(aligned, phantom32) > 0.95
    # Poses of the moving map, carried through the found alignment, match the truth.
    a_true = random_rotations(20, rng)
    a_est = a_true @ G
    if mirrored:
        a_est = MIRROR @ a_est
    assert pose_error_deg(a_est, a_true, info) < 3.0


# ----------------------------------------------------------------- comparison

def test_on_map_grid_crops_a_larger_reference_of_the_same_extent():
    rng = np.random.default_rng(12)
    big = rng.normal(size=(48, 48, 48)).astype(np.float32)  # 48 px at 2.0 A/px: 96 A, as 32 px at 3.0 A/px
    np.testing.assert_array_equal(on_map_grid(big, 48, 2.0), big)
    np.testing.assert_array_equal(on_map_grid(big, 32, 3.0, 2.0, label="truth.mrc"), fourier_crop(big, 32, ndim=3))
    for box, px, ref_px in [(32, 3.0, 2.5), (64, 1.5, 2.0), (32, None, 2.0)]:
        with pytest.raises(InputError, match="truth.mrc"):
            on_map_grid(big, box, px, ref_px, label="truth.mrc")
    with pytest.raises(InputError, match="cubic"):
        on_map_grid(big[:40], 32, 3.0, 2.0)


def test_compare_maps_aligns_scores_and_carries_the_poses(phantom32):
    rng = np.random.default_rng(11)
    R = random_rotations(1, rng)[0]
    G = R @ MIRROR
    moving = rotate_volume(phantom32, G.T)  # the reference with the other hand, turned
    a_true = random_rotations(30, rng)
    a_est = MIRROR @ (a_true @ G)  # what a reconstruction of `moving` holds (pose_error docstring)
    c20, s20 = np.cos(np.radians(20)), np.sin(np.radians(20))
    a_est[:10] = a_est[:10] @ np.array([[1, 0, 0], [0, c20, -s20], [0, s20, c20]])  # a third 20 deg off
    mask = soft_sphere(32, 12.0)
    c = compare_maps(moving, phantom32, 4.0, mask=mask, est_rotations=a_est, true_rotations=a_true)
    # the numbers are those of the named steps on the aligned map
    shells, curve = fsc(c.aligned_map, phantom32, mask)
    np.testing.assert_array_equal(c.fsc, curve)
    np.testing.assert_array_equal(c.shell_index_px, shells)
    summary = c.summary()
    assert summary["mirrored"] is True and summary["correlation"] > 0.95
    assert summary["fsc_0.5_A"] == fsc_resolution_A(curve, 32, 4.0, 0.5)
    assert summary["fsc_0.143_A"] == fsc_resolution_A(curve, 32, 4.0, 0.143)
    err = pose_errors_deg(a_est, a_true, c.alignment)
    assert np.all(err[10:] < 3.0) and np.all(np.abs(err[:10] - 20.0) < 3.0)
    assert c.pose_error == PoseError(float(np.median(err)), float(np.mean(err)), 20 / 30)
    assert summary["pose_within_15deg"] == pytest.approx(20 / 30)
    # poses of other particles are not compared
    assert compare_maps(moving, phantom32, 4.0, est_rotations=a_est[:5], true_rotations=a_true).pose_error is None


def test_compare_maps_as_they_are_and_the_curve_files(phantom32, tmp_path):
    c = compare_maps(phantom32, phantom32, 4.0, align=False)
    assert c.alignment is None and c.aligned_map is phantom32
    assert c.summary() == {"fsc_0.143_A": 8.0, "fsc_0.5_A": 8.0}  # FSC 1 up to Nyquist, 2 * 4 A
    c.write_fsc(tmp_path / "fsc.csv", tmp_path / "fsc.png", label="map vs itself", column="self")
    rows = list(csv.reader(open(tmp_path / "fsc.csv")))
    assert rows[0] == ["shell", "frequency_1/A", "resolution_A", "self"] and float(rows[5][3]) == pytest.approx(1.0)
    assert (tmp_path / "fsc.png").read_bytes()[:4] == b"\x89PNG"
    # without a pixel size: no resolutions in A, and the curve in pixel units
    bare = compare_maps(phantom32, phantom32, align=False)
    assert bare.resolution_A == {} and bare.summary() == {}
    bare.write_fsc(tmp_path / "px.csv")
    assert list(csv.reader(open(tmp_path / "px.csv")))[0] == ["shell", "frequency_1/px", "resolution_px", "fsc"]


# ------------------------------------------------------------------------ CLI

def test_cli_fsc_align_info(tmp_path, capsys):
    import json

    from cryorecon.cli import main
    from cryorecon.io.mrc import write_map

    phantom = chiral_phantom(24, rng=3)
    ref = tmp_path / "ref.mrc"
    moving = tmp_path / "moving.mrc"
    write_map(ref, phantom, 4.0)
    R = random_rotations(1, np.random.default_rng(9))[0]
    write_map(moving, mirror_volume(rotate_volume(phantom, R)), 4.0)

    assert main(["fsc", str(ref), str(ref), "--out", str(tmp_path / "f")]) == 0
    out = capsys.readouterr().out
    assert "FSC 0.143: 8.00 A" in out  # identical maps: FSC 1 up to Nyquist, 2 * 4 A
    assert (tmp_path / "f" / "fsc.csv").is_file() and (tmp_path / "f" / "fsc.png").is_file()

    assert main(["align", str(moving), str(ref), "--out", str(tmp_path / "aligned.mrc")]) == 0
    out = capsys.readouterr().out
    assert "mirrored: yes" in out
    record = json.loads((tmp_path / "aligned.json").read_text())
    assert record["mirrored"] and record["correlation"] > 0.95
    from cryorecon.io.mrc import read_map

    aligned, px = read_map(tmp_path / "aligned.mrc")
    assert px == 4.0 and _corr(aligned, phantom) > 0.95

    assert main(["info", str(ref)]) == 0
    assert "(24, 24, 24)" in capsys.readouterr().out
    assert main(["fsc", str(ref), str(tmp_path / "missing.mrc")]) == 2
    assert "missing.mrc" in capsys.readouterr().err


def test_cli_fsc_mask_in_angstrom_and_a_larger_reference(tmp_path, capsys):
    from cryorecon.cli import main
    from cryorecon.io.mrc import write_map

    rng = np.random.default_rng(13)
    a, b = chiral_phantom(24, rng=3), rng.normal(size=(24, 24, 24)).astype(np.float32)
    write_map(tmp_path / "a.mrc", a, 4.0)
    write_map(tmp_path / "b.mrc", a + b, 4.0)
    assert main(["fsc", str(tmp_path / "a.mrc"), str(tmp_path / "b.mrc"), "--mask-radius-A", "20",
                 "--out", str(tmp_path / "f")]) == 0
    rows = list(csv.reader(open(tmp_path / "f" / "fsc.csv")))
    # 20 A at 4 A/px is a 5 px sphere with the masks' 3 px edge
    expected = fsc(a, a + b, soft_sphere(24, 5.0, 3.0))[1]
    np.testing.assert_allclose([float(r[3]) for r in rows[1:]], expected, atol=1e-6)
    assert main(["fsc", str(tmp_path / "a.mrc"), str(tmp_path / "b.mrc"), "--mask-radius-A", "-5"]) == 2
    assert "--mask-radius-A" in capsys.readouterr().err
    # a reference of twice the box at half the pixel size is put on the map's grid first
    big = chiral_phantom(48, rng=3)
    write_map(tmp_path / "big.mrc", big, 2.0)
    write_map(tmp_path / "small.mrc", fourier_crop(big, 24, ndim=3), 4.0)
    assert main(["fsc", str(tmp_path / "small.mrc"), str(tmp_path / "big.mrc")]) == 0
    assert "FSC 0.143: 8.00 A" in capsys.readouterr().out
    write_map(tmp_path / "odd.mrc", big[:40, :40, :40], 2.0)
    assert main(["fsc", str(tmp_path / "small.mrc"), str(tmp_path / "odd.mrc")]) == 2
    assert "odd.mrc" in capsys.readouterr().err
