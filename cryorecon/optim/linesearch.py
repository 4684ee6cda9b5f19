"""Strong-Wolfe line search: bracketing then zoom (Nocedal & Wright 2006, alg. 3.5 and 3.6).

It finds a step ``alpha`` along a descent direction ``d`` from ``x`` with

- sufficient decrease: ``f(x + alpha d) <= f(x) + c1 alpha g.d``;
- strong curvature: ``|g(x + alpha d).d| <= c2 |g.d|``.

Trial points inside a bracket come from the cubic interpolating both ends' values and
slopes (N&W eq. 3.59), kept away from the ends; bisection is the fallback.
"""
from __future__ import annotations

import math
from typing import Any, NamedTuple

from ._tree import tree_map, tree_vdot


class LineSearchResult(NamedTuple):
    """The accepted step and everything evaluated there.

    ``success`` is False when no point met both conditions within ``max_evals``; the
    point returned is then the best decrease found (or ``alpha = 0``).
    """

    alpha: float
    value: float
    grad: Any
    updates: Any
    nfev: int
    success: bool


def _cubic_min(a, fa, da, b, fb, db):
    """Minimiser of the cubic matching f and f' at a and b, or None if it has none."""
    d1 = da + db - 3.0 * (fa - fb) / (a - b)
    disc = d1 * d1 - da * db
    if disc < 0 or not math.isfinite(disc):
        return None
    d2 = math.copysign(math.sqrt(disc), b - a)
    denom = db - da + 2.0 * d2
    if denom == 0:
        return None
    return b - (b - a) * (db + d2 - d1) / denom


def strong_wolfe(fun_and_grad, x, d, f0, g0, alpha0=1.0, c1=1e-4, c2=0.9,
                 max_evals=25, alpha_max=1e10) -> LineSearchResult:
    """Search along ``d`` from ``x`` for a step meeting the strong Wolfe conditions.

    Parameters
    ----------
    fun_and_grad : callable
        ``x -> (f, g)`` with ``f`` a scalar and ``g`` a tree like ``x``.
    x, d : tree of arrays
        Start point and descent direction (``g0.d < 0``).
    f0, g0 : float, tree
        Value and gradient at ``x``.
    alpha0 : float
        First trial step.
    c1, c2 : float
        Wolfe constants, ``0 < c1 < c2 < 1``.
    max_evals : int
        Most function evaluations.
    alpha_max : float
        Largest step tried while bracketing.

    Returns
    -------
    LineSearchResult
        ``updates`` is ``alpha d``, so ``apply_updates(x, updates)`` is exactly the
        point where ``value`` and ``grad`` were evaluated.

    References
    ----------
    Nocedal & Wright (2006), "Numerical Optimization", 2nd ed., algorithms 3.5 and 3.6.
    """
    f0 = float(f0)
    dphi0 = float(tree_vdot(g0, d))
    evals = []  # (alpha, f, dphi, g, updates)

    def phi(alpha):
        u = tree_map(lambda di: di * alpha, d)
        f, g = fun_and_grad(tree_map(lambda xi, ui: xi + ui, x, u))
        f = float(f)
        dphi = float(tree_vdot(g, d))
        evals.append((alpha, f, dphi, g, u))
        return f, dphi, g, u

    def done(alpha, f, g, u, ok=True):
        return LineSearchResult(alpha, f, g, u, len(evals), ok)

    def fallback():
        # Best sufficient-decrease point seen, else stay put.
        best = None
        for a, f, dp, g, u in evals:
            if math.isfinite(f) and f < f0 and (best is None or f < best[1]):
                best = (a, f, dp, g, u)
        if best is None:
            return LineSearchResult(0.0, f0, g0, tree_map(lambda di: di * 0.0, d), len(evals), False)
        return LineSearchResult(best[0], best[1], best[3], best[4], len(evals), False)

    def zoom(lo, f_lo, d_lo, hi, f_hi, d_hi):
        while len(evals) < max_evals:
            width = hi - lo
            a = _cubic_min(lo, f_lo, d_lo, hi, f_hi, d_hi) if math.isfinite(f_hi) else None
            left, right = min(lo, hi), max(lo, hi)
            margin = 0.1 * abs(width)
            if a is None or not (left + margin <= a <= right - margin):
                a = 0.5 * (lo + hi)
            f, dphi, g, u = phi(a)
            if not math.isfinite(f) or f > f0 + c1 * a * dphi0 or f >= f_lo:
                hi, f_hi, d_hi = a, f, dphi
            else:
                if abs(dphi) <= -c2 * dphi0:
                    return done(a, f, g, u)
                if dphi * (hi - lo) >= 0:
                    hi, f_hi, d_hi = lo, f_lo, d_lo
                lo, f_lo, d_lo = a, f, dphi
            if abs(hi - lo) <= 1e-16 * max(1.0, abs(lo)):
                break
        return fallback()

    a_prev, f_prev, d_prev = 0.0, f0, dphi0
    a = float(alpha0)
    first = True
    while len(evals) < max_evals:
        f, dphi, g, u = phi(a)
        if not math.isfinite(f) or f > f0 + c1 * a * dphi0 or (not first and f >= f_prev):
            return zoom(a_prev, f_prev, d_prev, a, f, dphi)
        if abs(dphi) <= -c2 * dphi0:
            return done(a, f, g, u)
        if dphi >= 0:
            return zoom(a, f, dphi, a_prev, f_prev, d_prev)
        a_prev, f_prev, d_prev = a, f, dphi
        a = min(2.0 * a, alpha_max)
        first = False
    return fallback()
