"""Demo `batchnorm`: the BN backward pass by hand, its batch coupling, and the speed-up."""
import numpy as np
import pytest

from cryorecon.demos import batchnorm as demo
from cryorecon.demos import run_demo
from cryorecon.demos._common import check_gradient


def _bn_setup(seed):
    rng = np.random.default_rng(seed)
    x = 2.0 * rng.standard_normal((12, 5)) + 0.5
    gamma, beta = rng.uniform(0.5, 2.0, 5), rng.standard_normal(5)
    r = rng.standard_normal((12, 5))  # loss = sum(y * r) makes dy = r
    return x, gamma, beta, r


@pytest.mark.parametrize("frozen", [False, True])
def test_bn_backward_matches_finite_differences(frozen):
    x, gamma, beta, r = _bn_setup(0)
    stats = (x.mean(axis=0) + 0.3, x.var(axis=0) * 1.5) if frozen else None

    def loss(x_, g_, b_):
        return float((demo.batchnorm_forward(x_, g_, b_, stats)[0] * r).sum())

    def grads(x_, g_, b_):
        _, cache = demo.batchnorm_forward(x_, g_, b_, stats)
        return demo.batchnorm_backward(r, cache)

    assert check_gradient(lambda v: loss(v, gamma, beta), lambda v: grads(v, gamma, beta)[0], x) < 1e-6
    assert check_gradient(lambda v: loss(x, v, beta), lambda v: grads(x, v, beta)[1], gamma) < 1e-6
    assert check_gradient(lambda v: loss(x, gamma, v), lambda v: grads(x, gamma, v)[2], beta) < 1e-6


def test_train_mode_dx_sums_to_zero_per_feature_and_couples_the_batch():
    x, gamma, beta, r = _bn_setup(1)
    _, cache = demo.batchnorm_forward(x, gamma, beta)
    dx = demo.batchnorm_backward(r, cache)[0]
    assert np.abs(dx.sum(axis=0)).max() < 1e-12 * np.abs(dx).max()

    x2 = x.copy()
    x2[5] += 1.0  # touch another example only
    _, cache2 = demo.batchnorm_forward(x2, gamma, beta)
    dx2 = demo.batchnorm_backward(r, cache2)[0]
    assert np.abs(dx2[0] - dx[0]).max() > 1e-3

    stats = (x.mean(axis=0), x.var(axis=0))
    _, cache_f = demo.batchnorm_forward(x, gamma, beta, stats)
    _, cache_f2 = demo.batchnorm_forward(x2, gamma, beta, stats)
    dx_f = demo.batchnorm_backward(r, cache_f)[0]
    dx_f2 = demo.batchnorm_backward(r, cache_f2)[0]
    np.testing.assert_array_equal(dx_f2[0], dx_f[0])
    assert np.abs(dx_f.sum(axis=0)).max() > 1e-3  # the zero-sum is a train-mode property


@pytest.mark.parametrize("use_bn", [False, True])
def test_mlp_gradient_matches_finite_differences(use_bn):
    rng = np.random.default_rng(2)
    params = demo.init_mlp([6, 5, 4, 3], rng, use_bn, init_std=0.7)
    for p in params.values():
        p += 0.2 * rng.standard_normal(p.shape)
    x = rng.standard_normal((9, 6))
    labels = rng.integers(0, 3, size=9)
    keys = sorted(params)
    sizes = [params[k].size for k in keys]

    def unflat(v):
        parts = np.split(v, np.cumsum(sizes)[:-1])
        return {k: p.reshape(params[k].shape) for k, p in zip(keys, parts)}

    flat = np.concatenate([params[k].ravel() for k in keys])
    def grad(v):
        g = demo.mlp_loss(unflat(v), x, labels)[1]
        return np.concatenate([g[k].ravel() for k in keys])

    err = check_gradient(lambda v: demo.mlp_loss(unflat(v), x, labels)[0], grad, flat)
    assert err < 1e-5


def test_demo_bn_trains_faster(tmp_path):
    m = run_demo("batchnorm", out_dir=tmp_path, quick=True, seed=0)
    png = tmp_path / "batchnorm.png"
    assert png.exists() and png.stat().st_size > 5_000
    assert m["dx_feature_sum_rel"] < 1e-12
    assert m["train_dx0_change"] > 1e-3 and m["frozen_dx0_change"] == 0.0
    assert np.isfinite(m["steps_to_target_bn"])
    assert m["steps_to_target_plain"] >= 3 * m["steps_to_target_bn"]
    assert m["final_loss_bn"] < m["final_loss_plain"]
    assert m["test_accuracy_bn"] > 0.9
