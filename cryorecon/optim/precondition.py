"""Diagonal preconditioning: divide each coordinate by its own curvature.

A second-order method on a budget: with ``c`` an estimate of the diagonal of the
Hessian, ``g / c`` gives every coordinate its own Newton-like step. The curvature comes
from the caller (it is problem knowledge: for a least-squares fit, the backprojected
weights); this transform keeps it in its state, optionally as a running average of
noisy per-step observations, so that it is checkpointed with the rest of the optimizer
(:func:`~cryorecon.optim.save_state`).
"""
from __future__ import annotations

import numbers
from typing import Any, NamedTuple

from ._tree import tree_map, xp_of
from .base import GradientTransformation


class ScaleByDiagonalState(NamedTuple):
    """The curvature the updates are divided by, and how many observations made it.

    ``curvature`` is a tree like the parameters (real even where they are complex);
    ``count`` is the number of curvature observations folded into it (0: still the
    initial one).
    """

    curvature: Any
    count: int


def _real_ones(p):
    # Curvature is real even for complex parameters (the diagonal of a real Hessian).
    xp = xp_of(p)
    return xp.ones(p.shape, dtype=p.real.dtype)


def _blend(previous, observed, decay: float):
    """``decay * previous + (1 - decay) * observed``, leafwise, in two in-place passes."""

    def one(c, o):
        out = c * decay
        out += o * (1.0 - decay)
        return out

    return tree_map(one, previous, observed)


def scale_by_diagonal(damping: float = 1e-8, curvature=None, decay: float | None = None) -> GradientTransformation:
    """Diagonal preconditioner: ``u = g / (c + d)`` for a curvature estimate ``c >= 0``.

    ``c`` approximates the diagonal of the Hessian (e.g. the reconstruction engine's
    backprojected ``w C^2``); dividing by it gives every coordinate its own Newton-like
    step size, so a following ``scale_by_learning_rate(lr)`` with ``lr`` near 1 is a
    damped diagonal Newton step (Becker & LeCun 1988).

    The caller observes the curvature and passes it to ``update``:
    ``opt.update(grads, state, params, curvature=c_obs)`` (through :func:`chain` the
    keyword reaches this transform). What the state keeps depends on ``decay``:

    - ``decay=None``: the last observation, ``c_t = c_obs``;
    - ``decay`` in [0, 1): a running average of the observations, for curvatures
      measured on mini-batches: the first observation initialises it, ``c_1 = c_obs``,
      and each later one is folded in, ``c_t = decay c_{t-1} + (1 - decay) c_obs``.

    An update without ``curvature=`` keeps the state's curvature; before any
    observation that is the ``curvature`` given here (or ones, the identity). The
    state may also be replaced directly, ``state._replace(curvature=c)``.

    The damping ``d`` is this constant, or per step ``update(..., damping=d)`` with
    ``d`` a float or a tree like the parameters (a prior precision that changes with
    the parameters, say). It replaces the constant for that step and is not kept.

    Parameters
    ----------
    damping : float
        Added to ``c`` so that flat or unseen coordinates take bounded steps.
    curvature : tree of arrays, optional
        Initial curvature; defaults to ones (the identity).
    decay : float, optional
        Running-average weight of the past curvature; ``None`` keeps only the latest.

    Returns
    -------
    GradientTransformation

    Examples
    --------
    >>> import numpy as np
    >>> from cryorecon import optim
    >>> opt = optim.chain(optim.scale_by_diagonal(damping=0.0), optim.scale_by_learning_rate(1.0))
    >>> p = np.zeros(2)
    >>> s = opt.init(p)
    >>> u, s = opt.update(np.array([2.0, 2.0]), s, p, curvature=np.array([1.0, 4.0]))
    >>> u.tolist()
    [-2.0, -0.5]
    >>> avg = optim.scale_by_diagonal(damping=0.0, decay=0.5)
    >>> s = avg.init(p)
    >>> _, s = avg.update(np.ones(2), s, curvature=np.array([4.0, 4.0]))  # c = 4
    >>> u, s = avg.update(np.ones(2), s, curvature=np.array([2.0, 0.0]), damping=1.0)
    >>> s.curvature.tolist(), u.tolist()  # c = (3, 2); u = 1 / (c + 1)
    ([3.0, 2.0], [0.25, 0.3333333333333333])

    References
    ----------
    Becker & LeCun (1988), "Improving the convergence of back-propagation learning with
    second order methods"; for cryo-EM, the per-voxel running curvature of Punjani et
    al. (2017), "cryoSPARC", Nature Methods 14.
    """
    damping = float(damping)
    if decay is not None and not (0.0 <= float(decay) < 1.0):
        raise ValueError(f"decay must be in [0, 1) or None, got {decay}")
    decay = None if decay is None else float(decay)

    def init(params):
        c = curvature if curvature is not None else tree_map(_real_ones, params)
        return ScaleByDiagonalState(curvature=c, count=0)

    def update(grads, state, params=None, curvature=None, damping=None, **extra):
        c, count = state.curvature, state.count
        if curvature is not None:
            c = curvature if decay is None or count == 0 else _blend(c, curvature, decay)
            count += 1
        d = _damping_tree(damping, grads)

        def one(g, ci, di):
            xp = xp_of(g)
            return xp.divide(g, ci + di if (not isinstance(di, numbers.Real) or di) else ci)

        return tree_map(one, grads, c, d), ScaleByDiagonalState(curvature=c, count=count)

    def _damping_tree(per_step, grads):
        value = damping if per_step is None else per_step
        if isinstance(value, numbers.Real):
            return tree_map(lambda _: float(value), grads)
        return value

    return GradientTransformation(init, update)


precondition = scale_by_diagonal
