"""Demo `maml`: exact second-order meta-gradients by hand, adaptation, gradient variance."""
import numpy as np
import pytest

from cryorecon.demos import maml as demo
from cryorecon.demos import run_demo
from cryorecon.demos._common import check_gradient


@pytest.fixture(scope="module")
def small_problem():
    rng = np.random.default_rng(0)
    theta = demo.init_mlp([1, 5, 4, 1], rng)
    for v in theta.values():
        v += 0.1 * rng.standard_normal(v.shape)
    amp, ph = demo.sample_tasks(3, rng)
    support = demo.sample_points(amp, ph, 6, rng)
    query = demo.sample_points(amp, ph, 6, rng)
    keys = sorted(theta)
    sizes = [theta[k].size for k in keys]

    def unflat(v):
        return {k: p.reshape(theta[k].shape) for k, p in zip(keys, np.split(v, np.cumsum(sizes)[:-1]))}

    def flat(tree):
        return np.concatenate([tree[k].ravel() for k in keys])

    return rng, theta, support, query, unflat, flat


def test_task_loss_gradient(small_problem):
    _, theta, support, _, unflat, flat = small_problem

    def grad(v):
        return flat({k: g.sum(axis=0) for k, g in demo.loss_and_grad(demo.per_task(unflat(v), 3), *support)[1].items()})

    err = check_gradient(lambda v: demo.loss_and_grad(demo.per_task(unflat(v), 3), *support)[0].sum(), grad, flat(theta))
    assert err < 1e-5


def test_hessian_vector_product_is_the_gradient_of_g_dot_v(small_problem):
    rng, theta, support, _, unflat, flat = small_problem
    v = unflat(rng.standard_normal(flat(theta).size))

    def g_dot_v(x):
        grads = demo.loss_and_grad(demo.per_task(unflat(x), 3), *support)[1]
        return float(sum((grads[k].sum(axis=0) * v[k]).sum() for k in grads))

    def hv(x):
        h = demo.hessian_vector_product(demo.per_task(unflat(x), 3), *support, demo.per_task(v, 3))
        return flat({k: a.sum(axis=0) for k, a in h.items()})

    assert check_gradient(g_dot_v, hv, flat(theta)) < 1e-5


def test_second_order_meta_gradient_is_exact_and_first_order_is_not(small_problem):
    _, theta, support, query, unflat, flat = small_problem
    alpha = 0.3  # large, so the Hessian term matters

    def meta_loss(v):
        return demo.meta_loss_and_grad(unflat(v), support, query, alpha)[0]

    exact = check_gradient(meta_loss, lambda v: flat(demo.meta_loss_and_grad(unflat(v), support, query, alpha)[1]), flat(theta))
    first = check_gradient(meta_loss, lambda v: flat(demo.meta_loss_and_grad(unflat(v), support, query, alpha, True)[1]), flat(theta))
    assert exact < 1e-5
    assert first > 1e-2


def test_tasks_follow_the_paper_ranges():
    amp, ph = demo.sample_tasks(5000, np.random.default_rng(1))
    assert 0.1 <= amp.min() and amp.max() <= 5.0 and 0.0 <= ph.min() and ph.max() <= np.pi
    x, y = demo.sample_points(amp[:3], ph[:3], 10, np.random.default_rng(2))
    assert x.shape == (3, 10, 1) and np.all(np.abs(x) <= 5.0)
    np.testing.assert_allclose(y, amp[:3, None, None] * np.sin(x - ph[:3, None, None]))


def test_variance_fit_recovers_known_coefficients():
    m, k = [1, 2, 4, 8], [5, 10, 20]
    table = np.array([[3.0 / mi + 40.0 / (mi * ki) for ki in k] for mi in m])
    (a, b), rms = demo.fit_variance_model(table, m, k)
    assert a == pytest.approx(3.0) and b == pytest.approx(40.0) and rms < 1e-12


def test_demo_maml_adapts_in_one_step(tmp_path):
    m = run_demo("maml", out_dir=tmp_path, quick=True, seed=0)
    png = tmp_path / "maml.png"
    assert png.exists() and png.stat().st_size > 5_000
    assert m["maml_step_reduction"] >= 2.0
    assert m["maml_mse_after_one_step"] < m["baseline_mse_after_one_step"]
    # M tasks average independent meta-gradients: exactly 1/M in expectation
    assert 6.5 < m["variance_M1_over_M8_min"] and m["variance_M1_over_M8_max"] < 9.5
    assert m["variance_decreases_with_K"]
    assert m["variance_fit_b"] > 0
    assert m["variance_fit_rel_rms"] < 0.35
    assert m["variance_fit3_rel_rms"] < m["variance_fit_rel_rms"]
