"""Wrappers that decide *whether* an inner optimizer steps: accumulation and finiteness."""
from __future__ import annotations

from typing import Any, NamedTuple

from ._tree import tree_all_finite, tree_map, tree_zeros_like
from .base import GradientTransformation


class AccumulateState(NamedTuple):
    """Calls since the last inner step, the running gradient sum, the inner state."""

    mini_step: int
    grad_sum: Any
    inner_state: Any
    count: int


def accumulate(inner: GradientTransformation, every_k: int, average: bool = True):
    """Gradient accumulation: step ``inner`` once per ``every_k`` micro-batches.

    The wrapper sums the gradients of ``every_k`` consecutive calls; on the k-th call it
    hands ``inner`` the sum (divided by ``every_k`` when ``average``) and returns its
    updates. The other calls return zero updates and leave ``inner``'s state untouched.

    When is this the large-batch step? With ``average=True`` and a per-micro-batch
    *mean* loss it is exact only if all micro-batches have the same size. With unequal
    sizes ``n_j``, the average of means weights each example by ``1 / (k n_j)`` instead
    of ``1 / sum n``; use ``average=False`` and micro-batch losses that are *sums*
    divided by the total example count to recover the large-batch gradient.

    Parameters
    ----------
    inner : GradientTransformation
        The optimizer that takes the accumulated step.
    every_k : int
        Micro-batches per step.
    average : bool
        Divide the sum by ``every_k`` (mean of micro-batch gradients) or not (sum).

    Returns
    -------
    GradientTransformation

    Examples
    --------
    >>> import numpy as np
    >>> from cryorecon import optim
    >>> opt = optim.accumulate(optim.sgd(1.0), every_k=2)
    >>> p = np.zeros(1); s = opt.init(p)
    >>> u1, s = opt.update(np.array([1.0]), s, p)
    >>> u2, s = opt.update(np.array([3.0]), s, p)
    >>> u1.tolist(), u2.tolist()
    ([0.0], [-2.0])

    References
    ----------
    The ``MultiSteps`` wrapper of optax (Babuschkin et al. 2020); large-batch
    equivalence as in Goyal et al. (2017).
    """
    every_k = int(every_k)
    if every_k < 1:
        raise ValueError(f"accumulate: every_k must be >= 1, got {every_k}")

    def init(params):
        return AccumulateState(0, tree_zeros_like(params), inner.init(params), 0)

    def update(grads, state, params=None, **extra):
        grad_sum = tree_map(lambda a, g: a + g, state.grad_sum, grads)
        mini = state.mini_step + 1
        if mini < every_k:
            zeros = tree_zeros_like(grads)
            return zeros, AccumulateState(mini, grad_sum, state.inner_state, state.count)
        g = tree_map(lambda a: a / every_k, grad_sum) if average and every_k > 1 else grad_sum
        updates, inner_state = inner.update(g, state.inner_state, params, **extra)
        return updates, AccumulateState(0, tree_zeros_like(grads), inner_state, state.count + 1)

    return GradientTransformation(init, update)


class SkipNotFiniteState(NamedTuple):
    """Skips in a row, skips in total, and the inner state."""

    last_skipped: int
    total_skipped: int
    inner_state: Any


def skip_not_finite(inner: GradientTransformation) -> GradientTransformation:
    """Skip any step whose gradients hold a NaN or an Inf.

    If every gradient entry is finite, ``inner`` steps as usual. Otherwise the update is
    zero, ``inner``'s state is kept as it was, and the counters ``last_skipped`` (skips
    in a row) and ``total_skipped`` go up, so that a loop can log or abort. On a GPU this
    costs one device-to-host synchronisation per step.

    Parameters
    ----------
    inner : GradientTransformation
        The optimizer to protect.

    Returns
    -------
    GradientTransformation

    Examples
    --------
    >>> import numpy as np
    >>> from cryorecon import optim
    >>> opt = optim.skip_not_finite(optim.sgd(1.0))
    >>> p = np.zeros(2); s = opt.init(p)
    >>> u, s = opt.update(np.array([1.0, np.nan]), s, p)
    >>> u.tolist(), s.total_skipped
    ([0.0, 0.0], 1)

    References
    ----------
    The loss-scaling skip rule of mixed-precision training (Micikevicius et al. 2018,
    "Mixed Precision Training", ICLR).
    """

    def init(params):
        return SkipNotFiniteState(0, 0, inner.init(params))

    def update(grads, state, params=None, **extra):
        if not tree_all_finite(grads):
            return tree_zeros_like(grads), SkipNotFiniteState(
                state.last_skipped + 1, state.total_skipped + 1, state.inner_state
            )
        updates, inner_state = inner.update(grads, state.inner_state, params, **extra)
        return updates, SkipNotFiniteState(0, state.total_skipped, inner_state)

    return GradientTransformation(init, update)
