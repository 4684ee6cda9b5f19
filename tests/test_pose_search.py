"""Pose search against ASPIRE's simulated particles (an outside referee)."""
import numpy as np
import pytest

from cryorecon import fourier, likelihood, projector
from cryorecon.geometry.rotations import angular_distance_deg
from cryorecon.io.mrc import read_map
from cryorecon.io.particles import ParticleStack
from cryorecon.reconstruct.engine import SearchGrids, evaluate_batch


@pytest.fixture(scope="module")
def aspire(shared_data):
    stack = ParticleStack.from_star(shared_data / "aspire_ctf_shift_200" / "particles.star")
    volume, _ = read_map(shared_data / "ribosome70S" / "ribosome70S_L64.mrc")
    return stack, volume


def test_best_pose_within_one_grid_step(aspire):
    """True map + nearly clean particles: the best pose lies within one coarse step."""
    stack, volume = aspire
    L, px = stack.box, stack.pixel_size_A
    images = stack.images(np.arange(stack.n))
    band = likelihood.Band.make(L, L * px / 12.0)  # 12 A
    noise = likelihood.NoiseModel.from_images(fourier.fft2c(images), L // 2 + 2)
    grids = SearchGrids.make(np, coarse_step_deg=15.0, max_shift_px=6.0, shift_step_px=2.0)
    f_pad = projector.volume_ft(volume)
    y = likelihood.image_coefficients(images, band)
    ctf = likelihood.ctf_on_band(band, px, stack.ctf_params(), stack.n, np)
    out = evaluate_batch([f_pad], y, ctf, noise, band, grids, k_coarse_px=L * px / 25.0)
    err = angular_distance_deg(out.best_rotation.astype(np.float64), stack.rotations)
    shift_err = np.hypot(*(out.best_shift - stack.shifts_A / px).T)
    assert np.mean(err <= grids.coarse_step_deg) >= 0.98
    # the local stage works at half the coarse step, so most land within that too
    assert np.median(err) <= grids.coarse_step_deg / 2
    assert np.median(shift_err) <= 1.0


def test_pose_accuracy_figures(aspire, capsys):
    """Report the measured accuracy (kept as a test so the numbers stay honest)."""
    stack, volume = aspire
    L, px = stack.box, stack.pixel_size_A
    images = stack.images(np.arange(64))
    band = likelihood.Band.make(L, L * px / 12.0)
    noise = likelihood.NoiseModel.from_images(fourier.fft2c(images), L // 2 + 2)
    grids = SearchGrids.make(np, coarse_step_deg=15.0)
    y = likelihood.image_coefficients(images, band)
    ctf = likelihood.ctf_on_band(band, px, stack.ctf_params(np.arange(64)), 64, np)
    out = evaluate_batch([projector.volume_ft(volume)], y, ctf, noise, band, grids, k_coarse_px=L * px / 25.0)
    err = angular_distance_deg(out.best_rotation.astype(np.float64), stack.rotations[:64])
    # a wrong-hand or transposed convention would put the median near 90-120 degrees
    assert np.percentile(err, 90) < 10.0


def test_balanced_class_weights_share_the_batch_by_relative_fit():
    from cryorecon.reconstruct.engine import _balanced_class_weights

    rng = np.random.default_rng(0)
    # class 0 fits every image far better; balancing must still split the batch,
    # sending to class 1 the images that fit class 1 relatively best
    log_ev = np.stack([rng.normal(0, 5, 200) + 50, rng.normal(0, 5, 200)], axis=1)
    q = _balanced_class_weights(log_ev)
    np.testing.assert_allclose(q.sum(axis=0), [100, 100], rtol=0.05)
    np.testing.assert_allclose(q.sum(axis=1), 1.0, rtol=1e-6)
    diff = log_ev[:, 1] - log_ev[:, 0]
    assert np.all(np.diff(q[np.argsort(diff), 1]) >= -1e-9)
