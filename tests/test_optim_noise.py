"""Gradient-noise estimators, the Chebyshev batch bound, the SNR switch, and subgradients."""
from __future__ import annotations

import numpy as np
import pytest

from cryorecon import optim
from cryorecon.backend import to_host
from cryorecon.optim import noise


@pytest.fixture(params=["numpy", pytest.param("cupy", marks=pytest.mark.gpu)])
def xp(request):
    if request.param == "numpy":
        return np
    import cupy

    return cupy


def _grads(rng, n=500, d=20, signal=1.0, sigma=2.0):
    mean = signal * rng.standard_normal(d)
    return mean + sigma * rng.standard_normal((n, d)), mean


def test_snr_and_noise_scale_match_direct_estimates(xp):
    rng = np.random.default_rng(0)
    G, _ = _grads(rng)
    tr = np.trace(np.cov(G, rowvar=False))
    m = G.mean(axis=0)
    Gx = xp.asarray(G)
    assert noise.grad_snr(Gx) == pytest.approx(m @ m / tr, rel=1e-10)
    assert noise.simple_noise_scale(Gx) == pytest.approx(tr / (m @ m), rel=1e-10)
    debiased = (m @ m - tr / G.shape[0]) / tr
    assert noise.grad_snr(Gx, debias=True) == pytest.approx(debiased, rel=1e-10)


def test_estimators_recover_the_true_noise_scale():
    rng = np.random.default_rng(1)
    d, sigma = 20, 2.0
    G, mean = _grads(rng, n=20000, d=d, sigma=sigma)
    true_scale = d * sigma**2 / (mean @ mean)
    assert noise.simple_noise_scale(G, debias=True) == pytest.approx(true_scale, rel=0.05)


def test_streaming_stats_equal_batch_estimates(xp):
    rng = np.random.default_rng(2)
    G, _ = _grads(rng, n=300, d=7)
    s = noise.GradientNoiseStats.zeros(7, xp=xp)
    for chunk in np.array_split(G, 5):
        s = s.add(xp.asarray(chunk))
    assert s.count == 300
    assert s.snr == pytest.approx(noise.grad_snr(G), rel=1e-9)
    assert s.noise_scale == pytest.approx(noise.simple_noise_scale(G), rel=1e-9)
    np.testing.assert_allclose(to_host(s.mean), G.mean(axis=0), rtol=1e-12)
    # The engine's route: sums computed elsewhere, added directly.
    s2 = noise.GradientNoiseStats.zeros(7).add_sums(G.sum(0), (G * G).sum(), 300)
    assert s2.trace_cov == pytest.approx(s.trace_cov, rel=1e-12)


def test_estimate_reads_complex_gradients_once_and_matches_the_centred_form(xp):
    """Complex gradients count both parts; the one-read summary equals the direct estimates,
    and so does the per-example view of group means."""
    rng = np.random.default_rng(9)
    G = (rng.standard_normal((6, 50)) + 1j * rng.standard_normal((6, 50))) * 0.5 + (1 + 2j)
    stats = noise.GradientNoiseStats(0, xp.zeros(50, complex), 0.0)
    Gx = xp.asarray(G)
    # the sum of squares stays on the device until the one read in estimate()
    stats = stats.add_sums(Gx.sum(axis=0), xp.sum(xp.abs(Gx) ** 2), 6)
    est = stats.estimate()
    real = np.concatenate([G.real, G.imag], axis=1)  # the same gradients as real vectors
    assert est.count == 6
    assert est.mean_sq == pytest.approx(real.mean(0) @ real.mean(0), rel=1e-12)
    assert est.trace_cov == pytest.approx(np.trace(np.cov(real, rowvar=False)), rel=1e-10)
    assert est.snr == pytest.approx(noise.grad_snr(real), rel=1e-10)
    assert stats.trace_cov == pytest.approx(est.trace_cov, rel=1e-12)
    assert est.batch_snr(debias=True) == pytest.approx(6 * noise.grad_snr(real, debias=True), rel=1e-10)
    # the same from separate arrays (2-d, complex): the route of a gradient per group
    again = noise.GradientNoiseStats.from_examples([Gx[i].reshape(5, 10) for i in range(6)]).estimate()
    assert again.count == 6
    assert again.mean_sq == pytest.approx(est.mean_sq, rel=1e-12)
    assert again.trace_cov == pytest.approx(est.trace_cov, rel=1e-10)
    # 6 group means of 10 examples each: the examples' trace is 10x, the batch SNR the same
    per = est.per_example(10)
    assert per.count == 60 and per.trace_cov == pytest.approx(10 * est.trace_cov)
    assert per.batch_snr(debias=True) == pytest.approx(est.batch_snr(debias=True), rel=1e-12)


def test_running_average_of_estimates():
    e = [noise.NoiseEstimate(10, float(m), float(t)) for m, t in [(1, 8), (3, 4), (5, 2)]]
    r = None
    for x in e:
        r = noise.running_average(r, x, 0.7)
    assert r.mean_sq == pytest.approx(0.7 * (0.7 * 1 + 0.3 * 3) + 0.3 * 5)
    assert r.trace_cov == pytest.approx(0.7 * (0.7 * 8 + 0.3 * 4) + 0.3 * 2)
    assert noise.running_average(noise.NoiseEstimate(0, 0.0, 0.0), e[1], 0.7) == e[1]  # nothing yet
    # A batch growing 10% per step over pure noise (|G| = 0, tr Cov = 1): |G_hat|^2 is
    # 1 / n at each n. The average must still read no signal, whatever the growth.
    r = None
    for n in (100, 110, 121, 133, 146, 160):
        r = noise.running_average(r, noise.NoiseEstimate(n, 1.0 / n, 1.0), 0.7)
    assert r.count == 160
    assert r.batch_snr(debias=True) == pytest.approx(0.0, abs=1e-12)
    assert r.mean_sq == pytest.approx(1.0 / 160)
    # the switch reads an estimate as it reads per-example gradients
    ctl = noise.switch_when_snr_high(threshold=10.0, patience=1)
    go, s = ctl.update(noise.NoiseEstimate(100, 1.0, 5.0), ctl.init())  # B |G|^2 / trCov ~ 20
    assert go and s.last_batch_snr == pytest.approx(100 * (1.0 - 5.0 / 100) / 5.0)
    assert not ctl.update(noise.NoiseEstimate(100, 1.0, 50.0), ctl.init())[0]


def test_chebyshev_bound_holds_empirically():
    """Draw batches of the bound's size; the error exceeds eps no more often than delta."""
    rng = np.random.default_rng(3)
    d, sigma, eps, delta = 10, 1.0, 0.5, 0.1
    trace_cov = d * sigma**2
    B = noise.chebyshev_batch_size(trace_cov, eps, delta)
    assert B == int(np.ceil(trace_cov / (delta * eps**2)))
    errs = np.linalg.norm(sigma * rng.standard_normal((2000, d)) / np.sqrt(B), axis=1)
    assert (errs >= eps).mean() <= delta
    # At a batch 16 times smaller the same tolerance fails far more often: the bound bites.
    errs_small = np.linalg.norm(sigma * rng.standard_normal((2000, d)) / np.sqrt(B / 16), axis=1)
    assert (errs_small >= eps).mean() > delta
    assert noise.chebyshev_batch_size(2.0, 0.1, 0.05) == 4000
    with pytest.raises(ValueError):
        noise.chebyshev_batch_size(1.0, 0.0, 0.1)


def test_switch_when_snr_high():
    rng = np.random.default_rng(4)
    ctl = noise.switch_when_snr_high(threshold=10.0, patience=3)
    s = ctl.init()
    for _ in range(20):  # pure noise (zero mean) never switches
        go, s = ctl.update(rng.standard_normal((64, 10)), s)
        assert not go
    decisions = []
    for _ in range(4):  # strong signal: switches on the third consecutive check
        G = 1.0 + 0.1 * rng.standard_normal((64, 10))
        go, s = ctl.update(G, s)
        decisions.append(go)
    assert decisions == [False, False, True, True]
    go, s = ctl.update(rng.standard_normal((64, 10)), s)
    assert go and s.switched  # once switched, stays switched
    # The criterion scales with the batch size the gradient will be averaged over.
    G = 0.3 + rng.standard_normal((64, 10))
    snr = noise.grad_snr(G, debias=True)
    ctl1 = noise.switch_when_snr_high(threshold=10.0, patience=1)
    assert ctl1.update(G, ctl1.init(), batch_size=int(np.ceil(10.0 / snr)) + 1)[0]
    assert not ctl1.update(G, ctl1.init(), batch_size=int(10.0 / snr) - 1)[0]


# ----------------------------------------------------------------------------- subgradients
def test_hinge_and_l1_subgradient_inequality(xp):
    """f(v) >= f(w) + <g(w), v - w> for a convex f and any subgradient g, at kinks too."""
    rng = np.random.default_rng(5)
    X = xp.asarray(rng.standard_normal((40, 5)))
    y = xp.asarray(np.where(rng.random(40) < 0.5, -1.0, 1.0))
    ws = [xp.asarray(rng.standard_normal(5)) for _ in range(5)] + [xp.zeros(5)]
    # A point exactly on a margin: y_0 <w, x_0> == 1.
    w = xp.asarray(rng.standard_normal(5))
    w = w + (1.0 / float(y[0]) - float(X[0] @ w)) * X[0] / float(X[0] @ X[0])
    ws.append(w)
    for w in ws:
        fw, gw = optim.hinge_loss(w, X, y)
        lw, lg = optim.l1(w)
        for _ in range(20):
            v = w + xp.asarray(rng.standard_normal(5))
            assert optim.hinge_loss(v, X, y)[0] >= fw + float(gw @ (v - w)) - 1e-12
            assert optim.l1(v)[0] >= lw + float(lg @ (v - w)) - 1e-12


def test_hinge_subgradient_is_the_gradient_where_smooth():
    rng = np.random.default_rng(6)
    X = rng.standard_normal((30, 4))
    y = np.where(rng.random(30) < 0.5, -1.0, 1.0)
    w = rng.standard_normal(4)
    _, g = optim.hinge_loss(w, X, y)
    h = 1e-6
    num = [(optim.hinge_loss(w + h * e, X, y)[0] - optim.hinge_loss(w - h * e, X, y)[0]) / (2 * h)
           for e in np.eye(4)]
    np.testing.assert_allclose(g, num, rtol=1e-6, atol=1e-9)


def test_pegasos_style_subgradient_descent_separates_data():
    rng = np.random.default_rng(7)
    X = rng.standard_normal((200, 3))
    y = np.sign(X @ np.array([1.0, -2.0, 0.5]))
    X = X + 0.3 * y[:, None] * np.array([1.0, -2.0, 0.5]) / np.sqrt(5.25)  # widen the margin
    lam = 1e-3
    opt = optim.sgd(lambda t: 1.0 / (lam * (t + 1)))
    w = np.zeros(3)
    s = opt.init(w)
    for _ in range(300):
        _, g = optim.hinge_loss(w, X, y)
        u, s = opt.update(g + lam * w, s, w)
        w = optim.apply_updates(w, u)
    assert (np.sign(X @ w) == y).mean() == 1.0
