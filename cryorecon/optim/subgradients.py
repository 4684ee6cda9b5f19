"""Non-differentiable convex losses that return a value and *a* subgradient.

Any optimizer in :mod:`cryorecon.optim` accepts a subgradient in place of a gradient;
with a decaying step (e.g. ``1 / (lambda t)`` as in Pegasos) subgradient descent
converges on convex problems (Shor 1985). These helpers pick a valid element of the
subdifferential at the kinks and run on numpy or cupy alike.
"""
from __future__ import annotations

from ._tree import xp_of


def hinge_loss(w, X, y):
    """Mean hinge loss of a linear classifier and a subgradient in ``w``.

    ``L(w) = (1/n) sum_i max(0, 1 - y_i <w, x_i>)``; a subgradient is
    ``-(1/n) sum_{i: y_i <w, x_i> < 1} y_i x_i`` (points exactly on the margin take
    the zero element of their subdifferential). For a bias, append a column of ones to
    ``X``.

    Parameters
    ----------
    w : (d,) array
        Weights.
    X : (n, d) array
        Examples.
    y : (n,) array
        Labels in {-1, +1}.

    Returns
    -------
    value : float
    subgradient : (d,) array, like ``w``

    Examples
    --------
    >>> import numpy as np
    >>> from cryorecon.optim import hinge_loss
    >>> X = np.array([[1.0, 0.0], [0.0, 1.0]]); y = np.array([1.0, -1.0])
    >>> v, g = hinge_loss(np.zeros(2), X, y)
    >>> v, g.tolist()
    (1.0, [-0.5, 0.5])

    References
    ----------
    Shalev-Shwartz, Singer, Srebro & Cotter (2011), "Pegasos: Primal Estimated
    sub-GrAdient SOlver for SVM", Math. Programming 127.
    """
    xp = xp_of(w)
    margins = y * (X @ w)
    active = margins < 1
    n = X.shape[0]
    value = float(xp.maximum(1.0 - margins, 0.0).sum()) / n
    coef = xp.where(active, -y, 0.0).astype(w.dtype, copy=False)
    return value, (X.T @ coef) / n


def l1(w):
    """The L1 norm ``sum |w_j|`` and the subgradient ``sign(w)`` (0 at 0).

    Parameters
    ----------
    w : array
        Any shape.

    Returns
    -------
    value : float
    subgradient : array like ``w``

    Examples
    --------
    >>> import numpy as np
    >>> from cryorecon.optim import l1
    >>> v, g = l1(np.array([-2.0, 0.0, 3.0]))
    >>> v, g.tolist()
    (5.0, [-1.0, 0.0, 1.0])

    References
    ----------
    Tibshirani (1996), "Regression shrinkage and selection via the lasso", JRSS B 58.
    """
    xp = xp_of(w)
    return float(xp.abs(w).sum()), xp.sign(w)
