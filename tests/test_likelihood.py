"""The marginal likelihood's gradient against central differences, and its pieces."""
import numpy as np
import pytest
from _nohost import _DeviceLike, _HostValue, _NoHostXP

from cryorecon.forward import fourier, projector
from cryorecon.forward.masks import soft_sphere
from cryorecon.scoring import likelihood, pose_search
from cryorecon.geometry.rotations import random_rotations


def _tiny_problem(rng, L=16, n_images=3, n_rot=6, n_shift=3, with_ctf=True):
    volume = rng.standard_normal((L, L, L)) * soft_sphere(L, L / 3, 2, ndim=3).astype(np.float64)
    rotations = random_rotations(n_rot, rng)
    shifts = rng.uniform(-1.5, 1.5, size=(n_shift, 2))
    truth = projector.project(volume, rotations[:n_images])
    images = truth + 0.3 * rng.standard_normal(truth.shape)
    ctf = None
    if with_ctf:
        ctf = {
            "defocus_u_A": rng.uniform(1e4, 2e4, n_images),
            "defocus_v_A": rng.uniform(1e4, 2e4, n_images),
            "defocus_angle_deg": rng.uniform(0, 180, n_images),
            "voltage_kV": np.full(n_images, 300.0),
            "cs_mm": np.full(n_images, 2.7),
            "amplitude_contrast": np.full(n_images, 0.1),
        }
    band = likelihood.Band.make(L, L / 2 - 1)
    noise = likelihood.NoiseModel(np.full(L // 2 + 2, 40.0))
    # a second, different map so the gradient is not evaluated at the data's optimum
    start = volume + 0.5 * rng.standard_normal(volume.shape)
    return start, images, ctf, rotations, shifts, noise, band


@pytest.mark.parametrize("with_ctf", [True, False])
def test_marginal_gradient_matches_central_differences(with_ctf):
    rng = np.random.default_rng(3)
    vol, images, ctf, rot, shifts, noise, band = _tiny_problem(rng, with_ctf=with_ctf)
    pixel = 4.0
    log_prior = -0.5 * np.sum(shifts**2, axis=1)

    def fun(v):
        return likelihood.marginal_nll_and_grad(v, images, pixel, ctf, rot, shifts, noise, band, log_prior_shift=log_prior)

    nll, grad = fun(vol)
    assert np.isfinite(nll) and grad.dtype == np.float64
    eps = 1e-5
    probe = rng.choice(vol.size, size=25, replace=False)
    worst = 0.0
    for flat_index in probe:
        idx = np.unravel_index(flat_index, vol.shape)
        vp, vm = vol.copy(), vol.copy()
        vp[idx] += eps
        vm[idx] -= eps
        numeric = (fun(vp)[0] - fun(vm)[0]) / (2 * eps)
        worst = max(worst, abs(numeric - grad[idx]) / max(abs(numeric), 1e-3 * np.abs(grad).max()))
    assert worst < 1e-5


def test_errors_equal_direct_residuals():
    """The expanded GEMM form of E equals sum_k w |Y - C S P|^2 computed directly."""
    rng = np.random.default_rng(0)
    b, t, r, m = 4, 3, 5, 30
    y = rng.standard_normal((b, m)) + 1j * rng.standard_normal((b, m))
    ctf = rng.standard_normal((b, m))
    w = rng.uniform(0.5, 2, m)
    phases = np.exp(1j * rng.uniform(0, 2 * np.pi, (t, m)))
    slices = rng.standard_normal((r, m)) + 1j * rng.standard_normal((r, m))
    terms = pose_search.batch_terms(y, ctf, w, phases)
    err = pose_search.errors_shared(terms, slices)
    direct = np.einsum("k,itrk->itr", w, np.abs(y[:, None, None, :] - ctf[:, None, None, :] * phases[None, :, None, :] * slices[None, None, :, :]) ** 2)
    np.testing.assert_allclose(err, direct, rtol=1e-10)
    per_image = pose_search.errors_per_image(terms, np.broadcast_to(slices, (b, r, m)))
    np.testing.assert_allclose(per_image, direct, rtol=1e-10)


def test_global_search_chunks_agree_with_one_pass():
    rng = np.random.default_rng(1)
    b, t, r, m = 5, 4, 37, 20
    y = rng.standard_normal((b, m)) + 1j * rng.standard_normal((b, m))
    terms = pose_search.batch_terms(y, np.ones((b, m)), np.ones(m), np.exp(1j * rng.uniform(0, 6, (t, m))))
    slices = rng.standard_normal((r, m)) + 1j * rng.standard_normal((r, m))
    whole = pose_search.global_search(terms, lambda a, z: slices[a:z], r, k=3, chunk=r)
    chunked = pose_search.global_search(terms, lambda a, z: slices[a:z], r, k=3, chunk=7)
    np.testing.assert_array_equal(whole.r_idx, chunked.r_idx)
    np.testing.assert_array_equal(whole.t_idx, chunked.t_idx)
    np.testing.assert_allclose(whole.log_evidence, chunked.log_evidence, rtol=1e-12)
    err = pose_search.errors_shared(terms, slices).reshape(b, -1)
    np.testing.assert_allclose(whole.neg_logp[:, 0], err.min(axis=1), rtol=1e-12)


def test_noise_model_update_moves_toward_residuals():
    band = likelihood.Band.make(16, 7)
    noise = likelihood.NoiseModel(np.ones(9, dtype=np.float32))
    noise.update(band, np.full(band.size, 3.0), rate=0.5)
    inside = np.unique(band.shell)
    np.testing.assert_allclose(noise.sigma2[inside], 2.0)
    assert noise.sigma2[8] == 1.0


# ------------------------------------------- per-shell sums without host values
def _loop_shell_sums(shells, values, n_shells):
    total, count = np.zeros(n_shells), np.zeros(n_shells)
    for s, v in zip(shells.tolist(), values.tolist()):
        if 0 <= s < n_shells:
            total[s] += v
            count[s] += 1
    return total, count


@pytest.mark.parametrize("xp", [np, _NoHostXP()], ids=["numpy", "device-branch"])
def test_shell_sums_drop_out_of_range_shells_like_a_loop(xp):
    rng = np.random.default_rng(7)
    n_shells = 9
    shells = rng.integers(-3, n_shells + 5, size=500)
    values = rng.standard_normal(500).astype(np.float32)
    ref_total, ref_count = _loop_shell_sums(shells, values.astype(np.float64), n_shells)
    dev = (lambda a: a.view(_DeviceLike)) if xp is not np else (lambda a: a)
    total, count = (np.asarray(a) for a in likelihood.shell_sums(xp, dev(shells), dev(values), n_shells))
    assert total.shape == count.shape == (n_shells,)
    assert total.dtype == count.dtype == np.float64
    np.testing.assert_array_equal(count, ref_count)
    np.testing.assert_allclose(total, ref_total, rtol=1e-12, atol=1e-12)
    # every entry out of range: all zero, nothing raised
    total, count = likelihood.shell_sums(xp, dev(np.full(4, n_shells + 2)), dev(np.ones(4)), n_shells)
    assert not np.any(np.asarray(total)) and not np.any(np.asarray(count))


def _reference_update(sigma2, shells, residual_power, rate):
    """NoiseModel.update spelled out shell by shell."""
    out = sigma2.astype(np.float64).copy()
    for s in range(sigma2.shape[0]):
        mine = residual_power[shells == s].astype(np.float64)
        if mine.size:
            out[s] = (1 - rate) * sigma2[s] + rate * mine.mean()
    return out.astype(sigma2.dtype)


@pytest.mark.parametrize("k_max", [7, 5.5, 9])
def test_noise_model_update_equals_a_per_shell_reference(k_max):
    rng = np.random.default_rng(8)
    band = likelihood.Band.make(16, k_max)
    sigma2 = rng.uniform(1, 3, 9).astype(np.float32)
    power = rng.uniform(0, 5, band.size).astype(np.float32)
    noise = likelihood.NoiseModel(sigma2.copy())
    noise.update(band, power, rate=0.3)
    assert noise.sigma2.dtype == np.float32
    # k_max 9 puts band shells 9 (past the 9 tracked ones) in the band: they are dropped
    np.testing.assert_allclose(noise.sigma2, _reference_update(sigma2, band.shell, power, 0.3), rtol=1e-6)


def test_noise_model_needs_no_host_value_on_the_device_branch(monkeypatch):
    rng = np.random.default_rng(9)
    xp = _NoHostXP()
    monkeypatch.setattr(likelihood, "array_module", lambda *a: xp)
    band = likelihood.Band.make(16, 9, xp)
    sigma2 = rng.uniform(1, 3, 9).astype(np.float32)
    power = rng.uniform(0, 5, band.size).astype(np.float32)
    noise = likelihood.NoiseModel(sigma2.view(_DeviceLike).copy())
    noise.update(band, power.view(_DeviceLike), rate=0.3)
    np.testing.assert_allclose(np.asarray(noise.sigma2), _reference_update(sigma2, np.asarray(band.shell), power, 0.3), rtol=1e-6)
    images = rng.standard_normal((5, 16, 16)) + 1j * rng.standard_normal((5, 16, 16))
    from_device = likelihood.NoiseModel.from_images(images.view(_DeviceLike), 12).sigma2
    monkeypatch.undo()
    np.testing.assert_array_equal(np.asarray(from_device), likelihood.NoiseModel.from_images(images, 12).sigma2)


def test_noise_from_images_fills_empty_shells_with_the_last_populated_one():
    L, n_shells = 12, 15  # the half-plane grid of 12 reaches shell round(6 sqrt 2) = 8
    rng = np.random.default_rng(10)
    images = rng.standard_normal((4, L, L)) + 1j * rng.standard_normal((4, L, L))
    got = likelihood.NoiseModel.from_images(images, n_shells).sigma2
    shells = fourier.shell_index(L, 2).ravel()
    power = np.mean(np.abs(images.reshape(4, -1)) ** 2, axis=0)
    ref = np.zeros(n_shells)
    populated = [s for s in range(n_shells) if np.any(shells == s)]
    for s in populated:
        ref[s] = power[shells == s].mean()
    ref[max(populated) + 1:] = ref[max(populated)]
    assert max(populated) < n_shells - 1  # the fill is exercised
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, ref, rtol=1e-6)


@pytest.mark.parametrize("L", [16, 15, 32])
def test_truncated_band_equals_a_band_made_at_that_limit(L):
    widest = likelihood.Band.make(L, L / 2 - 1)
    for k in np.round(np.arange(1.0, L / 2 - 1 + 1e-9, 0.1), 1):
        cut, made = widest.truncated(float(k)), likelihood.Band.make(L, float(k))
        assert cut.k_max_px == made.k_max_px and cut.size == made.size
        for name in ("coords", "multiplicity", "shell", "radius"):
            np.testing.assert_array_equal(getattr(cut, name), getattr(made, name))
        assert cut.coords.base is not None  # a view of the widest band, not a copy
    with pytest.raises(ValueError):
        widest.truncated(L / 2)
