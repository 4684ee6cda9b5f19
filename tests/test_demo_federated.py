"""Federated demo: non-IID accuracy drop, client drift in closed form, sampling bias."""
import numpy as np

from cryorecon.demos import federated, run_demo
from cryorecon.demos._common import check_gradient, softmax_cross_entropy


def test_softmax_cross_entropy_gradient_check():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(12, 5))
    y = rng.integers(0, 3, 12)
    W = rng.normal(size=(5, 3))
    err = check_gradient(lambda w: softmax_cross_entropy(w, X, y, l2=0.1)[0],
                         lambda w: softmax_cross_entropy(w, X, y, l2=0.1)[1], W)
    assert err < 1e-6


def test_quadratic_gradient_check():
    rng = np.random.default_rng(1)
    a, c = rng.uniform(0.1, 2, 3), rng.normal(size=3)
    err = check_gradient(lambda x: federated.quadratic_loss_grad(x, a, c)[0],
                         lambda x: federated.quadratic_loss_grad(x, a, c)[1], rng.normal(size=3))
    assert err < 1e-7


def test_one_local_step_is_exact_and_more_drift_away():
    rng = np.random.default_rng(2)
    curv, centres, p = federated.quadratic_clients(6, 3, rng)
    x_star = federated.global_minimiser(curv, centres, p)
    assert np.allclose(federated.fedavg_fixed_point(curv, centres, p, 1, 0.2), x_star, atol=1e-12)
    x20, _ = federated.fedavg_quadratic(curv, centres, p, 20, 0.2, 400, np.zeros(3))
    np.testing.assert_allclose(x20, federated.fedavg_fixed_point(curv, centres, p, 20, 0.2), atol=1e-9)
    assert np.linalg.norm(x20 - x_star) > 1e-2


def test_non_iid_split_gives_one_label_per_client():
    y = np.repeat(np.arange(10), 30)
    clients = federated.split_clients(y, 10, iid=False, rng=np.random.default_rng(0))
    assert all(len(np.unique(y[c])) == 1 for c in clients)
    clients = federated.split_clients(y, 10, iid=True, rng=np.random.default_rng(0))
    assert all(len(np.unique(y[c])) > 5 for c in clients)


def test_demo_effects(tmp_path):
    m = run_demo("federated", out_dir=tmp_path, quick=True, seed=0)
    png = tmp_path / "federated.png"
    assert png.exists() and png.stat().st_size > 5000
    assert m["acc_iid"] > 0.93
    assert m["non_iid_drop"] > 0.0 and m["non_iid_drop_mean_over_rounds"] > 0.01
    assert m["drift_K1"] < 1e-10 and m["drift_K50"] > 0.1 and m["drift_increasing"] == 1.0
    assert m["fedavg_vs_fixed_point"] < 1e-8
    assert m["bias_rel_err"] < 0.05
    assert m["weighted_bias_rel"] < 0.05
