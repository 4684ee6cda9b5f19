"""Step-size schedules: plain functions ``count -> float`` of the step count (0, 1, ...).

Pass one wherever a ``learning_rate`` is accepted, or to
:func:`~cryorecon.optim.inject_hyperparams`. Because a schedule depends only on the
count, and the count lives in the optimizer state, saving the state saves the schedule's
position. Reduce-on-plateau depends on the loss as well, so it is a transformation
instead: :func:`cryorecon.optim.reduce_on_plateau` (also reachable here).
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

from .plateau import reduce_on_plateau  # noqa: F401  (listed here with its siblings)

Schedule = Callable[[int], float]


def constant_schedule(value: float) -> Schedule:
    """``lr(t) = value``.

    Examples
    --------
    >>> from cryorecon.optim import schedules
    >>> schedules.constant_schedule(0.1)(1000)
    0.1
    """
    value = float(value)
    return lambda count: value


def step_decay(init_value: float, step_size: int, factor: float = 0.1) -> Schedule:
    """Multiply by ``factor`` every ``step_size`` steps: ``lr(t) = v0 factor^floor(t / s)``.

    Examples
    --------
    >>> from cryorecon.optim import schedules
    >>> f = schedules.step_decay(1.0, step_size=10, factor=0.5)
    >>> f(9), f(10), f(25)
    (1.0, 0.5, 0.25)
    """
    init_value, factor, step_size = float(init_value), float(factor), int(step_size)
    return lambda count: init_value * factor ** (int(count) // step_size)


def piecewise_constant(init_value: float, boundaries_and_scales: dict) -> Schedule:
    """Multiply by ``scale`` once the count reaches each boundary (cumulatively).

    Examples
    --------
    >>> from cryorecon.optim import schedules
    >>> f = schedules.piecewise_constant(1.0, {10: 0.1, 20: 0.5})
    >>> f(5), f(10), round(f(20), 12)
    (1.0, 0.1, 0.05)
    """
    items = sorted((int(b), float(s)) for b, s in boundaries_and_scales.items())

    def f(count):
        v = float(init_value)
        for b, s in items:
            if count >= b:
                v *= s
        return v

    return f


def exponential_decay(init_value: float, decay_rate: float, transition_steps: int = 1,
                      end_value: float | None = None, staircase: bool = False) -> Schedule:
    """``lr(t) = v0 decay_rate^(t / transition_steps)``, floored (or capped) at ``end_value``.

    Examples
    --------
    >>> from cryorecon.optim import schedules
    >>> f = schedules.exponential_decay(1.0, 0.5, transition_steps=2)
    >>> f(0), f(2), round(f(3), 6)
    (1.0, 0.5, 0.353553)
    """
    init_value, decay_rate = float(init_value), float(decay_rate)

    def f(count):
        p = count / transition_steps
        if staircase:
            p = math.floor(p)
        v = init_value * decay_rate**p
        if end_value is not None:
            v = max(v, end_value) if decay_rate < 1 else min(v, end_value)
        return float(v)

    return f


def cosine_decay(init_value: float, decay_steps: int, alpha: float = 0.0) -> Schedule:
    """Half-cosine from ``v0`` to ``alpha v0`` over ``decay_steps``, then constant.

    ``lr(t) = v0 ((1 - alpha) (1 + cos(pi min(t, T) / T)) / 2 + alpha)``
    (Loshchilov & Hutter 2017, "SGDR: Stochastic Gradient Descent with Warm Restarts").

    Examples
    --------
    >>> from cryorecon.optim import schedules
    >>> f = schedules.cosine_decay(1.0, 100)
    >>> f(0), round(f(50), 12), f(100), f(200)
    (1.0, 0.5, 0.0, 0.0)
    """
    init_value, alpha, decay_steps = float(init_value), float(alpha), int(decay_steps)

    def f(count):
        t = min(count, decay_steps) / decay_steps
        return init_value * ((1.0 - alpha) * 0.5 * (1.0 + math.cos(math.pi * t)) + alpha)

    return f


def linear_schedule(init_value: float, end_value: float, transition_steps: int,
                    transition_begin: int = 0) -> Schedule:
    """Linear ramp from ``init_value`` to ``end_value`` over ``transition_steps``.

    Constant before ``transition_begin`` and after the ramp.

    Examples
    --------
    >>> from cryorecon.optim import schedules
    >>> f = schedules.linear_schedule(0.0, 1.0, 10)
    >>> f(0), f(5), f(50)
    (0.0, 0.5, 1.0)
    """
    a, b, n = float(init_value), float(end_value), int(transition_steps)

    def f(count):
        t = min(max(count - transition_begin, 0), n) / n if n > 0 else 1.0
        return a + (b - a) * t

    return f


def linear_warmup(peak_value: float, warmup_steps: int, init_value: float = 0.0) -> Schedule:
    """Linear warmup from ``init_value`` to ``peak_value`` over ``warmup_steps``, then flat.

    Goyal et al. (2017), "Accurate, Large Minibatch SGD: Training ImageNet in 1 Hour".

    Examples
    --------
    >>> from cryorecon.optim import schedules
    >>> f = schedules.linear_warmup(1.0, 4)
    >>> [f(t) for t in range(6)]
    [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
    """
    return linear_schedule(init_value, peak_value, warmup_steps)


def join_schedules(schedules: Sequence[Schedule], boundaries: Sequence[int]) -> Schedule:
    """Run ``schedules[i]`` from ``boundaries[i-1]``, each seeing a count restarted at 0.

    Examples
    --------
    >>> from cryorecon.optim import schedules
    >>> f = schedules.join_schedules([lambda t: 1.0, lambda t: float(t)], [5])
    >>> f(4), f(5), f(7)
    (1.0, 0.0, 2.0)
    """
    boundaries = [int(b) for b in boundaries]

    def f(count):
        start = 0
        for s, b in zip(schedules, boundaries):
            if count < b:
                return float(s(count - start))
            start = b
        return float(schedules[len(boundaries)](count - start))

    return f


def warmup_cosine_decay(init_value: float, peak_value: float, warmup_steps: int,
                        decay_steps: int, end_value: float = 0.0) -> Schedule:
    """Linear warmup to ``peak_value``, then cosine decay to ``end_value``.

    ``decay_steps`` counts the whole schedule, warmup included (as in optax).
    Goyal et al. (2017) for the warmup; Loshchilov & Hutter (2017) for the cosine.

    Examples
    --------
    >>> from cryorecon.optim import schedules
    >>> f = schedules.warmup_cosine_decay(0.0, 1.0, warmup_steps=10, decay_steps=110)
    >>> f(0), f(5), f(10), round(f(60), 12), f(110)
    (0.0, 0.5, 1.0, 0.5, 0.0)
    """
    peak = float(peak_value)
    alpha = float(end_value) / peak if peak else 0.0
    return join_schedules(
        [linear_schedule(init_value, peak, warmup_steps),
         cosine_decay(peak, decay_steps - warmup_steps, alpha)],
        [warmup_steps],
    )
