"""The engine's GPU branch, run on the CPU with a numpy that refuses host round-trips.

Issue 6 asks that an iteration need nothing from the host. On a GPU that is checked with
cupy's synchronisation detector (tests/test_gpu_iteration.py); here the same code runs with numpy
standing in for cupy (:mod:`_nohost`): every ``bool``/``float`` of an array, boolean
mask and ``nonzero`` raises. The custom kernels are replaced by their numpy references.
"""
import numpy as np
import pytest
from _nohost import _DeviceLike, _NoHostXP

from cryorecon.forward import ctf as ctf_module
from cryorecon.forward import fourier, projector
from cryorecon.backend import kernels, memory
from cryorecon.scoring import likelihood, pose_search
from cryorecon.geometry.rotations import random_rotations
from cryorecon.simulation.phantom import chiral_phantom
from cryorecon.reconstruct import engine
from cryorecon.simulation.simulate import simulate_images

XP = _NoHostXP()


def _device(a):
    return np.asarray(a).view(_DeviceLike)


def _host(a):
    return np.asarray(a).view(np.ndarray)


@pytest.fixture
def device_branch(monkeypatch):
    """Route every module's array_module to the stand-in for stand-in arrays."""

    def array_module(*arrays):
        return XP if any(isinstance(a, _DeviceLike) for a in arrays) else np

    for module in (projector, pose_search, fourier, likelihood, engine, ctf_module):
        monkeypatch.setattr(module, "array_module", array_module)
    monkeypatch.setattr(
        kernels, "extract", lambda vol, rot, coords, pad=2: _device(projector.extract(_host(vol), _host(rot), _host(coords), pad))
    )
    monkeypatch.setattr(
        kernels,
        "backproject",
        lambda values, rot, coords, shape, pad=2, real=False: _device(
            (projector.backproject_weights if real else projector.backproject)(_host(values), _host(rot), _host(coords), shape, pad)
        ),
    )
    monkeypatch.setattr(kernels, "assemble_errors", pose_search.assemble_errors)
    monkeypatch.setattr(memory, "free_bytes", lambda xp=None: 1 << 30)
    return XP



def _problem():
    L, px, n = 20, 6.0, 12
    rng = np.random.default_rng(5)
    volume = chiral_phantom(L, rng=0)
    images, _ = simulate_images(volume, random_rotations(n, rng), pixel_size_A=px, snr=1.0, rng=rng)
    images = (images / images.std()).astype(np.float32)
    params = {
        "defocus_u_A": rng.uniform(1.5e4, 2.5e4, n),
        "defocus_v_A": rng.uniform(1.5e4, 2.5e4, n),
        "defocus_angle_deg": np.zeros(n),
        "voltage_kV": np.full(n, 300.0),
        "cs_mm": np.full(n, 2.7),
        "amplitude_contrast": np.full(n, 0.1),
    }
    return volume / images.std(), images, params, L, px


def _batch(xp, volume, images, params, L, px, n_classes=1):
    put = _device if xp is XP else np.asarray
    band = likelihood.Band.make(L, L * px / 15.0, xp)
    y = likelihood.image_coefficients(put(images), band)
    ctf = likelihood.ctf_on_band(band, px, {k: put(v) for k, v in params.items()}, len(images), xp)
    if xp is XP:  # the inputs really are on the "device", so the engine takes its GPU branch
        assert isinstance(y, _DeviceLike) and isinstance(ctf, _DeviceLike)
    noise = likelihood.NoiseModel(put(np.full(L // 2 + 2, float(L * L), np.float32)))
    grids = engine.SearchGrids.make(xp, coarse_step_deg=30.0, max_shift_px=2.0, shift_step_px=2.0)
    # a second class: the same map mirrored, so that the two really compete
    f_pads = [projector.volume_ft(put(v.astype(np.float32))) for v in (volume, volume[::-1].copy())[:n_classes]]
    assert isinstance(f_pads[0], _DeviceLike) == (xp is XP)
    out = engine.evaluate_batch(f_pads, y, ctf, noise, band, grids, band.k_max_px / 2, engine.SearchOptions(n_groups=2, compact_rows=False))
    noise.update(band, out.residual_power)
    return out, noise


def test_one_class_batch_needs_no_host_value(device_branch):
    volume, images, params, L, px = _problem()
    out, noise = _batch(device_branch, volume, images, params, L, px)
    assert isinstance(out.grad[0], _DeviceLike) and isinstance(out.nll, _DeviceLike)
    # and the device branch computes what the CPU branch does
    ref, ref_noise = _batch(np, volume, images, params, L, px)
    np.testing.assert_array_equal(_host(out.best_rotation), ref.best_rotation)
    scale = np.abs(ref.grad[0]).max()
    np.testing.assert_allclose(_host(out.grad[0]), ref.grad[0], atol=1e-5 * scale)
    np.testing.assert_allclose(_host(noise.sigma2), ref_noise.sigma2, rtol=1e-5)


def test_two_class_batch_needs_no_host_value(device_branch):
    """Several classes too: each class's rows are a fixed block, selected without a sync."""
    volume, images, params, L, px = _problem()
    out, _ = _batch(device_branch, volume, images, params, L, px, n_classes=2)
    ref, _ = _batch(np, volume, images, params, L, px, n_classes=2)
    np.testing.assert_array_equal(_host(out.best_class), ref.best_class)
    for k in (0, 1):
        scale = np.abs(ref.grad[k]).max()
        assert scale > 0
        np.testing.assert_allclose(_host(out.grad[k]), ref.grad[k], atol=1e-5 * scale)


def test_smallest_on_the_device_branch_equals_numpy(device_branch):
    """k rounds of argmin give numpy's k smallest, in order; the input is kept unless
    the caller lets it be overwritten."""
    values = np.random.default_rng(2).standard_normal((6, 50)).astype(np.float32)
    ref_idx, ref_vals = pose_search.smallest(values, 4)
    kept = _device(values.copy())
    idx, vals = pose_search.smallest(kept, 4)
    np.testing.assert_array_equal(_host(idx), ref_idx)
    np.testing.assert_array_equal(_host(vals), ref_vals)
    np.testing.assert_array_equal(_host(kept), values)
    scratch = _device(values.copy())
    idx, vals = pose_search.smallest(scratch, 4, overwrite=True)
    np.testing.assert_array_equal(_host(idx), ref_idx)
    np.testing.assert_array_equal(_host(vals), ref_vals)
    assert np.isinf(_host(scratch)).sum() == 6 * 4  # its k smallest were used up in place


def test_the_stand_in_catches_a_host_value(device_branch):
    """The check can fail: the CPU branch's row compaction uses nonzero."""
    volume, images, params, L, px = _problem()
    band = likelihood.Band.make(L, L * px / 15.0, XP)
    y = likelihood.image_coefficients(_device(images), band)
    ctf = XP.ones(y.shape, dtype=np.float32)
    noise = likelihood.NoiseModel(_device(np.full(L // 2 + 2, float(L * L), np.float32)))
    grids = engine.SearchGrids.make(XP, coarse_step_deg=30.0, max_shift_px=2.0, shift_step_px=2.0)
    f_pad = projector.volume_ft(_device(volume.astype(np.float32)))
    with pytest.raises(AssertionError, match="data-dependent|host"):
        engine.evaluate_batch([f_pad], y, ctf, noise, band, grids, band.k_max_px / 2, engine.SearchOptions(compact_rows=True))
