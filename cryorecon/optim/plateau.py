"""Reduce-on-plateau: shrink the step when the loss stops improving."""
from __future__ import annotations

from typing import NamedTuple

from ._tree import tree_map
from .base import GradientTransformation


class ReduceOnPlateauState(NamedTuple):
    """Current scale, best loss so far, and the plateau and cooldown counters."""

    scale: float
    best_value: float
    plateau_count: int
    cooldown_count: int
    count: int


def reduce_on_plateau(factor: float = 0.1, patience: int = 10, rtol: float = 1e-4,
                      atol: float = 0.0, cooldown: int = 0, min_scale: float = 0.0):
    """Multiply the updates by a scale that drops by ``factor`` when the loss plateaus.

    The loss must be passed to every update: ``update(grads, state, params,
    value=loss)`` (through :func:`~cryorecon.optim.chain` the keyword reaches this
    member). A value counts as an improvement when ``value < best - rtol |best| - atol``;
    after ``patience`` updates without one, ``scale <- max(scale * factor, min_scale)``
    and no further drop happens for ``cooldown`` updates. Put it after the optimizer:
    ``chain(adam(1e-3), reduce_on_plateau(patience=5))``.

    Parameters
    ----------
    factor : float
        Multiplier applied at each plateau, in (0, 1).
    patience : int
        Updates without improvement before a drop.
    rtol, atol : float
        Relative and absolute improvement thresholds.
    cooldown : int
        Updates after a drop during which the plateau counter is not advanced.
    min_scale : float
        Lower bound on the scale.

    Returns
    -------
    GradientTransformation

    Examples
    --------
    >>> import numpy as np
    >>> from cryorecon import optim
    >>> opt = optim.chain(optim.sgd(1.0), optim.reduce_on_plateau(factor=0.5, patience=2))
    >>> p = np.ones(1); s = opt.init(p)
    >>> for loss in [3.0, 2.0, 2.0, 2.0]:
    ...     u, s = opt.update(np.ones(1), s, p, value=loss)
    >>> u.tolist(), s[1].scale
    ([-0.5], 0.5)

    References
    ----------
    The rule of PyTorch's ``ReduceLROnPlateau`` (Paszke et al. 2019) and Keras's
    callback of the same name.
    """
    factor, rtol, atol, min_scale = float(factor), float(rtol), float(atol), float(min_scale)

    def init(params):
        return ReduceOnPlateauState(1.0, float("inf"), 0, 0, 0)

    def update(grads, state, params=None, value=None, **extra):
        if value is None:
            raise ValueError("reduce_on_plateau needs the loss: update(grads, state, params, value=loss)")
        value = float(value)
        scale, best, plateau, cool = state.scale, state.best_value, state.plateau_count, state.cooldown_count
        if best == float("inf") or value < best - rtol * abs(best) - atol:
            best, plateau = value, 0
        elif cool > 0:
            cool -= 1
        else:
            plateau += 1
            if plateau >= patience:
                scale, plateau, cool = max(scale * factor, min_scale), 0, cooldown
        updates = grads if scale == 1.0 else tree_map(lambda g: g * scale, grads)
        return updates, ReduceOnPlateauState(scale, best, plateau, cool, state.count + 1)

    return GradientTransformation(init, update)
