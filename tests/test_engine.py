"""The engine's batch: the GPU's fixed-size row layout equals the CPU's compacted one."""
import numpy as np
import pytest

from cryorecon.forward import fourier, projector
from cryorecon.scoring import likelihood
from cryorecon.geometry.rotations import random_rotations
from cryorecon.simulation.phantom import chiral_phantom
from cryorecon.reconstruct.engine import SearchGrids, SearchOptions, evaluate_batch
from cryorecon.simulation.simulate import simulate_images


@pytest.fixture(scope="module")
def batch():
    L, px, n = 24, 6.0, 16
    rng = np.random.default_rng(3)
    volume = chiral_phantom(L, rng=0)
    rotations = random_rotations(n, rng)
    images, _ = simulate_images(volume, rotations, pixel_size_A=px, snr=0.5, rng=rng)
    images = (images / images.std()).astype(np.float32)
    band = likelihood.Band.make(L, L * px / 15.0)
    noise = likelihood.NoiseModel.from_images(fourier.fft2c(images), L // 2 + 2)
    y = likelihood.image_coefficients(images, band)
    ctf = likelihood.ctf_on_band(band, px, None, n, np)
    grids = SearchGrids.make(np, coarse_step_deg=30.0, max_shift_px=2.0, shift_step_px=2.0)
    f_pad = projector.volume_ft((volume / images.std()).astype(np.float32))
    other = chiral_phantom(L, rng=0, arm=False)  # a second class: the complex without its arm
    f_pad2 = projector.volume_ft((other / images.std()).astype(np.float32))
    return dict(f_pad=f_pad, f_pad2=f_pad2, y=y, ctf=ctf, noise=noise, band=band, grids=grids, rotations=rotations)


@pytest.mark.parametrize("n_groups", [0, 4])
@pytest.mark.parametrize("n_classes", [1, 2])
def test_fixed_rows_equal_compacted_rows(batch, n_groups, n_classes):
    b = batch
    f_pads = [b["f_pad"], b["f_pad2"]][:n_classes]
    args = (f_pads, b["y"], b["ctf"], b["noise"], b["band"], b["grids"], b["band"].k_max_px / 2)
    compact = evaluate_batch(*args, SearchOptions(n_groups=n_groups, compact_rows=True))
    fixed = evaluate_batch(*args, SearchOptions(n_groups=n_groups, compact_rows=False))
    np.testing.assert_array_equal(fixed.best_rotation, compact.best_rotation)
    np.testing.assert_array_equal(fixed.best_class, compact.best_class)
    assert float(fixed.nll) == pytest.approx(float(compact.nll), rel=1e-6)
    for k in range(n_classes):
        scale = np.abs(compact.grad[k]).max()
        assert scale > 0
        np.testing.assert_allclose(fixed.grad[k], compact.grad[k], atol=1e-5 * scale)
        np.testing.assert_allclose(fixed.curvature[k], compact.curvature[k], atol=1e-5 * np.abs(compact.curvature[k]).max())
        if n_groups:
            assert len(fixed.group_grads[k]) == n_groups
            total = sum(fixed.group_grads[k][1:], fixed.group_grads[k][0])
            np.testing.assert_allclose(total, fixed.grad[k], atol=1e-5 * scale)
            for g in range(n_groups):
                np.testing.assert_allclose(fixed.group_grads[k][g], compact.group_grads[k][g], atol=1e-5 * scale)
    if n_classes == 2:  # both classes took images, so both layouts really were exercised
        assert 0 < np.mean(compact.best_class) < 1


def test_two_identical_classes_share_every_image_evenly(batch):
    """Classes are marginalised: two copies of one map get half of every image's weight."""
    b = batch
    rot, shifts = b["rotations"].astype(np.float32), np.zeros((len(b["rotations"]), 2), np.float32)
    args = (b["y"], b["ctf"], b["noise"], b["band"], b["grids"], b["band"].k_max_px / 2)
    # no cap on poses per image: two classes have twice as many, and a cap would cut them differently
    one = evaluate_batch([b["f_pad"]], *args, SearchOptions(max_poses=10**6), local_poses=(rot, shifts))
    two = evaluate_batch([b["f_pad"], b["f_pad"]], *args, SearchOptions(max_poses=10**6), local_poses=(rot, shifts))
    np.testing.assert_allclose(two.class_probability, 0.5, atol=1e-6)
    scale = np.abs(one.grad[0]).max()
    for k in (0, 1):
        np.testing.assert_allclose(two.grad[k], 0.5 * one.grad[0], atol=1e-4 * scale)
    # the marginal over two equal classes costs exactly log 2 per image in the prior
    assert float(two.nll) == pytest.approx(float(one.nll), rel=1e-6)
