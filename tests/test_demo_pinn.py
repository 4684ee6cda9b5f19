"""PINN demo: analytic input derivatives, hand-written parameter gradients, Adam -> L-BFGS."""
import numpy as np

from cryorecon.demos import pinn, run_demo
from cryorecon.demos._common import check_gradient


def _flat(params):
    keys = sorted(params)
    shapes = [params[k].shape for k in keys]

    def unflat(v):
        out, i = {}, 0
        for k, s in zip(keys, shapes):
            n = int(np.prod(s))
            out[k] = v[i:i + n].reshape(s)
            i += n
        return out

    return np.concatenate([params[k].ravel() for k in keys]), unflat, keys


def test_second_derivative_matches_finite_differences():
    rng = np.random.default_rng(1)
    p = pinn.init_params(7, rng)
    x = rng.uniform(0.1, 0.9, 5)
    h = 1e-4
    u_p, _ = pinn.network(p, x + h)
    u_0, u_xx = pinn.network(p, x)
    u_m, _ = pinn.network(p, x - h)
    fd = (u_p - 2 * u_0 + u_m) / h ** 2
    np.testing.assert_allclose(u_xx, fd, rtol=1e-4, atol=1e-3 * np.abs(u_xx).max())


def test_loss_gradient_check():
    rng = np.random.default_rng(2)
    p = pinn.init_params(6, rng)
    x = rng.uniform(0.0, 1.0, 9)
    flat, unflat, keys = _flat(p)

    def f(v):
        return pinn.loss_and_grad(unflat(v), x)[0]

    def g(v):
        grads = pinn.loss_and_grad(unflat(v), x)[1]
        return np.concatenate([grads[k].ravel() for k in keys])

    # u'' carries w^2 tanh''(w x + b) with |w| ~ 8, so round-off, not truncation,
    # limits the differences: a step of 1e-4 is the accurate one here.
    assert check_gradient(f, g, flat, eps=1e-4) < 1e-6


def test_per_point_gradients_average_to_the_residual_gradient():
    rng = np.random.default_rng(3)
    p = pinn.init_params(4, rng)
    x = rng.uniform(0.0, 1.0, 6)
    l, per_point = pinn.per_point_loss_grads(p, x)
    full, grads = pinn.loss_and_grad(p, x)
    lb, gb = pinn.boundary_loss_grad(p)
    assert np.isclose(l.mean() + lb, full)
    for k in p:
        np.testing.assert_allclose(per_point[k].mean(0) + gb[k], grads[k], rtol=1e-12, atol=1e-14)


def test_demo_adam_then_lbfgs_beats_adam_alone(tmp_path):
    m = run_demo("pinn", out_dir=tmp_path, quick=True, seed=0)
    png = tmp_path / "pinn.png"
    assert png.exists() and png.stat().st_size > 5000
    # Raissi et al.'s recipe: at least 3x lower loss for the same gradient budget.
    assert m["loss_adam"] >= 3.0 * m["loss_adam_then_lbfgs"]
    # The switch was made by the SNR controller after the warm-up, not at the end.
    assert 0.25 <= m["switched_at_fraction"] < 1.0
    assert m["budget_used_hybrid"] <= m["budget_per_point_grads"]
    assert m["rel_l2_adam_then_lbfgs"] < m["rel_l2_adam"]
    assert m["rel_l2_adam_then_lbfgs"] < 0.05
