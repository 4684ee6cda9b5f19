"""The accumulation demo: exact large-batch equivalence and the linear-scaling rule's limit."""
import numpy as np

from cryorecon.demos import accumulation as demo
from cryorecon.demos import run_demo
from cryorecon.demos._common import check_gradient


def test_least_squares_gradient_matches_central_differences():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((30, 5))
    Y = rng.standard_normal((30, 3))
    W = rng.standard_normal((5, 3))
    assert check_gradient(lambda w: demo.loss(w, X, Y), lambda w: demo.grad(w, X, Y), W) < 1e-6


def test_curvature_is_the_top_hessian_eigenvalue():
    rng = np.random.default_rng(1)
    X = rng.standard_normal((40, 6))
    Y = np.zeros((40, 1))
    L = demo.curvature_max(X)
    # along its eigenvector the gradient grows at rate L, and nowhere faster
    v = np.linalg.eigh(X.T @ X)[1][:, -1:]
    np.testing.assert_allclose(demo.grad(v, X, Y), L * v, atol=1e-12)
    for u in rng.standard_normal((50, 6, 1)):
        assert np.linalg.norm(demo.grad(u, X, Y)) <= L * np.linalg.norm(u) + 1e-12


def test_accumulation_equals_large_batch_and_scaling_rule(tmp_path):
    m = run_demo("accumulation", out_dir=tmp_path, quick=True, seed=0)
    png = tmp_path / "accumulation.png"
    assert png.exists() and png.stat().st_size > 5000
    assert m["accumulation_max_abs_diff"] <= 1e-12
    tracked = [k for k in demo.SCALES if m[f"lr_over_limit_{k}"] <= 0.25]
    assert len(tracked) >= 3
    for k in tracked:
        assert m[f"deviation_{k}"] < 0.05
    diverged = [k for k in demo.SCALES if m[f"lr_over_limit_{k}"] > 1.0]
    assert diverged
    for k in diverged:
        final = m[f"final_loss_{k}"]
        assert not np.isfinite(final) or final > 1e3 * m["initial_loss"]
