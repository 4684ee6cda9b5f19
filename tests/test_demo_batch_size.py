"""The batch-size demo: its gradients, its Monte Carlo, and the Chebyshev bound it shows."""
import numpy as np

from cryorecon.demos import batch_size as demo
from cryorecon.demos import run_demo
from cryorecon.demos._common import check_gradient


def _small_problem(rng, n=40, d=6):
    X = demo.add_bias(rng.standard_normal((n, d)))
    y = rng.integers(0, demo.N_CLASSES, size=n)
    W = 0.3 * rng.standard_normal((d + 1, demo.N_CLASSES))
    return W, X, y


def test_softmax_gradient_matches_central_differences():
    rng = np.random.default_rng(1)
    W, X, y = _small_problem(rng)
    err = check_gradient(lambda w: demo.loss(w, X, y, 1e-2), lambda w: demo.grad(w, X, y, 1e-2), W)
    assert err < 1e-6


def test_per_example_gradients_average_to_the_full_gradient():
    rng = np.random.default_rng(2)
    W, X, y = _small_problem(rng)
    G = demo.per_example_grads(W, X, y, 1e-2)
    assert G.shape == (len(X), W.size)
    np.testing.assert_allclose(G.mean(axis=0), demo.grad(W, X, y, 1e-2).ravel(), atol=1e-13)
    # one row is the gradient of that example's loss alone
    err = check_gradient(lambda w: demo.loss(w, X[3:4], y[3:4], 1e-2),
                         lambda w: demo.per_example_grads(w, X[3:4], y[3:4], 1e-2)[0], W)
    assert err < 1e-6


def test_batch_error_second_moment_is_trace_cov_over_B():
    rng = np.random.default_rng(3)
    G = rng.standard_normal((300, 5)) * np.array([3.0, 1.0, 0.5, 0.2, 0.1]) + 1.0
    trace_cov = np.sum((G - G.mean(axis=0)) ** 2) / len(G)
    for b in (1, 4, 16):
        errs = demo.batch_error_norms(G, b, 20000, rng)
        np.testing.assert_allclose(np.mean(errs**2), trace_cov / b, rtol=0.05)


def test_demo_bound_holds_and_failure_falls_with_B(tmp_path):
    m = run_demo("batch_size", out_dir=tmp_path, quick=True, seed=0)
    png = tmp_path / "batch_size.png"
    assert png.exists() and png.stat().st_size > 5000
    assert m["B_bound"] == int(np.ceil(m["trace_cov"] / (m["delta"] * m["eps"] ** 2)))
    assert m["failure_at_bound"] <= m["delta"]
    rates = np.array(m["failure_rates"])
    sizes = np.array(m["batch_sizes"])
    assert np.all(np.diff(sizes) > 0)
    assert rates[0] > 0.5 and rates[-1] <= m["delta"]
    assert np.all(np.diff(rates) <= 0.02), rates  # falls as B grows (up to Monte Carlo noise)
    # Chebyshev is conservative: a smaller batch already meets the tolerance
    assert m["B_empirical"] < m["B_bound"]
    assert m["conservatism"] > 1.5
