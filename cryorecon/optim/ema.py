"""Exponential moving average of the parameters (Polyak-Ruppert style averaging)."""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

from ._tree import tree_map, xp_of


class ParamEmaState(NamedTuple):
    """Number of averaged updates and the (not yet debiased) running average."""

    count: int
    ema: Any


class ParamEMA(NamedTuple):
    """A pair ``init(params) -> state``, ``update(params, state) -> (average, state)``."""

    init: Callable
    update: Callable


def param_ema(decay: float = 0.999, debias: bool = True) -> ParamEMA:
    """Track an exponential moving average of the parameters.

    ``a_t = decay a_{t-1} + (1 - decay) p_t`` with ``a_0 = 0``; the returned average is
    ``a_t / (1 - decay^t)`` when ``debias`` (Kingma & Ba 2015, section 3), else ``a_t``.
    Call ``update`` with the parameters after each optimizer step; use the average for
    evaluation. Averaged iterates reduce the variance of SGD's end point (Polyak &
    Juditsky 1992, "Acceleration of stochastic approximation by averaging").

    Parameters
    ----------
    decay : float
        In [0, 1); the average's horizon is about ``1 / (1 - decay)`` steps.
    debias : bool
        Correct the start-up bias toward zero.

    Returns
    -------
    ParamEMA

    Examples
    --------
    >>> import numpy as np
    >>> from cryorecon import optim
    >>> ema = optim.param_ema(0.5)
    >>> s = ema.init(np.zeros(1))
    >>> avg, s = ema.update(np.array([2.0]), s)
    >>> avg, s = ema.update(np.array([4.0]), s)
    >>> round(float(avg[0]), 6)
    3.333333

    References
    ----------
    Polyak & Juditsky (1992), "Acceleration of stochastic approximation by averaging",
    SIAM J. Control Optim. 30; Kingma & Ba (2015), section 3 (bias correction).
    """
    decay = float(decay)

    def init(params):
        return ParamEmaState(0, tree_map(lambda p: xp_of(p).zeros_like(p), params))

    def update(params, state):
        count = state.count + 1

        def step(p, a):
            out = a * decay
            out += (1.0 - decay) * p
            return out

        ema = tree_map(step, params, state.ema)
        if debias:
            corr = 1.0 / (1.0 - decay**count)
            avg = tree_map(lambda a: a * corr, ema)
        else:
            avg = ema
        return avg, ParamEmaState(count, ema)

    return ParamEMA(init, update)
