"""Gradient accumulation is the large-batch step; the linear-scaling rule and where it breaks.

1. **Accumulation.** With a mean loss and ``k`` equal micro-batches, the mean of the
   micro-batch gradients *is* the gradient of the concatenated batch, so
   :func:`cryorecon.optim.accumulate` (``every_k=k``) feeds the inner optimizer exactly
   the large-batch gradient. The demo checks it in float64 for a stateful inner
   optimizer (Adam), step after step.
2. **Linear scaling** (Goyal et al. 2017, "Accurate, large minibatch SGD: training
   ImageNet in 1 hour"): multiplying the batch by ``k`` and the learning rate by ``k``
   keeps the loss per epoch nearly unchanged, because ``k`` small steps
   ``(1 - eta h)^k`` and one large step ``1 - k eta h`` agree while ``k eta h`` is small.
   On a quadratic the large step is unstable once ``k eta > 2 / L`` (``L`` the largest
   Hessian eigenvalue), so the rule must break there. The model is least-squares
   regression of one-hot labels on standardised ``digits`` pixels, whose Hessian
   ``X^T X / n`` gives ``L`` exactly.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from cryorecon import optim
from cryorecon.demos._common import load_digits, new_figure, save_figure, standardized_split

DESCRIPTION = (
    "Micro-batch accumulation equals the large-batch step to 1e-12; the Goyal linear-"
    "scaling rule on digits tracks while k*eta << 2/L and diverges past 2/L"
)

#: Batch-size multipliers ``k`` of the linear-scaling experiment.
SCALES = (1, 2, 4, 8, 16, 32, 64)
BASE_BATCH = 8
#: Base learning rate as a fraction of the stability limit ``2 / L``: ``k = 64`` crosses it.
BASE_LR_FRACTION = 1.0 / 40.0


def loss(W: np.ndarray, X: np.ndarray, Y: np.ndarray) -> float:
    """Mean squared error ``|X W - Y|^2 / (2 n)`` (``X`` carries a bias column)."""
    R = X @ W - Y
    return float(np.sum(R * R) / (2 * len(X)))


def grad(W: np.ndarray, X: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """Gradient ``X^T (X W - Y) / n`` of :func:`loss`."""
    return X.T @ (X @ W - Y) / len(X)


def curvature_max(X: np.ndarray) -> float:
    """Largest eigenvalue ``L`` of the Hessian ``X^T X / n`` of :func:`loss`."""
    return float(np.linalg.eigvalsh(X.T @ X / len(X))[-1])


def accumulation_mismatch(X, Y, every_k, micro_batch, n_steps, rng) -> float:
    """Largest ``|W_accumulated - W_large_batch|`` over ``n_steps`` Adam steps (float64).

    Both runs see the same examples: each large batch is ``every_k`` micro-batches of
    ``micro_batch`` examples, fed to ``accumulate(adam, every_k)`` one at a time and to a
    plain Adam as one batch. Between inner steps the accumulated run must not move.
    """
    W0 = np.zeros((X.shape[1], Y.shape[1]))
    big, acc = optim.adam(1e-2), optim.accumulate(optim.adam(1e-2), every_k=every_k)
    W_big, W_acc = W0.copy(), W0.copy()
    s_big, s_acc = big.init(W_big), acc.init(W_acc)
    worst = 0.0
    for _ in range(n_steps):
        idx = rng.choice(len(X), size=every_k * micro_batch, replace=False)
        u, s_big = big.update(grad(W_big, X[idx], Y[idx]), s_big, W_big)
        W_big = optim.apply_updates(W_big, u)
        for j in range(every_k):
            part = idx[j * micro_batch:(j + 1) * micro_batch]
            u, s_acc = acc.update(grad(W_acc, X[part], Y[part]), s_acc, W_acc)
            if j < every_k - 1 and np.any(u != 0):
                return float("inf")
            W_acc = optim.apply_updates(W_acc, u)
        worst = max(worst, float(np.max(np.abs(W_acc - W_big))))
    return worst


def train_epochs(X, Y, batch_size, lr, n_epochs, rng):
    """Plain mini-batch SGD over shuffled epochs; the full-data loss after each epoch.

    Stops early (padding with ``inf``) once the loss is non-finite or 1e6 times its start.
    """
    W = np.zeros((X.shape[1], Y.shape[1]))
    opt = optim.sgd(lr)
    state = opt.init(W)
    f0 = loss(W, X, Y)
    history = [f0]
    for _ in range(n_epochs):
        order = rng.permutation(len(X))
        for start in range(0, len(X) - batch_size + 1, batch_size):
            idx = order[start:start + batch_size]
            updates, state = opt.update(grad(W, X[idx], Y[idx]), state, W)
            W = optim.apply_updates(W, updates)
        f = loss(W, X, Y)
        if not np.isfinite(f) or f > 1e6 * f0:
            history += [np.inf] * (n_epochs + 1 - len(history))
            break
        history.append(f)
    return np.array(history)


def run(out_dir: Path, quick: bool = False, seed: int = 0) -> dict:
    """Check accumulation exactness and the linear-scaling rule on ``digits``.

    Returns
    -------
    dict
        ``accumulation_max_abs_diff``; ``L``, ``base_lr``; per scale ``k``:
        ``lr_over_limit_k`` (``k eta / (2 / L)``), ``deviation_k`` (largest relative gap
        to the ``k = 1`` loss curve over epochs 1..E) and ``final_loss_k``; and
        ``initial_loss``.
    """
    rng = np.random.default_rng(seed)
    X, labels = load_digits()
    X_tr, y_tr, _, _ = standardized_split(X, labels, rng)
    X_tr = np.hstack([X_tr, np.ones((len(X_tr), 1))])
    Y_tr = np.eye(10)[y_tr]

    mismatch = accumulation_mismatch(X_tr, Y_tr, every_k=4, micro_batch=16,
                                     n_steps=10 if quick else 50, rng=rng)

    L = curvature_max(X_tr)
    base_lr = BASE_LR_FRACTION * 2.0 / L
    n_epochs = 4 if quick else 15
    curves = {k: train_epochs(X_tr, Y_tr, k * BASE_BATCH, k * base_lr, n_epochs, rng)
              for k in SCALES}
    ref = curves[1]
    metrics = {"accumulation_max_abs_diff": mismatch, "L": L, "base_lr": base_lr,
               "initial_loss": float(ref[0])}
    for k in SCALES:
        with np.errstate(invalid="ignore", over="ignore"):
            deviation = np.max(np.abs(curves[k][1:] - ref[1:]) / ref[1:])
        metrics[f"lr_over_limit_{k}"] = k * base_lr * L / 2.0
        metrics[f"deviation_{k}"] = float(deviation)
        metrics[f"final_loss_{k}"] = float(curves[k][-1])
    for key, value in metrics.items():
        print(f"{key}: {value:.4g}")

    fig, axes = new_figure(ncols=2, size=(5.5, 4.2))
    ax = axes[0, 0]
    epochs = np.arange(n_epochs + 1)
    for i, k in enumerate(SCALES):
        ratio = metrics[f"lr_over_limit_{k}"]
        curve = np.where(np.isfinite(curves[k]), curves[k], np.nan)
        ax.semilogy(epochs, curve, "o-", ms=3, color=f"C{i}",
                    label=f"k={k}: batch {k * BASE_BATCH}, k eta = {ratio:.2f} x 2/L")
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss (full data)")
    ax.set_title("linear scaling: batch x k, learning rate x k")
    ax.legend(fontsize=7)
    ax = axes[0, 1]
    ratios = [metrics[f"lr_over_limit_{k}"] for k in SCALES]
    devs = [metrics[f"deviation_{k}"] for k in SCALES]
    ax.loglog(ratios, np.minimum(devs, 1e3), "o-")
    ax.axvline(1.0, color="C3", lw=1.0, label="k eta = 2 / L")
    ax.set_xlabel("k eta / (2 / L)")
    ax.set_ylabel("max relative gap to the k = 1 curve")
    ax.set_title(f"accumulation vs large batch: max |dW| = {mismatch:.1e}", fontsize=9)
    ax.legend(fontsize=8)
    save_figure(fig, out_dir, "accumulation.png")
    return metrics
