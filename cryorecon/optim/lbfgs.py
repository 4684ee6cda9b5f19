"""L-BFGS: limited-memory quasi-Newton steps with a strong-Wolfe line search.

The direction comes from the two-loop recursion over the last ``m`` pairs
``s = x_{k+1} - x_k``, ``y = g_{k+1} - g_k`` (Nocedal 1980; Liu & Nocedal 1989), with the
initial inverse Hessian ``gamma I``, ``gamma = s.y / y.y`` of the newest pair; the step
length comes from :func:`~cryorecon.optim.linesearch.strong_wolfe`. The history is a
fixed-size ring of stacked arrays, so the state is plain arrays that
:func:`~cryorecon.optim.save_state` can write.
"""
from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy

from ._tree import tree_leaves, tree_map, tree_norm, tree_vdot, xp_of
from .base import GradientTransformation, apply_updates
from .linesearch import strong_wolfe


class LbfgsState(NamedTuple):
    """Curvature pairs, the value and gradient at the current point, and counters.

    ``s_hist`` and ``y_hist`` hold, per parameter leaf, arrays of shape
    ``(memory_size, *leaf.shape)``; slot ``newest`` is the latest pair and ``n_stored``
    slots are valid. ``value`` and ``grad`` are those at the parameters the last update
    moved to, so a loop need not evaluate them again. ``linesearch_ok`` is False when
    the last line search failed to meet the Wolfe conditions.
    """

    count: int
    s_hist: Any
    y_hist: Any
    rho: Any
    n_stored: int
    newest: int
    value: float
    grad: Any
    nfev: int
    linesearch_ok: bool


def _slot(hist, i):
    return tree_map(lambda h: h[i], hist)


def _store(hist, i, tree):
    # A copy, then one slot written: the old state is never touched.
    def put(h, v):
        h = h.copy()
        h[i] = v
        return h

    return tree_map(put, hist, tree)


def _direction(g, state, memory_size):
    """Two-loop recursion: ``-H g`` with H the L-BFGS inverse-Hessian estimate."""
    k = state.n_stored
    if k == 0:
        return tree_map(lambda x: -x, g)
    order = [(state.newest - j) % memory_size for j in range(k)]  # newest first
    q = g
    alphas = []
    for i in order:
        a = state.rho[i] * float(tree_vdot(_slot(state.s_hist, i), q))
        alphas.append(a)
        q = tree_map(lambda qi, yi: qi - a * yi, q, _slot(state.y_hist, i))
    y_new = _slot(state.y_hist, state.newest)
    gamma = 1.0 / (state.rho[state.newest] * float(tree_vdot(y_new, y_new)))
    r = tree_map(lambda qi: gamma * qi, q)
    for i, a in zip(reversed(order), reversed(alphas)):
        b = state.rho[i] * float(tree_vdot(_slot(state.y_hist, i), r))
        r = tree_map(lambda ri, si: ri + (a - b) * si, r, _slot(state.s_hist, i))
    return tree_map(lambda x: -x, r)


def lbfgs(memory_size: int = 10, c1: float = 1e-4, c2: float = 0.9, max_linesearch: int = 25):
    """L-BFGS as a GradientTransformation whose ``update`` runs its own line search.

    One ``update`` is one L-BFGS iteration: ``d = -H_k g_k`` by the two-loop
    recursion, ``alpha`` by a strong-Wolfe line search, ``u = alpha d``; then the pair
    ``(s, y) = (u, g_{k+1} - g_k)`` enters the history when ``s.y > 0``.

    The line search needs the objective, so ``update`` takes two extra keywords::

        updates, state = opt.update(grads, state, params, value=f,
                                    fun_and_grad=fun_and_grad)

    where ``fun_and_grad(params) -> (f, grads)``. After the update, ``state.value`` and
    ``state.grad`` are the loss and gradient at ``apply_updates(params, updates)``:
    feed them to the next call instead of evaluating again. ``state.nfev`` counts the
    evaluations made by the line searches. For a complete driver, use
    :func:`lbfgs_minimize`.

    Parameters
    ----------
    memory_size : int
        Number of curvature pairs kept (``m``).
    c1, c2 : float
        Strong-Wolfe constants.
    max_linesearch : int
        Most function evaluations per line search.

    Returns
    -------
    GradientTransformation

    Examples
    --------
    >>> import numpy as np
    >>> from cryorecon import optim
    >>> def fg(x):
    ...     return float(0.5 * x @ x), x.copy()
    >>> opt = optim.lbfgs()
    >>> x = np.array([3.0, -4.0]); s = opt.init(x)
    >>> f, g = fg(x)
    >>> for _ in range(2):   # the second step already has the exact curvature
    ...     u, s = opt.update(g, s, x, value=f, fun_and_grad=fg)
    ...     x, f, g = optim.apply_updates(x, u), s.value, s.grad
    >>> bool(np.abs(x).max() < 1e-12), s.value < 1e-20
    (True, True)

    References
    ----------
    Liu & Nocedal (1989), "On the limited memory BFGS method for large scale
    optimization", Math. Programming 45; Nocedal & Wright (2006), "Numerical
    Optimization", algorithms 7.4, 3.5 and 3.6.
    """
    m = int(memory_size)

    def init(params):
        def stack(p):
            return xp_of(p).zeros((m,) + tuple(p.shape), dtype=p.dtype)

        return LbfgsState(
            count=0,
            s_hist=tree_map(stack, params),
            y_hist=tree_map(stack, params),
            rho=numpy.zeros(m, dtype=numpy.float64),
            n_stored=0,
            newest=-1,
            value=float("nan"),
            grad=tree_map(lambda p: xp_of(p).zeros_like(p), params),
            nfev=0,
            linesearch_ok=True,
        )

    def update(grads, state, params=None, value=None, fun_and_grad=None, **extra):
        if params is None or fun_and_grad is None:
            raise ValueError("lbfgs.update needs params and fun_and_grad=(params -> (f, grads))")
        nfev = state.nfev
        if value is None:
            value, grads = fun_and_grad(params)
            nfev += 1
        value = float(value)
        d = _direction(grads, state, m)
        slope = float(tree_vdot(grads, d))
        if not slope < 0:  # lost descent (bad curvature pairs): restart from steepest descent
            state = state._replace(n_stored=0, newest=-1)
            d = tree_map(lambda x: -x, grads)
            slope = float(tree_vdot(grads, d))
        if state.n_stored == 0:
            # No curvature yet: a first step of unit length, as L-BFGS-B does.
            gnorm = float(tree_norm(grads))
            alpha0 = min(1.0, 1.0 / gnorm) if gnorm > 0 else 1.0
        else:
            alpha0 = 1.0
        ls = strong_wolfe(fun_and_grad, params, d, value, grads, alpha0, c1, c2, max_linesearch)
        nfev += ls.nfev
        s_hist, y_hist, rho = state.s_hist, state.y_hist, state.rho
        n_stored, newest = state.n_stored, state.newest
        if ls.alpha > 0:
            y = tree_map(lambda a, b: a - b, ls.grad, grads)
            sy = float(tree_vdot(ls.updates, y))
            yy = float(tree_vdot(y, y))
            if sy > numpy.finfo(numpy.float64).eps * yy and yy > 0:
                newest = (newest + 1) % m
                s_hist = _store(s_hist, newest, ls.updates)
                y_hist = _store(y_hist, newest, y)
                rho = rho.copy()
                rho[newest] = 1.0 / sy
                n_stored = min(n_stored + 1, m)
        new_state = LbfgsState(
            count=state.count + 1, s_hist=s_hist, y_hist=y_hist, rho=rho,
            n_stored=n_stored, newest=newest, value=ls.value, grad=ls.grad,
            nfev=nfev, linesearch_ok=ls.success,
        )
        return ls.updates, new_state

    return GradientTransformation(init, update)


def _as_float(x0):
    def conv(x):
        xp = xp_of(x)
        x = xp.asarray(x)
        return x if x.dtype.kind in "fc" else x.astype(xp.float64)

    return tree_map(conv, x0)


def _max_abs(tree):
    return max((float(xp_of(g).abs(g).max()) for g in tree_leaves(tree) if g.size), default=0.0)


#: scipy's L-BFGS-B defaults: ``gtol`` and ``ftol = factr * eps`` with ``factr = 1e7``.
_DEFAULT_GTOL = 1e-5
_DEFAULT_FTOL = 2.220446049250313e-09


def lbfgs_minimize(fun_and_grad, x0, max_iter: int = 500, tol: float | None = None,
                   ftol: float | None = None, memory_size: int = 10,
                   c1: float = 1e-4, c2: float = 0.9, max_linesearch: int = 25,
                   callback=None):
    """Minimise a smooth function with L-BFGS.

    Iterates :func:`lbfgs` until the largest gradient entry is at most ``gtol``, or the
    relative decrease ``(f_k - f_{k+1}) / max(|f_k|, |f_{k+1}|, 1)`` is at most
    ``ftol`` (the two tests of scipy's L-BFGS-B), or ``max_iter`` iterations have run.
    As in ``scipy.optimize.minimize(..., method="L-BFGS-B", tol=...)``, ``tol`` sets
    both tolerances (``ftol`` given as well wins for the decrease test); without it they
    are scipy's defaults, ``gtol = 1e-5`` and ``ftol = 2.2e-9``.

    Parameters
    ----------
    fun_and_grad : callable
        ``x -> (f, g)``: a scalar and a gradient with the structure of ``x``.
    x0 : array or tree of arrays
        Start point, numpy or cupy. Integer input becomes float64; float32 is kept
        (float64 is advised: the line search compares small differences of ``f``).
    max_iter : int
        Most iterations.
    tol : float, optional
        Tolerance of both tests: the gradient's max-norm ``gtol`` and, unless ``ftol``
        is given, the relative decrease. Default: scipy's (see above).
    ftol : float, optional
        Relative-decrease tolerance; ``0`` runs on until the gradient test (or
        ``max_iter``) stops it. Default ``tol`` if given, else ``2.2e-9``.
    memory_size, c1, c2, max_linesearch
        As in :func:`lbfgs`.
    callback : callable, optional
        ``callback(x, f)`` after each iteration; returning True stops the run.

    Returns
    -------
    x : like ``x0``
        The final point.
    info : dict
        ``fun`` (final value), ``grad`` (final gradient), ``nit`` (iterations), ``nfev``
        (function evaluations), ``success`` (bool), ``message`` (str).

    Examples
    --------
    >>> import numpy as np
    >>> from cryorecon import optim
    >>> def rosen(x):
    ...     f = 100 * (x[1] - x[0] ** 2) ** 2 + (1 - x[0]) ** 2
    ...     g = np.array([-400 * x[0] * (x[1] - x[0] ** 2) - 2 * (1 - x[0]),
    ...                   200 * (x[1] - x[0] ** 2)])
    ...     return f, g
    >>> x, info = optim.lbfgs_minimize(rosen, np.array([-1.2, 1.0]), tol=1e-8)
    >>> np.round(x, 6).tolist(), info["success"]
    ([1.0, 1.0], True)

    References
    ----------
    Liu & Nocedal (1989), Math. Programming 45; Nocedal & Wright (2006), chapter 7.
    """
    gtol = _DEFAULT_GTOL if tol is None else float(tol)
    if ftol is None:
        ftol = _DEFAULT_FTOL if tol is None else float(tol)
    x = _as_float(x0)
    opt = lbfgs(memory_size, c1, c2, max_linesearch)
    state = opt.init(x)
    f, g = fun_and_grad(x)
    f = float(f)
    nfev = 1
    nit = 0
    success, message = False, "maximum number of iterations reached"
    if not math.isfinite(f):
        return x, {"fun": f, "grad": g, "nit": 0, "nfev": 1, "success": False,
                   "message": "objective is not finite at x0"}
    while nit < max_iter:
        if _max_abs(g) <= gtol:
            success, message = True, "gradient norm below tol"
            break
        u, state = opt.update(g, state, x, value=f, fun_and_grad=fun_and_grad)
        nfev = 1 + state.nfev
        if not state.linesearch_ok and state.value >= f:
            message = "line search could not decrease the function"
            break
        x = apply_updates(x, u)
        nit += 1
        f_prev, f, g = f, state.value, state.grad
        if callback is not None and callback(x, f):
            message = "stopped by callback"
            break
        if (f_prev - f) <= ftol * max(abs(f_prev), abs(f), 1.0):
            success, message = True, "relative reduction of f below ftol"
            break
    else:
        if _max_abs(g) <= gtol:
            success, message = True, "gradient norm below tol"
    return x, {"fun": f, "grad": g, "nit": nit, "nfev": nfev, "success": success,
               "message": message}
