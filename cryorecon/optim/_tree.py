"""Parameter trees: an array, or dicts / lists / tuples of arrays, numpy or cupy alike.

Every transform in :mod:`cryorecon.optim` walks parameters, gradients and updates with
these helpers, so one code path serves a single array and a model's dict of weights.
The array module of each leaf is read from the leaf itself (``type(x).__module__``),
and cupy is imported only when a cupy array is actually seen.
"""
from __future__ import annotations

import math

import numpy


def xp_of(x):
    """numpy or cupy: the module that owns array ``x`` (numpy for anything else)."""
    if type(x).__module__.startswith("cupy"):
        import cupy

        return cupy
    return numpy


def is_cupy(x) -> bool:
    """True when ``x`` is a cupy array (checked without importing cupy)."""
    return type(x).__module__.startswith("cupy")


def _is_node(tree) -> bool:
    # Named tuples are states, never parameter containers, so they count as leaves here.
    return isinstance(tree, dict) or (
        isinstance(tree, (list, tuple)) and not hasattr(tree, "_fields")
    )


def tree_map(f, tree, *rest):
    """Apply ``f(leaf, *matching_leaves)`` over ``tree``; ``None`` leaves stay ``None``."""
    if isinstance(tree, dict):
        return {k: tree_map(f, v, *(r[k] for r in rest)) for k, v in tree.items()}
    if _is_node(tree):
        return type(tree)(tree_map(f, v, *(r[i] for r in rest)) for i, v in enumerate(tree))
    if tree is None:
        return None
    return f(tree, *rest)


def tree_leaves(tree) -> list:
    """The non-``None`` leaves of ``tree`` in a fixed (insertion) order."""
    out = []

    def visit(t):
        if isinstance(t, dict):
            for v in t.values():
                visit(v)
        elif _is_node(t):
            for v in t:
                visit(v)
        elif t is not None:
            out.append(t)

    visit(tree)
    return out


def tree_zeros_like(tree):
    """Zeros with each leaf's shape, dtype and array module."""
    return tree_map(lambda x: xp_of(x).zeros_like(x), tree)


def _host_or_device_sum(values):
    # numpy dot products are Python floats already; cupy ones stay 0-d device arrays so
    # that no step forces a device-to-host synchronisation.
    total = 0.0
    for v in values:
        total = total + v
    return total


def tree_vdot(a, b):
    """Real inner product ``sum_leaves <a, b>`` (a float for numpy, a 0-d array for cupy)."""
    vals = []
    for x, y in zip(tree_leaves(a), tree_leaves(b)):
        xp = xp_of(x)
        v = xp.vdot(x.ravel(), y.ravel())
        vals.append(float(v.real) if xp is numpy else v.real)
    return _host_or_device_sum(vals)


def tree_sq_norm(tree):
    """Squared Euclidean norm over all leaves."""
    return tree_vdot(tree, tree)


def tree_norm(tree):
    """Euclidean (global) norm over all leaves: a float, or a 0-d cupy array."""
    sq = tree_sq_norm(tree)
    if isinstance(sq, float):
        return math.sqrt(sq)
    return xp_of(sq).sqrt(sq)


def tree_all_finite(tree) -> bool:
    """True when every entry of every leaf is finite (synchronises a GPU once)."""
    return all(bool(xp_of(x).isfinite(x).all()) for x in tree_leaves(tree))


def tree_scale(tree, factor):
    """Each leaf times ``factor`` (a float or a 0-d array on the leaf's device)."""
    return tree_map(lambda x: x * factor, tree)


def tree_add(a, b):
    """Leafwise ``a + b``."""
    return tree_map(lambda x, y: x + y, a, b)


def tree_axpy(alpha, x, y):
    """Leafwise ``alpha * x + y``."""
    return tree_map(lambda u, v: alpha * u + v, x, y)


def tree_sub(a, b):
    """Leafwise ``a - b``."""
    return tree_map(lambda x, y: x - y, a, b)
