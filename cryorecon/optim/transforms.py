"""The building blocks that the named optimizers are chained from.

Each factory returns a :class:`~cryorecon.optim.GradientTransformation`. The elementwise
arithmetic runs on each leaf's own array module and writes into buffers it has just
allocated (``out=``), never into its inputs: the transforms stay pure while making as
few passes over memory as a hand-written loop would.
"""
from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple, Union

from ._tree import tree_map, tree_zeros_like, xp_of
from .base import EmptyState, GradientTransformation

ScalarOrSchedule = Union[float, Callable[[int], float]]


def _scaled(x, factor: float):
    if factor == 1.0:
        return x
    return x * factor


# --------------------------------------------------------------------------- scaling
def scale(step_size: float) -> GradientTransformation:
    """Multiply updates by a constant: ``u = step_size * g``.

    Examples
    --------
    >>> import numpy as np
    >>> from cryorecon import optim
    >>> t = optim.scale(-0.5)
    >>> t.update(np.array([2.0]), t.init(None))[0].tolist()
    [-1.0]
    """
    step_size = float(step_size)

    def init(params):
        return EmptyState()

    def update(grads, state, params=None, **extra):
        return tree_map(lambda g: _scaled(g, step_size), grads), state

    return GradientTransformation(init, update)


class ScaleByScheduleState(NamedTuple):
    """Step count fed to the schedule."""

    count: int


def scale_by_schedule(step_size_fn: Callable[[int], float]) -> GradientTransformation:
    """Multiply updates by a schedule of the step count: ``u_t = s(t) * g_t``, t = 0, 1, ...

    Examples
    --------
    >>> import numpy as np
    >>> from cryorecon import optim
    >>> t = optim.scale_by_schedule(lambda n: -1.0 / (n + 1))
    >>> u, s = t.update(np.ones(1), t.init(None))
    >>> u, s = t.update(np.ones(1), s)
    >>> u.tolist(), s.count
    ([-0.5], 2)
    """

    def init(params):
        return ScaleByScheduleState(count=0)

    def update(grads, state, params=None, **extra):
        factor = float(step_size_fn(state.count))
        return tree_map(lambda g: _scaled(g, factor), grads), ScaleByScheduleState(
            state.count + 1
        )

    return GradientTransformation(init, update)


def scale_by_learning_rate(learning_rate: ScalarOrSchedule) -> GradientTransformation:
    """Descent scaling: ``u = -lr * g``, with ``lr`` a constant or a schedule of the step.

    Examples
    --------
    >>> import numpy as np
    >>> from cryorecon import optim
    >>> t = optim.scale_by_learning_rate(0.1)
    >>> t.update(np.array([1.0]), t.init(None))[0].tolist()
    [-0.1]
    """
    if callable(learning_rate):
        return scale_by_schedule(lambda n: -float(learning_rate(n)))
    return scale(-float(learning_rate))


# --------------------------------------------------------------------------- momentum
class TraceState(NamedTuple):
    """Momentum buffer."""

    trace: Any


def trace(decay: float, nesterov: bool = False) -> GradientTransformation:
    """Heavy-ball momentum trace.

    ``t_k = g_k + decay * t_{k-1}``; the update is ``t_k`` (Polyak 1964), or
    ``g_k + decay * t_k`` with ``nesterov=True`` (Nesterov 1983, in the form of
    Sutskever et al. 2013).

    Examples
    --------
    >>> import numpy as np
    >>> from cryorecon import optim
    >>> t = optim.trace(0.5)
    >>> u, s = t.update(np.ones(1), t.init(np.zeros(1)))
    >>> u, s = t.update(np.ones(1), s)
    >>> u.tolist()
    [1.5]
    """
    decay = float(decay)

    def init(params):
        return TraceState(trace=tree_zeros_like(params))

    def update(grads, state, params=None, **extra):
        def new_trace(g, t):
            out = t * decay
            out += g
            return out

        t_new = tree_map(new_trace, grads, state.trace)
        if nesterov:
            updates = tree_map(lambda g, t: g + decay * t, grads, t_new)
        else:
            updates = t_new
        return updates, TraceState(trace=t_new)

    return GradientTransformation(init, update)


# --------------------------------------------------------------------------- adaptive
class ScaleByAdamState(NamedTuple):
    """Adam moments and the step count used for bias correction."""

    count: int
    mu: Any
    nu: Any


def _adam_core(b1, b2, eps, out_scale) -> GradientTransformation:
    """Adam direction times ``out_scale`` in one fused pass per leaf.

    Folding the bias corrections and the learning rate into the scalars of the last
    two in-place operations saves two full passes over the parameters per step.
    """
    b1, b2, eps, out_scale = float(b1), float(b2), float(eps), float(out_scale)

    def init(params):
        return ScaleByAdamState(count=0, mu=tree_zeros_like(params), nu=tree_zeros_like(params))

    def update(grads, state, params=None, **extra):
        count = state.count + 1
        bc1 = 1.0 - b1**count
        sq_bc2 = math.sqrt(1.0 - b2**count)

        def moments(g, m, v):
            xp = xp_of(g)
            # m + (1 - b1)(g - m) == b1 m + (1 - b1) g, with one buffer and no temporary.
            m_new = xp.subtract(g, m)
            m_new *= 1.0 - b1
            m_new += m
            v_new = xp.multiply(g, g)
            v_new -= v
            v_new *= 1.0 - b2
            v_new += v
            # m_hat / (sqrt(v_hat) + eps) == m sqrt(bc2) / bc1 / (sqrt(v) + eps sqrt(bc2)).
            u = xp.sqrt(v_new)
            u += eps * sq_bc2
            xp.divide(m_new, u, out=u)
            u *= out_scale * sq_bc2 / bc1
            return u, m_new, v_new

        triples = tree_map(lambda g, m, v: moments(g, m, v), grads, state.mu, state.nu)
        updates = _pick(triples, 0, grads)
        mu = _pick(triples, 1, grads)
        nu = _pick(triples, 2, grads)
        return updates, ScaleByAdamState(count=count, mu=mu, nu=nu)

    return GradientTransformation(init, update)


def _pick(tree_of_tuples, i, structure):
    """Select element ``i`` of each leaf tuple, following ``structure``."""
    return tree_map(lambda _, t: t[i], structure, tree_of_tuples)


def scale_by_adam(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8) -> GradientTransformation:
    """Adam's normalised direction (no learning rate, no sign).

    ``m_t = b1 m + (1-b1) g``, ``v_t = b2 v + (1-b2) g^2``,
    ``u = m_hat / (sqrt(v_hat) + eps)`` with ``m_hat = m_t / (1 - b1^t)`` and
    ``v_hat = v_t / (1 - b2^t)`` (Kingma & Ba 2015, "Adam").

    Examples
    --------
    >>> import numpy as np
    >>> from cryorecon import optim
    >>> t = optim.scale_by_adam()
    >>> np.round(t.update(np.array([3.0]), t.init(np.zeros(1)))[0], 6).tolist()
    [1.0]

    References
    ----------
    Kingma & Ba (2015), "Adam: A Method for Stochastic Optimization", ICLR.
    """
    return _adam_core(b1, b2, eps, 1.0)


class ScaleByRmsState(NamedTuple):
    """Running mean of squared gradients."""

    nu: Any


def scale_by_rms(decay: float = 0.9, eps: float = 1e-8, initial_scale: float = 0.0):
    """RMSprop scaling: ``v = decay v + (1-decay) g^2``, ``u = g / (sqrt(v) + eps)``.

    Hinton, Srivastava & Swersky (2012), Coursera "Neural Networks", lecture 6e.

    Examples
    --------
    >>> import numpy as np
    >>> from cryorecon import optim
    >>> t = optim.scale_by_rms(decay=0.75)
    >>> np.round(t.update(np.array([2.0]), t.init(np.zeros(1)))[0], 6).tolist()
    [2.0]

    References
    ----------
    Hinton, Srivastava & Swersky (2012), "Neural Networks for Machine Learning",
    lecture 6e.
    """
    decay, eps, initial_scale = float(decay), float(eps), float(initial_scale)

    def init(params):
        return ScaleByRmsState(
            nu=tree_map(lambda p: xp_of(p).full_like(p, initial_scale), params)
        )

    def update(grads, state, params=None, **extra):
        def one(g, v):
            xp = xp_of(g)
            v_new = xp.multiply(g, g)
            v_new -= v
            v_new *= 1.0 - decay
            v_new += v
            u = xp.sqrt(v_new)
            u += eps
            xp.divide(g, u, out=u)
            return u, v_new

        pairs = tree_map(one, grads, state.nu)
        return _pick(pairs, 0, grads), ScaleByRmsState(nu=_pick(pairs, 1, grads))

    return GradientTransformation(init, update)


class ScaleByRssState(NamedTuple):
    """Running sum of squared gradients."""

    sum_of_squares: Any


def scale_by_rss(initial_accumulator_value: float = 0.1, eps: float = 1e-7):
    """Adagrad scaling: ``G = G + g^2``, ``u = g / (sqrt(G) + eps)``.

    Duchi, Hazan & Singer (2011), "Adaptive Subgradient Methods", JMLR 12.

    Examples
    --------
    >>> import numpy as np
    >>> from cryorecon import optim
    >>> t = optim.scale_by_rss(initial_accumulator_value=0.0, eps=0.0)
    >>> t.update(np.array([-2.0]), t.init(np.zeros(1)))[0].tolist()
    [-1.0]

    References
    ----------
    Duchi, Hazan & Singer (2011), "Adaptive Subgradient Methods for Online Learning and
    Stochastic Optimization", JMLR 12.
    """
    a0, eps = float(initial_accumulator_value), float(eps)

    def init(params):
        return ScaleByRssState(sum_of_squares=tree_map(lambda p: xp_of(p).full_like(p, a0), params))

    def update(grads, state, params=None, **extra):
        def one(g, s):
            xp = xp_of(g)
            s_new = xp.multiply(g, g)
            s_new += s
            u = xp.sqrt(s_new)
            u += eps
            xp.divide(g, u, out=u)
            return u, s_new

        pairs = tree_map(one, grads, state.sum_of_squares)
        return _pick(pairs, 0, grads), ScaleByRssState(sum_of_squares=_pick(pairs, 1, grads))

    return GradientTransformation(init, update)


# --------------------------------------------------------------------------- weight decay
def _resolve_mask(mask, params):
    if mask is None:
        return tree_map(lambda _: True, params)
    if callable(mask):
        return mask(params)
    return mask


def add_decayed_weights(weight_decay: float, mask=None) -> GradientTransformation:
    """Add decoupled weight decay: ``u = g + weight_decay * p`` where the mask is true.

    Parameters
    ----------
    weight_decay : float
        Coefficient ``lambda``.
    mask : tree of bool, or callable ``params -> tree of bool``, optional
        Same structure as the parameters; leaves marked ``False`` (biases, norms) are not
        decayed. ``None`` decays every leaf.

    Examples
    --------
    >>> import numpy as np
    >>> from cryorecon import optim
    >>> p = {"w": np.ones(1), "b": np.ones(1)}
    >>> t = optim.add_decayed_weights(0.5, mask={"w": True, "b": False})
    >>> u, _ = t.update({"w": np.zeros(1), "b": np.zeros(1)}, t.init(p), p)
    >>> u["w"].tolist(), u["b"].tolist()
    ([0.5], [0.0])

    References
    ----------
    Loshchilov & Hutter (2019), "Decoupled Weight Decay Regularization", ICLR.
    """
    wd = float(weight_decay)

    def init(params):
        return EmptyState()

    def update(grads, state, params=None, **extra):
        if params is None:
            raise ValueError("add_decayed_weights needs params: call update(grads, state, params)")
        m = _resolve_mask(mask, params)
        return tree_map(lambda g, p, keep: g + wd * p if keep else g, grads, params, m), state

    return GradientTransformation(init, update)
