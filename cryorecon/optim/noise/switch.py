"""When to hand over from a stochastic to a full-batch optimizer: the batch SNR switch.

The controller reads the estimators of :mod:`cryorecon.optim.noise` (per-example
gradients, streaming sums, or a :class:`~cryorecon.optim.noise.NoiseEstimate`) and
says when the mini-batch gradient has become accurate enough that exact, full-data
steps will make faster progress.
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple

from .estimators import GradientNoiseStats, NoiseEstimate, _moments, _signal


class SnrSwitchState(NamedTuple):
    """Consecutive checks above the threshold, whether the switch happened, the last SNR."""

    streak: int
    switched: bool
    last_batch_snr: float
    checks: int


class SnrSwitch(NamedTuple):
    """``init() -> state``; ``update(per_example_grads, state, batch_size=None)``."""

    init: Callable
    update: Callable


def switch_when_snr_high(threshold: float = 10.0, patience: int = 3, debias: bool = True):
    """Controller that says when to hand over from a stochastic to a full-batch optimizer.

    Criterion: the batch-mean gradient's SNR, ``B |G|^2 / tr Cov`` (``B`` the batch size,
    by default the number of per-example gradients given), is at least ``threshold`` on
    ``patience`` consecutive checks. An SNR of ``s`` means the mini-batch gradient's
    expected squared error is ``1/s`` of its squared norm, so at ``s = 10`` the
    stochastic direction is already about as good as the full gradient and a
    deterministic method (L-BFGS) that needs exact gradients will make faster progress:
    the PINN recipe of training with Adam, then switching to L-BFGS. Once switched, it
    stays switched. With ``debias`` the noise bias of ``|G_hat|^2`` is removed first, so
    pure noise does not trigger a switch.

    Parameters
    ----------
    threshold : float
        Batch SNR at or above which a check counts as high.
    patience : int
        Consecutive high checks needed.
    debias : bool
        Debias ``|G|^2`` (see :func:`grad_snr`).

    Returns
    -------
    SnrSwitch
        ``update(per_example_grads_or_stats, state, batch_size=None) -> (switch, state)``
        where the first argument is an ``(n, d)`` array, a :class:`GradientNoiseStats`
        or a :class:`NoiseEstimate`.

    Examples
    --------
    >>> import numpy as np
    >>> from cryorecon.optim import noise
    >>> ctl = noise.switch_when_snr_high(threshold=10.0, patience=2)
    >>> s = ctl.init()
    >>> rng = np.random.default_rng(0)
    >>> g = 1.0 + 0.1 * rng.standard_normal((32, 4))   # strong signal
    >>> go, s = ctl.update(g, s); go
    False
    >>> go, s = ctl.update(g, s); go
    True

    References
    ----------
    McCandlish et al. (2018), arXiv:1812.06162 (gradient noise scale); the Adam-then-
    L-BFGS schedule of physics-informed networks: Raissi, Perdikaris & Karniadakis
    (2019), J. Comput. Phys. 378.
    """
    threshold, patience = float(threshold), int(patience)

    def init():
        return SnrSwitchState(0, False, 0.0, 0)

    def update(grads_or_stats, state, batch_size=None):
        if isinstance(grads_or_stats, NoiseEstimate):
            n, mean_sq, trace_cov = grads_or_stats
        elif isinstance(grads_or_stats, GradientNoiseStats):
            n, mean_sq, trace_cov = grads_or_stats.estimate()
        else:
            n, mean_sq, trace_cov = _moments(grads_or_stats)
        b = n if batch_size is None else int(batch_size)
        signal = _signal(mean_sq, trace_cov, n, debias)
        snr = b * signal / trace_cov if trace_cov > 0 else math.inf
        streak = state.streak + 1 if snr >= threshold else 0
        switched = state.switched or streak >= patience
        return switched, SnrSwitchState(streak, switched, snr, state.checks + 1)

    return SnrSwitch(init, update)
