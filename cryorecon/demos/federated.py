"""Federated averaging: non-IID clients, client drift and biased client sampling.

FedAvg (McMahan et al. 2017): each round the server sends the model to the clients;
each takes ``K`` local SGD steps on its own data (through :mod:`cryorecon.optim`); the
server averages the returned models, weighted by the clients' data sizes. Three effects:

1. **Non-IID data costs accuracy** (Zhao et al. 2018). Softmax regression on
   ``digits``, 10 clients; in the IID split every client sees every label, in the
   non-IID split each client holds one label only. Same rounds and local steps: the
   non-IID model is less accurate, and the drop is measured.
2. **Client drift.** On quadratic clients ``f_i(x) = 1/2 (x - c_i)^T A_i (x - c_i)``
   with weights ``p_i``, ``K`` local gradient steps of size ``eta`` map ``x`` to
   ``c_i + M_i (x - c_i)`` with ``M_i = (I - eta A_i)^K``. FedAvg therefore converges to
   the fixed point ``x_K = (I - sum p_i M_i)^{-1} sum p_i (I - M_i) c_i``, which is the
   global minimiser ``x* = (sum p_i A_i)^{-1} sum p_i A_i c_i`` for ``K = 1`` only and
   moves away from it as ``K`` grows (towards the plain mean of the ``c_i``).
3. **Biased client sampling.** The global objective is ``F = sum_i p_i f_i`` with
   ``p_i = n_i / n``. Averaging the gradients of ``m`` clients drawn uniformly, ignoring
   their sizes, has expectation ``(1/M) sum_i grad f_i``, so its bias is
   ``sum_i (1/M - p_i) grad f_i``. Weighting each sampled gradient by ``(M/m) p_i``
   (inverse inclusion probability) removes it.

References: McMahan, Moore, Ramage, Hampson & Aguera y Arcas (2017), "Communication-
Efficient Learning of Deep Networks from Decentralized Data", AISTATS; Zhao, Li, Lai,
Suda, Civin & Chandra (2018), "Federated Learning with Non-IID Data", arXiv:1806.00582;
Karimireddy et al. (2020), "SCAFFOLD", ICML (client drift); Li, Huang, Yang, Wang &
Zhang (2020), "On the Convergence of FedAvg on Non-IID Data", ICLR (sampling schemes).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from cryorecon import optim
from cryorecon.demos._common import (load_digits, new_figure, save_figure,
                                     softmax_cross_entropy, standardized_split)

DESCRIPTION = ("FedAvg: non-IID clients lose accuracy on digits, local steps drift away from "
               "the global minimiser, size-blind client sampling biases the gradient")


# ---------------------------------------------------------------- FedAvg on digits
def split_clients(y, n_clients: int, iid: bool, rng: np.random.Generator):
    """Index arrays, one per client: a random partition (IID), or by sorted label so
    that with 10 clients and 10 labels each client holds one label (non-IID)."""
    if iid:
        order = rng.permutation(len(y))
    else:
        order = np.argsort(y + rng.uniform(0.0, 0.5, len(y)), kind="stable")
    return np.array_split(order, n_clients)


def fedavg(X, y, clients, n_rounds: int, local_steps: int, batch_size: int, learning_rate: float,
           rng: np.random.Generator, n_classes: int = 10, eval_fn=None):
    """FedAvg with full participation; returns the global weights and per-round evaluations.

    Each client starts from the global weights, takes ``local_steps`` SGD steps on
    mini-batches of its own data, and the server averages the client weights with
    weights ``n_i / n``.
    """
    d = X.shape[1]
    W = np.zeros((d, n_classes))
    sizes = np.array([len(c) for c in clients], dtype=np.float64)
    p = sizes / sizes.sum()
    opt = optim.sgd(learning_rate)
    history = []
    for _ in range(n_rounds):
        new = np.zeros_like(W)
        for pi, idx in zip(p, clients):
            Wc = W.copy()
            state = opt.init(Wc)
            for _ in range(local_steps):
                rows = idx[rng.integers(0, len(idx), batch_size)]
                _, g = softmax_cross_entropy(Wc, X[rows], y[rows])
                u, state = opt.update(g, state, Wc)
                Wc = optim.apply_updates(Wc, u)
            new += pi * Wc
        W = new
        if eval_fn is not None:
            history.append(eval_fn(W))
    return W, history


# ---------------------------------------------------------------- quadratic clients
def quadratic_clients(n_clients: int, dim: int, rng: np.random.Generator):
    """Random diagonal curvatures ``A_i`` (as (M, dim) diagonals, condition up to ~20),
    centres ``c_i`` and uneven weights ``p_i``."""
    curv = rng.uniform(0.1, 2.0, size=(n_clients, dim))
    centres = rng.normal(0.0, 2.0, size=(n_clients, dim))
    sizes = rng.integers(5, 200, size=n_clients).astype(np.float64)
    return curv, centres, sizes / sizes.sum()


def quadratic_loss_grad(x, curv, centre):
    """``f(x) = 1/2 sum curv (x - c)^2`` and its gradient."""
    r = x - centre
    return 0.5 * float(np.sum(curv * r * r)), curv * r


def global_minimiser(curv, centres, p):
    """``x* = (sum p_i A_i)^{-1} sum p_i A_i c_i`` for diagonal ``A_i``."""
    return (p[:, None] * curv * centres).sum(0) / (p[:, None] * curv).sum(0)


def fedavg_fixed_point(curv, centres, p, local_steps: int, learning_rate: float):
    """Closed-form limit of FedAvg with ``local_steps`` gradient steps per round."""
    M = (1.0 - learning_rate * curv) ** local_steps
    return (p[:, None] * (1.0 - M) * centres).sum(0) / (1.0 - (p[:, None] * M).sum(0))


def fedavg_quadratic(curv, centres, p, local_steps: int, learning_rate: float, n_rounds: int, x0):
    """Run FedAvg on the quadratic clients with ``optim.sgd`` local steps; return the path."""
    opt = optim.sgd(learning_rate)
    x = np.array(x0, dtype=np.float64)
    path = [x.copy()]
    for _ in range(n_rounds):
        new = np.zeros_like(x)
        for a, c, pi in zip(curv, centres, p):
            xc = x.copy()
            state = opt.init(xc)
            for _ in range(local_steps):
                _, g = quadratic_loss_grad(xc, a, c)
                u, state = opt.update(g, state, xc)
                xc = optim.apply_updates(xc, u)
            new += pi * xc
        x = new
        path.append(x.copy())
    return x, np.asarray(path)


def sampled_gradient_bias(curv, centres, p, x, m: int, n_draws: int, rng: np.random.Generator):
    """Monte Carlo bias of two client-sampling estimators of ``grad F(x)``.

    Each draw picks ``m`` of the ``M`` clients uniformly without replacement. The naive
    estimator averages their gradients; the weighted one sums ``(M/m) p_i grad f_i``.
    Returns ``(naive_bias, weighted_bias, closed_form_naive_bias, grad_F)``.
    """
    M = len(p)
    grads = curv * (x[None, :] - centres)  # (M, dim)
    grad_F = (p[:, None] * grads).sum(0)
    picks = np.argsort(rng.random((n_draws, M)), axis=1)[:, :m]
    naive = grads[picks].mean(axis=1).mean(axis=0)
    weighted = ((M / m) * p[picks][:, :, None] * grads[picks]).sum(axis=1).mean(axis=0)
    closed = ((1.0 / M - p)[:, None] * grads).sum(0)
    return naive - grad_F, weighted - grad_F, closed, grad_F


def run(out_dir: Path, quick: bool = False, seed: int = 0) -> dict:
    """The three federated effects; plot and return metrics."""
    rng = np.random.default_rng(seed)

    # 1. IID against one-label-per-client on digits.
    X, y = load_digits()
    Xtr, ytr, Xte, yte = standardized_split(X, y, rng)
    Xtr = np.hstack([Xtr, np.ones((len(Xtr), 1))])
    Xte = np.hstack([Xte, np.ones((len(Xte), 1))])
    n_rounds, local_steps = (10, 50) if quick else (30, 50)

    def accuracy(W):
        return float(np.mean(np.argmax(Xte @ W, axis=1) == yte))

    acc = {}
    for iid in (True, False):
        clients = split_clients(ytr, 10, iid, rng)
        _, acc[iid] = fedavg(Xtr, ytr, clients, n_rounds, local_steps, 10, 0.3, rng, eval_fn=accuracy)

    # 2. Client drift on quadratics.
    curv, centres, p = quadratic_clients(8, 2, rng)
    eta = 0.2
    x_star = global_minimiser(curv, centres, p)
    Ks = [1, 2, 5, 10, 20, 50]
    fixed = {K: fedavg_fixed_point(curv, centres, p, K, eta) for K in Ks}
    drift = np.array([np.linalg.norm(fixed[K] - x_star) for K in Ks])
    sim = {}
    for K in (1, 10, 50):
        sim[K] = fedavg_quadratic(curv, centres, p, K, eta, 300, np.zeros(2))
    sim_err = max(float(np.linalg.norm(sim[K][0] - fixed[K])) for K in sim)

    # 3. Client sampling that ignores data sizes.
    n_draws = 20000 if quick else 200000
    naive, weighted, closed, grad_F = sampled_gradient_bias(curv, centres, p, x_star + 1.0, 3,
                                                            n_draws, rng)

    metrics = {
        "acc_iid": acc[True][-1],
        "acc_non_iid": acc[False][-1],
        "non_iid_drop": acc[True][-1] - acc[False][-1],
        "non_iid_drop_mean_over_rounds": float(np.mean(np.subtract(acc[True], acc[False]))),
        "drift_K1": float(drift[0]),
        "drift_K50": float(drift[-1]),
        "drift_increasing": float(np.all(np.diff(drift) > 0)),
        "fedavg_vs_fixed_point": sim_err,
        "bias_norm_closed_form": float(np.linalg.norm(closed)),
        "bias_rel_err": float(np.linalg.norm(naive - closed) / np.linalg.norm(closed)),
        "weighted_bias_rel": float(np.linalg.norm(weighted) / np.linalg.norm(closed)),
    }
    for k, v in metrics.items():
        print(f"{k}: {v:.4g}")

    fig, ax = new_figure(ncols=4, nrows=1, size=(3.6, 3.3))
    ax = ax[0]
    r = np.arange(1, n_rounds + 1)
    ax[0].plot(r, acc[True], "o-", ms=3, label="IID split")
    ax[0].plot(r, acc[False], "s-", ms=3, label="one label per client")
    ax[0].set_xlabel("round")
    ax[0].set_ylabel("test accuracy (digits)")
    ax[0].set_title(f"FedAvg, 10 clients, K = {local_steps}")
    ax[0].legend()
    lo, hi = centres.min(0) - 1, centres.max(0) + 1
    gx, gy = np.meshgrid(np.linspace(lo[0], hi[0], 120), np.linspace(lo[1], hi[1], 120))
    F = sum(pi * 0.5 * (a[0] * (gx - c[0]) ** 2 + a[1] * (gy - c[1]) ** 2)
            for a, c, pi in zip(curv, centres, p))
    ax[1].contour(gx, gy, F, levels=15, colors="0.8", linewidths=0.6)
    ax[1].scatter(centres[:, 0], centres[:, 1], s=300 * p, c="0.5", label="client optima")
    for K, (xK, path) in sim.items():
        ax[1].plot(path[:, 0], path[:, 1], ".-", ms=2, lw=0.8, label=f"FedAvg K = {K}")
    ax[1].plot(*x_star, "k*", ms=12, label="global minimiser")
    ax[1].set_title("client drift (quadratic clients)")
    ax[1].legend(fontsize=7)
    ax[2].semilogx(Ks, drift, "o-")
    ax[2].set_xlabel("local steps K")
    ax[2].set_ylabel("|x_K - x*|")
    ax[2].set_title("FedAvg fixed point vs x*")
    w = 0.35
    idx = np.arange(2)
    ax[3].bar(idx - w, closed, w, label="closed form")
    ax[3].bar(idx, naive, w, label="uniform sampling (MC)")
    ax[3].bar(idx + w, weighted, w, label="size-weighted (MC)")
    ax[3].axhline(0, color="k", lw=0.5)
    ax[3].set_xticks(idx, ["bias[0]", "bias[1]"])
    ax[3].set_title("bias of the sampled gradient")
    ax[3].legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, out_dir, "federated.png")
    return metrics
