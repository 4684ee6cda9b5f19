"""Figures: in-plane alignment and view averages are right; PNGs are written and non-trivial."""
from __future__ import annotations

import numpy as np
import pytest

from cryorecon.report import plots
from cryorecon.geometry.rotations import euler_to_matrix, random_rotations
from cryorecon.simulation.phantom import chiral_phantom
from cryorecon.forward.projector import project
from cryorecon.reconstruct.abinitio import History
from cryorecon.simulation.simulate import simulate_images

L = 32


@pytest.fixture(scope="module")
def volume():
    return chiral_phantom(L, rng=np.random.default_rng(1))


def _corr(a, b):
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def _png_stats(path):
    import matplotlib.image as mpimg

    img = mpimg.imread(path)
    return img.shape, float(img[..., :3].std())


def test_align_to_reference_undoes_inplane_rotation_and_shift(volume):
    ref = euler_to_matrix(np.array([30.0]), np.array([70.0]), np.array([10.0]))[0]
    moved = euler_to_matrix(np.array([30.0]), np.array([70.0]), np.array([10.0 + 50.0]))[0]
    shift = np.array([2.5, -1.5])
    target = np.asarray(project(volume, ref[None].astype(np.float32)))[0]
    img = simulate_images(volume, moved[None], shifts_px=shift[None])[0][0]
    delta = plots.inplane_angle_rad(moved, ref)
    assert np.degrees(delta) == pytest.approx(50.0, abs=1e-6)
    aligned = plots.align_to_reference(img, shift, float(delta))
    assert _corr(aligned, target) > 0.97
    # the opposite turn, or ignoring the shift, is clearly worse: the test can fail
    assert _corr(plots.align_to_reference(img, shift, -float(delta)), target) < 0.8
    assert _corr(plots.align_to_reference(img, (0.0, 0.0), float(delta)), target) < _corr(aligned, target) - 0.05


def test_view_average_matches_projection(volume):
    rng = np.random.default_rng(4)
    R = random_rotations(600, rng)
    shifts = rng.normal(0, 1.5, size=(600, 2))
    images, _ = simulate_images(volume, R, shifts_px=shifts, snr=0.5, rng=rng)
    avg, members = plots.view_average(images, R, shifts, 0, tolerance_deg=12.0)
    proj = np.asarray(project(volume, R[:1].astype(np.float32)))[0]
    assert len(members) >= 3 and members[0] == 0
    assert _corr(avg, proj) > 0.8
    # with scrambled poses the average no longer resembles the projection
    wrong = random_rotations(600, np.random.default_rng(9))
    avg_bad, _ = plots.view_average(images, wrong, shifts, 0, tolerance_deg=12.0)
    assert _corr(avg_bad, proj) < _corr(avg, proj) - 0.2


def test_pick_views_are_spread():
    R = random_rotations(500, np.random.default_rng(0))
    picks = plots.pick_views(R, 6, np.random.default_rng(1))
    d = plots.view_directions(R[picks])
    cos = d @ d.T
    np.fill_diagonal(cos, -1)
    assert len(set(picks.tolist())) == 6 and np.degrees(np.arccos(cos.max())) > 40


def test_history_plot_roundtrip(tmp_path):
    h = History()
    for it in range(1, 41):
        h.add(iteration=it, loss=100 / it + 5, grad_norm=1.0, k_max_px=4 + it / 4, resolution_A=35 - it / 2,
              batch_size=64 if it < 20 else 128, seconds=it * 0.1)
    h.write_csv(tmp_path / "history.csv")
    hist = plots.read_history_csv(tmp_path / "history.csv")
    np.testing.assert_allclose(hist["batch_size"], h.as_array()[:, 5])
    plots.plot_history(tmp_path / "loss.png", hist)
    shape, std = _png_stats(tmp_path / "loss.png")
    assert shape[0] > 400 and std > 0.05


def test_slices_and_projections_png(volume, tmp_path):
    plots.plot_slices(tmp_path / "slices.png", {"map": volume, "flat": np.zeros_like(volume)}, 4.0)
    shape, std = _png_stats(tmp_path / "slices.png")
    assert shape[1] > 600 and std > 0.05
    np.testing.assert_array_equal(plots.central_slices(volume)["x"], volume[:, :, L // 2])

    rng = np.random.default_rng(2)
    R = random_rotations(300, rng)
    shifts = np.zeros((300, 2))
    images, _ = simulate_images(volume, R, shifts_px=shifts, snr=1.0, rng=rng)
    summary = plots.plot_projections(tmp_path / "projections.png", volume, R, shifts, images, 4.0, n_views=4,
                                     tolerance_deg=20.0, rng=np.random.default_rng(0))
    assert len(summary) == 4 and all(s["n_averaged"] >= 1 for s in summary)
    assert np.median([s["correlation"] for s in summary]) > 0.6
    shape, std = _png_stats(tmp_path / "projections.png")
    assert std > 0.05
    assert not list(tmp_path.glob(".*.tmp*"))  # atomic writes left no temporaries
