"""Clipping: bound the gradient by value, per-array norm, or global norm.

Each transform keeps the norm (or largest magnitude) seen *before* clipping in its
state, so a training loop can log it. On numpy the norms are Python floats; on cupy
they stay 0-d device arrays and the clip factor is applied without a host round trip.
"""
from __future__ import annotations

from typing import Any, NamedTuple

from ._tree import is_cupy, tree_leaves, tree_map, tree_norm, xp_of
from .base import GradientTransformation


class ClipState(NamedTuple):
    """Largest gradient magnitude before clipping (per the last update)."""

    max_abs: Any


def clip(max_abs: float) -> GradientTransformation:
    """Clip every gradient entry to ``[-max_abs, max_abs]``: ``u = clip(g, -c, c)``.

    Parameters
    ----------
    max_abs : float
        Bound ``c > 0``.

    Returns
    -------
    GradientTransformation

    Examples
    --------
    >>> import numpy as np
    >>> from cryorecon import optim
    >>> t = optim.clip(1.0)
    >>> u, s = t.update(np.array([-3.0, 0.5]), t.init(None))
    >>> u.tolist(), s.max_abs
    ([-1.0, 0.5], 3.0)

    References
    ----------
    Mikolov (2012), "Statistical Language Models Based on Neural Networks", PhD thesis,
    Brno (value clipping); Pascanu et al. (2013) discuss it alongside norm clipping.
    """
    c = float(max_abs)

    def init(params):
        return ClipState(max_abs=0.0)

    def update(grads, state, params=None, **extra):
        leaves = tree_leaves(grads)
        peaks = [xp_of(g).abs(g).max() for g in leaves]
        peak = max(float(p) for p in peaks) if peaks else 0.0
        return tree_map(lambda g: xp_of(g).clip(g, -c, c), grads), ClipState(max_abs=peak)

    return GradientTransformation(init, update)


class ClipByNormState(NamedTuple):
    """Norm of each gradient leaf before clipping (same structure as the gradients)."""

    norms: Any


def _factor(norm, c):
    # c / max(norm, c) is 1 below the threshold and c / norm above; it is also safe for a
    # zero gradient, which a plain c / norm is not.
    if isinstance(norm, float):
        return 1.0 if norm <= c else c / norm
    return c / xp_of(norm).maximum(norm, c)


def clip_by_norm(max_norm: float) -> GradientTransformation:
    """Rescale each array whose Euclidean norm exceeds ``c``: ``u = g min(1, c / |g|)``.

    Parameters
    ----------
    max_norm : float
        Per-array bound ``c > 0``.

    Returns
    -------
    GradientTransformation

    Examples
    --------
    >>> import numpy as np
    >>> from cryorecon import optim
    >>> t = optim.clip_by_norm(1.0)
    >>> u, s = t.update({"a": np.array([3.0, 4.0]), "b": np.array([0.1])}, t.init(None))
    >>> u["a"].tolist(), u["b"].tolist(), s.norms["a"]
    ([0.6000000000000001, 0.8], [0.1], 5.0)

    References
    ----------
    Pascanu, Mikolov & Bengio (2013), "On the difficulty of training recurrent neural
    networks", ICML.
    """
    c = float(max_norm)

    def init(params):
        return ClipByNormState(norms=tree_map(lambda _: 0.0, params) if params is not None else 0.0)

    def update(grads, state, params=None, **extra):
        norms = tree_map(tree_norm, grads)
        clipped = tree_map(lambda g, n: _apply(g, _factor(n, c)), grads, norms)
        return clipped, ClipByNormState(norms=norms)

    return GradientTransformation(init, update)


def _apply(g, factor):
    if isinstance(factor, float) and factor == 1.0:
        return g
    return g * factor


class ClipByGlobalNormState(NamedTuple):
    """Global gradient norm before clipping."""

    norm: Any


def clip_by_global_norm(max_norm: float) -> GradientTransformation:
    """Rescale all gradients together when their joint norm exceeds ``c``.

    ``n = sqrt(sum_leaves |g|^2)``; ``u = g min(1, c / n)``: the direction is kept and
    the norm becomes ``min(n, c)``.

    Parameters
    ----------
    max_norm : float
        Global bound ``c > 0``.

    Returns
    -------
    GradientTransformation

    Examples
    --------
    >>> import numpy as np
    >>> from cryorecon import optim
    >>> t = optim.clip_by_global_norm(1.0)
    >>> u, s = t.update({"a": np.array([3.0]), "b": np.array([4.0])}, t.init(None))
    >>> [round(float(u[k][0]), 6) for k in "ab"], s.norm
    ([0.6, 0.8], 5.0)

    References
    ----------
    Pascanu, Mikolov & Bengio (2013), "On the difficulty of training recurrent neural
    networks", ICML.
    """
    c = float(max_norm)

    def init(params):
        leaves = tree_leaves(params) if params is not None else []
        if leaves and is_cupy(leaves[0]):
            return ClipByGlobalNormState(norm=xp_of(leaves[0]).zeros((), leaves[0].dtype))
        return ClipByGlobalNormState(norm=0.0)

    def update(grads, state, params=None, **extra):
        norm = tree_norm(grads)
        f = _factor(norm, c)
        return tree_map(lambda g: _apply(g, f), grads), ClipByGlobalNormState(norm=norm)

    return GradientTransformation(init, update)
