"""The core abstraction: a gradient transformation is a pair of pure functions.

``init(params) -> state`` builds a small named-tuple state; ``update(grads, state,
params=None, **extra) -> (updates, new_state)`` turns gradients into updates. The
updates are *added* to the parameters by :func:`apply_updates`, so a descent step
carries its own minus sign, as in optax (Babuschkin et al. 2020, "The DeepMind JAX
Ecosystem"). Keyword arguments beyond ``params`` (for example ``value=loss`` for
:func:`~cryorecon.optim.reduce_on_plateau`, or ``curvature=...`` for
:func:`~cryorecon.optim.scale_by_diagonal`) are passed by :func:`chain` to every member,
and each transform ignores the ones it does not use.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

from ._tree import tree_map


class GradientTransformation(NamedTuple):
    """A pure pair ``(init, update)``.

    Attributes
    ----------
    init : callable
        ``init(params) -> state``.
    update : callable
        ``update(grads, state, params=None, **extra) -> (updates, new_state)``. It never
        modifies ``grads``, ``state`` or ``params`` in place.
    """

    init: Callable[[Any], Any]
    update: Callable[..., tuple]


class EmptyState(NamedTuple):
    """State of a transformation that keeps nothing."""


def identity() -> GradientTransformation:
    """Pass gradients through unchanged: ``u = g``.

    Examples
    --------
    >>> import numpy as np
    >>> from cryorecon import optim
    >>> t = optim.identity()
    >>> u, _ = t.update(np.ones(2), t.init(np.zeros(2)))
    >>> u.tolist()
    [1.0, 1.0]
    """

    def init(params):
        return EmptyState()

    def update(grads, state, params=None, **extra):
        return grads, state

    return GradientTransformation(init, update)


def chain(*transforms: GradientTransformation) -> GradientTransformation:
    """Compose transformations: the updates of each feed the next as its gradients.

    ``u = t_n(... t_2(t_1(g)))``; the state is the tuple of member states, in order.
    Extra keyword arguments given to ``update`` reach every member.

    Parameters
    ----------
    *transforms : GradientTransformation
        Applied left to right.

    Returns
    -------
    GradientTransformation

    Examples
    --------
    >>> import numpy as np
    >>> from cryorecon import optim
    >>> opt = optim.chain(optim.clip_by_global_norm(1.0), optim.sgd(0.1))
    >>> p = np.array([3.0, 4.0])
    >>> u, s = opt.update(2 * p, opt.init(p))
    >>> np.round(optim.apply_updates(p, u), 3).tolist()
    [2.94, 3.92]

    References
    ----------
    Babuschkin et al. (2020), "The DeepMind JAX Ecosystem" (optax).
    """
    transforms = tuple(transforms)

    def init(params):
        return tuple(t.init(params) for t in transforms)

    def update(grads, state, params=None, **extra):
        if len(state) != len(transforms):
            raise ValueError(
                f"chain of {len(transforms)} transforms got a state of {len(state)} parts"
            )
        new_states = []
        for t, s in zip(transforms, state):
            grads, s = t.update(grads, s, params, **extra)
            new_states.append(s)
        return grads, tuple(new_states)

    return GradientTransformation(init, update)


def apply_updates(params, updates):
    """Return ``params + updates`` leafwise, keeping each parameter's dtype.

    Parameters
    ----------
    params, updates : array or dict/list/tuple of arrays
        Same structure; an update leaf of ``None`` leaves its parameter alone.

    Returns
    -------
    New parameters (the inputs are not modified).

    Examples
    --------
    >>> import numpy as np
    >>> from cryorecon import optim
    >>> optim.apply_updates({"w": np.ones(2)}, {"w": np.array([0.5, -1.0])})["w"].tolist()
    [1.5, 0.0]
    """

    def add(p, u):
        if u is None:
            return p
        out = p + u
        return out if out.dtype == p.dtype else out.astype(p.dtype)

    return tree_map(add, params, updates)
