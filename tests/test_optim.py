"""cryorecon.optim core: convergence table, momentum, accumulation, clipping, state I/O.

Every test that takes the ``xp`` fixture runs on numpy and, marked ``gpu``, on cupy.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from cryorecon import optim
from cryorecon.backend import array_module, to_host
from cryorecon.optim import schedules as sch


@pytest.fixture(params=["numpy", pytest.param("cupy", marks=pytest.mark.gpu)])
def xp(request):
    if request.param == "numpy":
        return np
    import cupy

    return cupy


# ----------------------------------------------------------------------------- problems
KAPPA = 100.0


def quadratic(xp):
    """f = 1/2 sum lam_i x_i^2 with eigenvalues from 1 to 100: condition number 100."""
    lam = xp.asarray(np.logspace(0, 2, 10))

    def fg(x):
        return float(0.5 * xp.sum(lam * x * x)), lam * x

    return fg, xp.ones(10)


def rosenbrock(xp):
    def fg(x):
        a, b = x[0], x[1]
        f = 100.0 * (b - a * a) ** 2 + (1.0 - a) ** 2
        g = xp.stack([-400.0 * a * (b - a * a) - 2.0 * (1.0 - a), 200.0 * (b - a * a)])
        return float(f), g

    return fg, xp.asarray([-1.2, 1.0])


def run(opt, fg, x0, steps, extra=None):
    x = x0
    state = opt.init(x)
    for _ in range(steps):
        f, g = fg(x)
        kw = extra(x, f) if extra else {}
        u, state = opt.update(g, state, x, **kw)
        x = optim.apply_updates(x, u)
    return x, state


# Each row: name, factory, steps on the quadratic, factory, steps on Rosenbrock. The
# adaptive methods get a decaying step because with a constant one they hover at a
# distance of order lr from the minimum instead of converging.
TABLE = [
    ("sgd", lambda: optim.sgd(1.0 / KAPPA), 1000, lambda: optim.sgd(1.5e-3), 20000),
    ("heavy-ball", lambda: optim.sgd(4 / 121, momentum=(9 / 11) ** 2), 300,
     lambda: optim.sgd(1e-3, momentum=0.9), 5000),
    ("nesterov", lambda: optim.sgd(1.0 / KAPPA, momentum=0.9, nesterov=True), 1000,
     lambda: optim.sgd(1e-3, momentum=0.9, nesterov=True), 5000),
    ("adam", lambda: optim.adam(sch.exponential_decay(0.1, 0.995)), 3000,
     lambda: optim.adam(sch.cosine_decay(0.02, 5000, alpha=0.01)), 5000),
    ("adamw", lambda: optim.adamw(sch.exponential_decay(0.1, 0.995), weight_decay=0.0), 3000,
     lambda: optim.adamw(sch.cosine_decay(0.02, 5000, alpha=0.01), weight_decay=0.0), 5000),
    ("rmsprop", lambda: optim.rmsprop(sch.exponential_decay(0.01, 0.995)), 3000,
     lambda: optim.rmsprop(sch.cosine_decay(3e-3, 5000, alpha=0.01)), 5000),
    ("adagrad", lambda: optim.adagrad(0.5), 3000, lambda: optim.adagrad(1.0), 15000),
    ("clip+adam", lambda: optim.chain(optim.clip_by_global_norm(10.0), optim.adam(
        sch.exponential_decay(0.1, 0.995))), 3000,
     lambda: optim.chain(optim.clip_by_global_norm(10.0), optim.adam(0.01)), 5000),
    ("inject(sgd)", lambda: optim.inject_hyperparams(optim.sgd)(learning_rate=0.01, momentum=0.9),
     1000, lambda: optim.inject_hyperparams(optim.sgd)(learning_rate=1e-3, momentum=0.9), 5000),
]


@pytest.mark.parametrize("name,make_q,steps_q,make_r,steps_r", TABLE, ids=[r[0] for r in TABLE])
def test_convergence_table(xp, name, make_q, steps_q, make_r, steps_r):
    fg, x0 = quadratic(xp)
    x, _ = run(make_q(), fg, x0, steps_q)
    assert fg(x)[0] <= 1e-6 * fg(x0)[0], name

    fg, x0 = rosenbrock(xp)
    x, _ = run(make_r(), fg, x0, steps_r)
    assert np.abs(to_host(x) - 1.0).max() < 1e-2, (name, to_host(x))


def test_convergence_lbfgs_and_preconditioner(xp):
    fg, x0 = quadratic(xp)
    x, info = optim.lbfgs_minimize(fg, x0, tol=1e-8)
    assert info["success"] and fg(x)[0] <= 1e-6 * fg(x0)[0]
    # The exact diagonal curvature makes a unit step Newton's step on a diagonal quadratic.
    lam = fg(xp.ones(10))[1]
    opt = optim.chain(optim.scale_by_diagonal(damping=0.0), optim.scale_by_learning_rate(1.0))
    x, _ = run(opt, fg, x0, 1, extra=lambda x, f: {"curvature": lam})
    assert fg(x)[0] == 0.0
    fg, x0 = rosenbrock(xp)
    x, info = optim.lbfgs_minimize(fg, x0, tol=1e-8)
    assert np.abs(to_host(x) - 1.0).max() < 1e-6


def _quadratic_curvature(xp):
    return quadratic(xp)[0](xp.ones(10))[1]  # the Hessian's diagonal, lam


def _rosenbrock_curvature(x):
    """|diagonal of Rosenbrock's Hessian|: indefinite away from the valley, hence abs."""
    xp = array_module(x)
    return xp.abs(xp.stack([1200.0 * x[0] ** 2 - 400.0 * x[1] + 2.0, 200.0 + 0.0 * x[0]]))


# Preconditioned rows: name, factory, curvature observed at each step on the quadratic
# (xp, rng -> array), steps on the quadratic, factory and steps on Rosenbrock (whose
# curvature is its Hessian's diagonal at the current point).
PRECONDITIONED = [
    ("diag-newton", lambda: optim.chain(optim.scale_by_diagonal(damping=0.0), optim.sgd(1.0)),
     lambda xp, rng: _quadratic_curvature(xp), 1,
     lambda: optim.chain(optim.scale_by_diagonal(damping=10.0), optim.sgd(1.0)), 5000),
    # noisy curvature observations (20% per step, multiplicative): the running average
    # makes them good enough for steps of 0.5
    ("diag-running+sgd", lambda: optim.chain(optim.scale_by_diagonal(damping=0.0, decay=0.9), optim.sgd(0.5)),
     lambda xp, rng: _quadratic_curvature(xp) * xp.asarray(np.exp(0.2 * rng.standard_normal(10))), 60,
     lambda: optim.chain(optim.scale_by_diagonal(damping=1.0, decay=0.9), optim.sgd(0.3, momentum=0.9)), 2000),
]


@pytest.mark.parametrize("name,make_q,curv_q,steps_q,make_r,steps_r", PRECONDITIONED, ids=[r[0] for r in PRECONDITIONED])
def test_preconditioned_convergence_table(xp, name, make_q, curv_q, steps_q, make_r, steps_r):
    rng = np.random.default_rng(7)
    fg, x0 = quadratic(xp)
    x, state = run(make_q(), fg, x0, steps_q, extra=lambda x, f: {"curvature": curv_q(xp, rng)})
    assert fg(x)[0] <= 1e-6 * fg(x0)[0], name
    assert state[0].count == steps_q
    fg, x0 = rosenbrock(xp)
    x, _ = run(make_r(), fg, x0, steps_r, extra=lambda x, f: {"curvature": _rosenbrock_curvature(x)})
    assert np.abs(to_host(x) - 1.0).max() < 1e-2, (name, to_host(x))


def test_scale_by_diagonal_running_average_equals_the_hand_written_one(xp):
    """c_1 = o_1, c_t = decay c_{t-1} + (1 - decay) o_t; u = g / (c_t + d_t), bit for bit."""
    rng = np.random.default_rng(8)
    decay = 0.9
    obs = [xp.asarray(rng.uniform(0.5, 2.0, (3, 4)).astype(np.float32)) for _ in range(5)]
    damp = [xp.asarray(rng.uniform(0.0, 0.1, (3, 4)).astype(np.float32)) for _ in range(5)]
    grads = [xp.asarray(rng.standard_normal((3, 4)).astype(np.float32)) for _ in range(5)]
    t = optim.scale_by_diagonal(damping=0.0, decay=decay)
    params = {"f": xp.zeros((3, 4), np.complex64)}
    state = t.init(params)
    assert state.curvature["f"].dtype == np.float32  # real curvature for complex parameters
    c = None
    for o, d, g in zip(obs, damp, grads):
        c = o if c is None else decay * c + (1 - decay) * o
        u, state = t.update({"f": g}, state, params, curvature={"f": o}, damping={"f": d})
        assert np.array_equal(to_host(state.curvature["f"]), to_host(c))
        assert np.array_equal(to_host(u["f"]), to_host(g / (c + d)))
    assert state.count == 5
    # no observation: the average stays; a scalar damping replaces the constant for one step
    u, state = t.update({"f": grads[0]}, state, params, damping=0.5)
    assert state.count == 5 and np.array_equal(to_host(u["f"]), to_host(grads[0] / (c + 0.5)))
    with pytest.raises(ValueError, match="decay"):
        optim.scale_by_diagonal(decay=1.0)


def test_dict_params_follow_the_same_path(xp):
    fg, x0 = quadratic(xp)

    def fg_dict(p):
        f, g = fg(xp.concatenate([p["a"], p["b"]]))
        return f, {"a": g[:4], "b": g[4:]}

    p0 = {"a": x0[:4], "b": x0[4:]}
    p, _ = run(optim.adam(sch.exponential_decay(0.1, 0.995)), fg_dict, p0, 3000)
    assert fg_dict(p)[0] <= 1e-6 * fg(x0)[0]


# ----------------------------------------------------------------------------- momentum
def iterations_to(opt, rel=1e-6, max_steps=5000):
    fg, x = quadratic(np)
    f0 = fg(x)[0]
    state = opt.init(x)
    for k in range(1, max_steps + 1):
        u, state = opt.update(fg(x)[1], state, x)
        x = optim.apply_updates(x, u)
        if fg(x)[0] <= rel * f0:
            return k
    return max_steps + 1


def test_heavy_ball_beats_gradient_descent_fourfold():
    """Polyak's tuning for mu = 1, L = 100 against the best constant GD step, 2 / (L + mu).

    Heavy ball: lr = 4 / (sqrt L + sqrt mu)^2 = 4/121, momentum
    ((sqrt kappa - 1) / (sqrt kappa + 1))^2 = (9/11)^2 (Polyak 1964). Gradient descent:
    lr = 2/101, its optimal rate (kappa - 1) / (kappa + 1).
    """
    gd = iterations_to(optim.sgd(2.0 / 101.0))
    hb = iterations_to(optim.sgd(4.0 / 121.0, momentum=(9.0 / 11.0) ** 2))
    assert gd <= 5000
    assert 4 * hb <= gd, (hb, gd)


def test_nesterov_update_rule():
    beta, lr = 0.5, 0.1
    opt = optim.sgd(lr, momentum=beta, nesterov=True)
    p = np.zeros(1)
    s = opt.init(p)
    g1, g2 = np.array([1.0]), np.array([2.0])
    u1, s = opt.update(g1, s)
    u2, s = opt.update(g2, s)
    t1 = 1.0
    t2 = 2.0 + beta * t1
    assert u1[0] == pytest.approx(-lr * (1.0 + beta * t1))
    assert u2[0] == pytest.approx(-lr * (2.0 + beta * t2))


# ----------------------------------------------------------------------------- accumulation
def _regression(rng, n=64, d=5):
    X = rng.standard_normal((n, d))
    y = X @ rng.standard_normal(d) + 0.1 * rng.standard_normal(n)
    return X, y


def _mean_sq_grad(w, X, y):
    return X.T @ (X @ w - y) / X.shape[0]


def test_accumulate_equals_large_batch_with_equal_micro_batches(xp):
    rng = np.random.default_rng(0)
    X, y = (xp.asarray(a) for a in _regression(rng))
    k = 4
    parts = [(X[i::k], y[i::k]) for i in range(k)]  # 16 examples each
    big, acc = optim.adam(0.05), optim.accumulate(optim.adam(0.05), every_k=k)
    w_big = w_acc = xp.zeros(X.shape[1])
    s_big, s_acc = big.init(w_big), acc.init(w_acc)
    for _ in range(5):
        u, s_big = big.update(_mean_sq_grad(w_big, X, y), s_big, w_big)
        w_big = optim.apply_updates(w_big, u)
        for j, (Xj, yj) in enumerate(parts):
            u, s_acc = acc.update(_mean_sq_grad(w_acc, Xj, yj), s_acc, w_acc)
            if j < k - 1:
                assert float(xp.abs(u).max()) == 0.0
            w_acc = optim.apply_updates(w_acc, u)
        np.testing.assert_allclose(to_host(w_acc), to_host(w_big), rtol=0, atol=1e-12)
    assert s_acc.count == 5 and s_acc.mini_step == 0


def test_accumulate_fails_for_unequal_micro_batches_with_per_batch_means():
    """Averaging per-micro-batch means weights small batches' examples more than large ones'.

    With sizes 8, 24, 16, 16 the accumulated gradient is not the large-batch mean
    gradient; summing per-example losses divided by the total count, with
    ``average=False``, restores the equivalence.
    """
    rng = np.random.default_rng(1)
    X, y = _regression(rng)
    edges = [0, 8, 32, 48, 64]
    parts = [(X[a:b], y[a:b]) for a, b in zip(edges[:-1], edges[1:])]
    w = 0.3 * rng.standard_normal(X.shape[1])
    g_big = _mean_sq_grad(w, X, y)

    def accumulated(average, grad_of_part):
        t = optim.accumulate(optim.sgd(1.0), every_k=4, average=average)
        s = t.init(w)
        for Xj, yj in parts:
            u, s = t.update(grad_of_part(Xj, yj), s, w)
        return -u

    wrong = accumulated(True, lambda Xj, yj: _mean_sq_grad(w, Xj, yj))
    assert np.abs(wrong - g_big).max() > 1e-3
    right = accumulated(False, lambda Xj, yj: Xj.T @ (Xj @ w - yj) / X.shape[0])
    np.testing.assert_allclose(right, g_big, rtol=0, atol=1e-12)


# ----------------------------------------------------------------------------- clipping
@pytest.mark.parametrize("c", [0.5, 1e3])
def test_clip_by_global_norm_keeps_direction(xp, c):
    rng = np.random.default_rng(2)
    g = {"a": xp.asarray(rng.standard_normal((3, 4))), "b": xp.asarray(rng.standard_normal(7))}
    norm = math.sqrt(sum(float((v * v).sum()) for v in g.values()))
    t = optim.clip_by_global_norm(c)
    u, s = t.update(g, t.init(g))
    new_norm = math.sqrt(sum(float((v * v).sum()) for v in u.values()))
    assert new_norm == pytest.approx(min(norm, c), rel=1e-12)
    assert float(s.norm) == pytest.approx(norm, rel=1e-12)
    for k in g:  # same direction: u = g * (positive factor)
        np.testing.assert_allclose(to_host(u[k]) / new_norm, to_host(g[k]) / norm, rtol=1e-12)


def test_clip_by_value_and_per_array_norm(xp):
    g = {"a": xp.asarray([3.0, -4.0]), "b": xp.asarray([0.3, 0.4])}
    u, s = optim.clip(1.0).update(g, optim.clip(1.0).init(g))
    assert to_host(u["a"]).tolist() == [1.0, -1.0] and s.max_abs == 4.0
    t = optim.clip_by_norm(1.0)
    u, s = t.update(g, t.init(g))
    np.testing.assert_allclose(to_host(u["a"]), [0.6, -0.8], rtol=1e-12)
    np.testing.assert_allclose(to_host(u["b"]), [0.3, 0.4], rtol=1e-12)
    assert float(s.norms["a"]) == pytest.approx(5.0)


# ----------------------------------------------------------------------------- wrappers
def test_skip_not_finite_never_lets_nan_through(xp):
    opt = optim.skip_not_finite(optim.adam(0.1))
    p = xp.ones(3)
    s = opt.init(p)
    u, s = opt.update(xp.asarray([1.0, 1.0, 1.0]), s, p)
    inner_before = s.inner_state
    for bad in (np.nan, np.inf):
        u, s = opt.update(xp.asarray([1.0, bad, 1.0]), s, p)
        assert float(xp.abs(u).max()) == 0.0
    assert s.total_skipped == 2 and s.last_skipped == 2
    assert s.inner_state is inner_before
    u, s = opt.update(xp.asarray([1.0, 1.0, 1.0]), s, p)
    assert s.last_skipped == 0 and s.total_skipped == 2 and bool(xp.isfinite(u).all())


def test_inject_hyperparams_reads_and_changes_learning_rate():
    sched = sch.linear_schedule(1.0, 0.0, 10)
    opt = optim.inject_hyperparams(optim.adam)(learning_rate=sched, b1=0.9)
    p = np.zeros(2)
    s = opt.init(p)
    for t in range(3):
        u, s = opt.update(np.ones(2), s, p)
        assert s.hyperparams["learning_rate"] == pytest.approx(sched(t))
    # A constant hyperparameter changed in the state takes effect on the next step.
    opt = optim.inject_hyperparams(optim.sgd)(learning_rate=0.1)
    s = opt.init(p)
    s.hyperparams["learning_rate"] = 0.25
    u, s = opt.update(np.ones(2), s, p)
    assert u.tolist() == [-0.25, -0.25]


def test_adamw_mask_and_decoupled_decay():
    p = {"w": np.full(2, 2.0), "b": np.full(2, 2.0)}
    g = {"w": np.ones(2), "b": np.ones(2)}
    lr, wd = 0.1, 0.5
    opt = optim.adamw(lr, weight_decay=wd, mask=lambda params: {"w": True, "b": False})
    ref = optim.adam(lr)
    u, _ = opt.update(g, opt.init(p), p)
    u_ref, _ = ref.update(g, ref.init(p), p)
    np.testing.assert_allclose(u["b"], u_ref["b"], rtol=1e-12)
    np.testing.assert_allclose(u["w"], u_ref["w"] - lr * wd * p["w"], rtol=1e-12)


def test_reduce_on_plateau_drops_scale_after_patience():
    opt = optim.chain(optim.sgd(1.0), optim.reduce_on_plateau(factor=0.5, patience=3, cooldown=1))
    p = np.zeros(1)
    s = opt.init(p)
    scales = []
    for loss in [5.0, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0, 3.0]:
        u, s = opt.update(np.ones(1), s, p, value=loss)
        scales.append(s[1].scale)
        assert u[0] == pytest.approx(-s[1].scale)
    assert scales == [1, 1, 1, 1, 0.5, 0.5, 0.5, 0.5, 0.25, 0.25]
    with pytest.raises(ValueError, match="value=loss"):
        opt.update(np.ones(1), s, p)


def test_scale_by_diagonal_takes_curvature_by_keyword_or_state():
    opt = optim.chain(optim.scale_by_diagonal(damping=1.0), optim.scale_by_learning_rate(2.0))
    p = np.zeros(2)
    s = opt.init(p)
    u, s = opt.update(np.array([4.0, 4.0]), s, p)  # default curvature: ones
    assert u.tolist() == [-4.0, -4.0]
    u, s = opt.update(np.array([4.0, 4.0]), s, p, curvature=np.array([1.0, 3.0]))
    assert u.tolist() == [-4.0, -2.0]
    u, s = opt.update(np.array([4.0, 4.0]), s, p)  # the last curvature is kept in the state
    assert u.tolist() == [-4.0, -2.0]
    assert s[0].count == 1  # one observation so far
    s = (s[0]._replace(curvature=np.array([7.0, 0.0])), s[1])
    u, s = opt.update(np.array([4.0, 4.0]), s, p)
    assert u.tolist() == [-1.0, -8.0]


def test_param_ema_matches_direct_formula():
    ema = optim.param_ema(0.9)
    s = ema.init(np.zeros(1))
    values = [1.0, 2.0, 4.0, 8.0]
    for v in values:
        avg, s = ema.update(np.array([v]), s)
    w = [0.1 * 0.9 ** (len(values) - 1 - i) for i in range(len(values))]
    assert avg[0] == pytest.approx(np.dot(w, values) / sum(w), rel=1e-12)


def test_schedules_values():
    f = sch.warmup_cosine_decay(0.0, 1.0, warmup_steps=10, decay_steps=110, end_value=0.1)
    assert f(0) == 0.0 and f(10) == 1.0 and f(110) == pytest.approx(0.1) and f(500) == pytest.approx(0.1)
    assert f(60) == pytest.approx(0.55)
    assert sch.step_decay(1.0, 5, 0.1)(12) == pytest.approx(0.01)
    assert sch.exponential_decay(1.0, 0.5, end_value=0.2)(10) == 0.2
    assert sch.cosine_decay(2.0, 10, alpha=0.5)(10) == pytest.approx(1.0)
    assert sch.constant_schedule(0.3)(10**6) == 0.3
    assert [sch.linear_warmup(2.0, 2)(t) for t in range(4)] == [0.0, 1.0, 2.0, 2.0]


# ----------------------------------------------------------------------------- state I/O
def _adam_run(xp, opt, params, grads_fn, steps, state=None):
    state = opt.init(params) if state is None else state
    for t in range(steps):
        u, state = opt.update(grads_fn(params, t), state, params)
        params = optim.apply_updates(params, u)
    return params, state


def test_save_load_adam_resumes_bit_identically(xp, tmp_path):
    rng = np.random.default_rng(3)
    target = {"w": xp.asarray(rng.standard_normal((8, 8)).astype(np.float32)),
              "b": xp.asarray(rng.standard_normal(8).astype(np.float32))}
    p0 = {k: xp.zeros_like(v) for k, v in target.items()}

    def grads(p, t):  # deterministic but step-dependent gradients
        return {k: (p[k] - target[k]) * np.float32(1.0 + 0.1 * (t % 3)) for k in p}

    opt = optim.adam(1e-2)
    p_full, s_full = _adam_run(xp, opt, p0, grads, 12)
    p_k, s_k = _adam_run(xp, opt, p0, grads, 7)
    path = optim.save_state(tmp_path / "adam.npz", s_k)
    restored = optim.load_state(path, like=opt.init(p0))
    assert restored.count == 7 and type(restored.count) is int
    p_resumed, s_resumed = _adam_run(xp, opt, p_k, lambda p, t: grads(p, t + 7), 5, state=restored)
    for k in p0:
        assert np.array_equal(to_host(p_resumed[k]), to_host(p_full[k]))
        assert np.array_equal(to_host(s_resumed.mu[k]), to_host(s_full.mu[k]))
        assert to_host(p_resumed[k]).dtype == np.float32


def test_save_load_round_trips_every_transform_state(tmp_path):
    p = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(3, np.float32)}
    opt = optim.chain(
        optim.skip_not_finite(optim.accumulate(optim.chain(
            optim.clip(10.0), optim.clip_by_norm(10.0), optim.clip_by_global_norm(5.0),
            optim.inject_hyperparams(optim.adamw)(
                learning_rate=sch.warmup_cosine_decay(0.0, 1e-2, 3, 20), weight_decay=1e-3),
            optim.rmsprop(1e-3, momentum=0.5), optim.adagrad(1e-2),
            optim.sgd(sch.step_decay(0.1, 4), momentum=0.9, nesterov=True),
            optim.scale_by_diagonal(1e-3), optim.scale_by_diagonal(1e-3, decay=0.8)), every_k=2)),
        optim.reduce_on_plateau(patience=2),
    )
    rng = np.random.default_rng(4)

    def grads(t):
        return {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in p.items()}

    def steps(params, state, n, start):
        for t in range(start, start + n):
            u, state = opt.update(grads(t), state, params, value=10.0 / (1 + t % 5),
                                  curvature={k: np.full(v.shape, 2.0, np.float32) for k, v in params.items()})
            params = optim.apply_updates(params, u)
        return params, state

    params, state = steps(p, opt.init(p), 9, 0)
    path = optim.save_state(tmp_path / "all", state)
    restored = optim.load_state(path, like=opt.init(p))
    rng_a = np.random.default_rng(5)
    rng = rng_a
    pa, sa = steps(params, state, 6, 9)
    rng = np.random.default_rng(5)
    pb, sb = steps(params, restored, 6, 9)
    for k in p:
        assert np.array_equal(pa[k], pb[k])
    flat_a, flat_b = [], []
    from cryorecon.optim.state_io import _walk

    _walk(sa, "", lambda path, leaf: flat_a.append((path, leaf)))
    _walk(sb, "", lambda path, leaf: flat_b.append((path, leaf)))
    assert [a for a, _ in flat_a] == [b for b, _ in flat_b]
    for (path_a, a), (_, b) in zip(flat_a, flat_b):
        assert type(a) is type(b), path_a
        assert np.array_equal(np.asarray(a), np.asarray(b)), path_a


def test_load_state_rejects_a_mismatched_file(tmp_path):
    from cryorecon.optim.state_io import StateFileError

    s = optim.adam(1e-3).init(np.zeros(3))
    path = optim.save_state(tmp_path / "s.npz", s)
    with pytest.raises(StateFileError, match="shape"):
        optim.load_state(path, like=optim.adam(1e-3).init(np.zeros(4)))
    with pytest.raises(StateFileError, match="different"):
        optim.load_state(path, like=optim.sgd(1e-3, momentum=0.9).init(np.zeros(3)))
    with pytest.raises(StateFileError, match="not found"):
        optim.load_state(tmp_path / "missing.npz", like=s)


def test_optim_imports_nothing_cryo_em():
    import subprocess
    import sys

    code = ("import sys, cryorecon.optim; "
            "bad = [m for m in sys.modules if m.startswith('cryorecon.') and not "
            "m.startswith('cryorecon.optim')]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
