"""The RNN-clipping demo: BPTT by hand, the adding task, and what clipping changes."""
import numpy as np
import pytest

from cryorecon.demos import rnn_clipping as demo
from cryorecon.demos import run_demo
from cryorecon.demos._common import check_gradient


@pytest.mark.parametrize("key", ["W", "U", "b", "v", "c"])
def test_bptt_gradient_matches_central_differences(key):
    rng = np.random.default_rng(0)
    params = demo.init_params(5, 1.5, rng)
    X, y = demo.adding_task(4, 8, rng)
    _, g = demo.loss_and_grad(params, X, y)

    def with_(value):
        return {**params, key: value.reshape(params[key].shape)}

    err = check_gradient(lambda p: demo.loss(with_(p), X, y),
                         lambda p: demo.loss_and_grad(with_(p), X, y)[1][key], params[key])
    assert err < 1e-6
    assert g[key].shape == np.shape(params[key])


def test_adding_task_targets_and_mean_baseline():
    X, y = demo.adding_task(20000, 50, np.random.default_rng(1))
    assert X.shape == (20000, 50, 2)
    assert np.all(X[:, :25, 1].sum(axis=1) == 1) and np.all(X[:, 25:, 1].sum(axis=1) == 1)
    np.testing.assert_allclose(y, np.sum(X[..., 0] * X[..., 1], axis=1))
    # predicting the mean (1) scores Var(u1 + u2) = 1/6
    assert abs(np.mean((y - 1.0) ** 2) - demo.BASELINE_MSE) < 0.01


def test_init_has_the_requested_spectral_radius():
    p = demo.init_params(32, 2.5, np.random.default_rng(2))
    assert np.isclose(np.max(np.abs(np.linalg.eigvals(p["W"]))), 2.5)


def test_clipping_trains_where_plain_sgd_blows_up(tmp_path):
    m = run_demo("rnn_clipping", out_dir=tmp_path, quick=True, seed=0)
    png = tmp_path / "rnn_clipping.png"
    assert png.exists() and png.stat().st_size > 5000
    assert np.isclose(m["spectral_radius"], 2.5)
    assert m["initial_grad_norm"] > 100  # the gradient explodes at the start
    # unclipped: Inf/NaN, or one exploding step throws the weights orders of magnitude away
    assert (not m["unclipped_finite"]) or m["unclipped_max_param_norm"] > 100 * m["initial_param_norm"]
    # clipped: finite, weights stay put, and the held-out loss falls below predicting the mean
    assert m["clipped_finite"]
    assert m["clipped_max_param_norm"] < 3 * m["initial_param_norm"]
    assert m["clipped_final_eval"] < m["baseline"]
    assert m["clipped_best_eval"] < 0.8 * m["baseline"]
    assert m["clipped_best_eval"] < m["unclipped_best_eval"]
