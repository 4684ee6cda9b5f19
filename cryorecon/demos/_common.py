"""Small pieces every demo shares: seeded data, gradient checks, figure saving.

Kept here so that the demos stay one idea each and never grow private copies.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from cryorecon.io.figures import save_png


def check_gradient(fun, grad, x, eps=1e-6, n_probe=None, rng=None) -> float:
    """Largest relative error between ``grad(x)`` and float64 central differences of ``fun``.

    ``fun(x) -> float`` and ``grad(x) -> array like x``. With ``n_probe``, only that many
    randomly chosen coordinates are probed (drawn from ``rng``), which keeps checks of
    larger models quick. The error is ``|g_num - g| / max(|g_num|, |g|, 1e-8)`` per
    coordinate, so it is meaningful for small and large components alike.
    """
    x = np.array(x, dtype=np.float64)
    g = np.asarray(grad(x), dtype=np.float64).ravel()
    flat = x.ravel()
    idx = np.arange(flat.size)
    if n_probe is not None and n_probe < flat.size:
        idx = (rng or np.random.default_rng(0)).choice(flat.size, size=n_probe, replace=False)
    worst = 0.0
    for i in idx:
        old = flat[i]
        flat[i] = old + eps
        f_plus = fun(flat.reshape(x.shape))
        flat[i] = old - eps
        f_minus = fun(flat.reshape(x.shape))
        flat[i] = old
        g_num = (f_plus - f_minus) / (2 * eps)
        worst = max(worst, abs(g_num - g[i]) / max(abs(g_num), abs(g[i]), 1e-8))
    return float(worst)


def save_figure(fig, out_dir, name: str) -> Path:
    """Write ``fig`` as ``out_dir/name`` (PNG), close it, and return the path.

    Through :func:`cryorecon.io.figures.save_png`: atomic, so an interrupted demo never
    leaves a half-written PNG.
    """
    return save_png(fig, Path(out_dir) / name, dpi=110, bbox_inches="tight")


def new_figure(ncols: int = 1, nrows: int = 1, size=(5.0, 4.0)):
    """A headless matplotlib figure with ``nrows x ncols`` axes (no pyplot, no display)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(size[0] * ncols, size[1] * nrows))
    return fig, fig.subplots(nrows, ncols, squeeze=False)


def standardized_split(X, y, rng, test_fraction=0.25):
    """Shuffle with ``rng``, split into train/test, and standardise with the train statistics."""
    X = np.asarray(X, dtype=np.float64)
    order = rng.permutation(len(X))
    n_test = int(round(test_fraction * len(X)))
    test, train = order[:n_test], order[n_test:]
    mean = X[train].mean(axis=0)
    std = X[train].std(axis=0)
    std[std == 0] = 1.0
    return (X[train] - mean) / std, y[train], (X[test] - mean) / std, y[test]


def load_digits():
    """scikit-learn's bundled ``digits`` (1797 x 64, labels 0-9); no download."""
    from sklearn.datasets import load_digits as _load

    data = _load()
    return data.data.astype(np.float64), data.target.astype(np.int64)


def load_breast_cancer():
    """scikit-learn's bundled ``breast_cancer`` (569 x 30), labels in {-1, +1}; no download."""
    from sklearn.datasets import load_breast_cancer as _load

    data = _load()
    return data.data.astype(np.float64), np.where(data.target == 1, 1.0, -1.0)


def softmax_cross_entropy(W, X, y, l2: float = 0.0):
    """Mean multinomial-logistic loss of linear scores ``X @ W`` and its gradient in ``W``.

    ``X`` is (n, d) (append a column of ones for a bias), ``W`` is (d, C), ``y`` holds
    integer labels in [0, C). With ``l2``, adds ``l2/2 |W|^2``. Returns ``(loss, grad)``;
    the gradient is ``X^T (softmax(X W) - onehot(y)) / n + l2 W``.
    """
    scores = X @ W
    scores = scores - scores.max(axis=1, keepdims=True)
    log_z = np.log(np.exp(scores).sum(axis=1))
    n = X.shape[0]
    loss = float(np.mean(log_z - scores[np.arange(n), y])) + 0.5 * l2 * float(np.sum(W * W))
    p = np.exp(scores - log_z[:, None])
    p[np.arange(n), y] -= 1.0
    return loss, X.T @ p / n + l2 * W
