"""The marginal likelihood's gradient against central differences, and its pieces."""
import numpy as np
import pytest

from cryorecon import fourier, likelihood, pose_search, projector
from cryorecon.geometry.rotations import random_rotations


def _tiny_problem(rng, L=16, n_images=3, n_rot=6, n_shift=3, with_ctf=True):
    volume = rng.standard_normal((L, L, L)) * fourier.soft_sphere_mask(L, L / 3, 2, ndim=3).astype(np.float64)
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
