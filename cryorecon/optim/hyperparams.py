"""Hyperparameters that live in the optimizer state, where they can be read and changed."""
from __future__ import annotations

import numbers
from typing import Any, Callable, NamedTuple

from .base import GradientTransformation


class InjectHyperparamsState(NamedTuple):
    """Step count, the current numeric hyperparameters, and the inner optimizer's state.

    ``hyperparams`` is a plain dict of Python floats: read
    ``state.hyperparams["learning_rate"]`` to log the rate in force, or assign to it to
    change a constant (unscheduled) value for the following steps.
    """

    count: int
    hyperparams: dict
    inner_state: Any


def inject_hyperparams(factory: Callable[..., GradientTransformation], static_args=("mask",)):
    """Wrap an optimizer factory so that its numeric hyperparameters sit in the state.

    ``inject_hyperparams(adam)(learning_rate=sched, b1=0.9)`` returns a
    GradientTransformation. Each ``update`` evaluates every callable argument (a
    schedule) at the current step count, takes every numeric argument from
    ``state.hyperparams`` (so a caller may change it there), rebuilds the inner optimizer
    with those values and steps it. Arguments named in ``static_args``, and arguments
    that are neither numbers nor callables (bools, trees), are passed through unchanged.

    Parameters
    ----------
    factory : callable
        An optimizer factory such as :func:`~cryorecon.optim.adam`.
    static_args : tuple of str
        Names never treated as hyperparameters, even when callable (``mask`` may be a
        function of the parameters).

    Returns
    -------
    callable
        ``(**kwargs) -> GradientTransformation``.

    Examples
    --------
    >>> import numpy as np
    >>> from cryorecon import optim
    >>> opt = optim.inject_hyperparams(optim.sgd)(learning_rate=0.1, momentum=0.0)
    >>> p = np.ones(1); s = opt.init(p)
    >>> s.hyperparams["learning_rate"] = 0.5          # change it in place
    >>> u, s = opt.update(p, s)
    >>> u.tolist(), s.hyperparams["learning_rate"]
    ([-0.5], 0.5)

    References
    ----------
    Babuschkin et al. (2020), "The DeepMind JAX Ecosystem" (optax's
    ``inject_hyperparams``).
    """

    def wrapped(*args, **kwargs):
        if args:
            raise TypeError("inject_hyperparams: pass hyperparameters by keyword")
        schedules, numeric, static = {}, {}, {}
        for name, value in kwargs.items():
            if name in static_args:
                static[name] = value
            elif isinstance(value, bool):
                static[name] = value
            elif isinstance(value, numbers.Real):
                numeric[name] = float(value)
            elif callable(value):
                schedules[name] = value
            else:
                static[name] = value

        def current(count, stored):
            values = {k: float(stored[k]) for k in numeric}
            values.update({k: float(f(count)) for k, f in schedules.items()})
            return values

        def init(params):
            hp = current(0, numeric)
            return InjectHyperparamsState(0, hp, factory(**hp, **static).init(params))

        def update(grads, state, params=None, **extra):
            hp = current(state.count, state.hyperparams)
            inner = factory(**hp, **static)
            updates, inner_state = inner.update(grads, state.inner_state, params, **extra)
            return updates, InjectHyperparamsState(state.count + 1, hp, inner_state)

        return GradientTransformation(init, update)

    return wrapped
