"""Demo `gan_dynamics`: Dirac-GAN closed forms (Mescheder et al. 2018) and MLP-GAN gradients."""
import numpy as np
import pytest

from cryorecon.demos import gan_dynamics as demo
from cryorecon.demos import run_demo
from cryorecon.demos._common import check_gradient


def _flat_check(loss_of_params, params, rng):
    """check_gradient over a dict of arrays, through one flat float64 vector."""
    keys = sorted(params)
    shapes = [params[k].shape for k in keys]
    sizes = [params[k].size for k in keys]

    def unflat(v):
        parts = np.split(v, np.cumsum(sizes)[:-1])
        return {k: p.reshape(s) for k, p, s in zip(keys, parts, shapes)}

    def fun(v):
        return loss_of_params(unflat(v))[0]

    def grad(v):
        g = loss_of_params(unflat(v))[1]
        return np.concatenate([g[k].ravel() for k in keys])

    x = np.concatenate([params[k].ravel() for k in keys])
    return check_gradient(fun, grad, x, n_probe=60, rng=rng)


@pytest.mark.parametrize("kind", ["wgan", "gan"])
@pytest.mark.parametrize("gamma", [0.0, 0.7])
def test_dirac_gradients_match_finite_differences(kind, gamma):
    for theta, psi in [(0.8, -0.3), (-1.7, 2.2)]:
        e_theta = check_gradient(
            lambda v: float(demo.dirac_value(v[0], psi, kind, gamma)),
            lambda v: np.array([demo.dirac_gradients(v[0], psi, kind, gamma)[0]]),
            np.array([theta]),
        )
        e_psi = check_gradient(
            lambda v: float(demo.dirac_value(theta, v[0], kind, gamma)),
            lambda v: np.array([demo.dirac_gradients(theta, v[0], kind, gamma)[1]]),
            np.array([psi]),
        )
        assert e_theta < 1e-7 and e_psi < 1e-7


def test_mlp_gan_gradients_match_finite_differences():
    rng = np.random.default_rng(0)
    g_params = demo.init_mlp([2, 7, 6, 2], rng)
    d_params = demo.init_mlp([2, 5, 4, 1], rng)
    for p in list(g_params.values()) + list(d_params.values()):
        p += 0.1 * rng.standard_normal(p.shape)  # non-zero biases exercise every term
    # tolerance 1e-4: a few components are ~1e-6, where float64 differencing error shows
    real = demo.ring_of_gaussians(9, rng)
    fake = rng.standard_normal((7, 2))
    z = rng.standard_normal((8, 2))
    assert _flat_check(lambda d: demo.discriminator_loss(d, real, fake), d_params, rng) < 1e-4
    assert _flat_check(lambda g: demo.generator_loss(g, d_params, z), g_params, rng) < 1e-4


def test_simultaneous_steps_follow_the_closed_form_exactly():
    eta = 0.3
    path = demo.dirac_trajectory(0.7, -0.2, eta, 50, "simultaneous", "wgan")
    norms = np.linalg.norm(path, axis=1)
    np.testing.assert_allclose(norms[1:] / norms[:-1], np.sqrt(1 + eta**2), rtol=0, atol=1e-9)


def test_demo_reproduces_the_dirac_gan_results(tmp_path):
    m = run_demo("gan_dynamics", out_dir=tmp_path, quick=True, seed=0)
    png = tmp_path / "gan_dynamics.png"
    assert png.exists() and png.stat().st_size > 5_000
    assert m["simultaneous_ratio_max_abs_err"] < 1e-9
    assert m["simultaneous_growth"] == pytest.approx(m["predicted_growth"], rel=1e-9)
    assert m["simultaneous_growth"] > 2.0
    # alternating: bounded and not drifting
    assert m["alternating_max_norm_over_initial"] < 1.5
    assert m["alternating_late_over_early_max"] == pytest.approx(1.0, abs=0.05)
    # the R1 penalty turns both games convergent
    assert m["r1_wgan_final_norm"] < 1e-3
    assert m["r1_gan_final_norm"] < 1e-2
    assert m["gan_simultaneous_growth"] > 1.0
