"""Pegasos: a linear SVM by mini-batch subgradient descent (Shalev-Shwartz et al.).

The primal SVM objective

    P(w) = lam |w|^2 / 2 + (1/n) sum_i max(0, 1 - y_i <w, x_i>)

is convex but not differentiable; any subgradient will do. Pegasos takes the step
``1 / (lam t)`` on a mini-batch subgradient and then projects onto the ball
``|w| <= 1 / sqrt(lam)``, which contains the minimiser (Shalev-Shwartz, Singer, Srebro &
Cotter 2011, "Pegasos: Primal Estimated sub-GrAdient SOlver for SVM", Math. Programming
127). The bias is a constant-1 feature, regularised like the other weights, so that the
reference solves exactly the same problem.

The step is :func:`cryorecon.optim.sgd` with the schedule ``t -> 1 / (lam (t + 1))`` and
the hinge subgradient of :func:`cryorecon.optim.hinge_loss`. The reference is scipy's
L-BFGS-B on the box-constrained dual

    max_a sum_i a_i - |sum_i a_i y_i x_i|^2 / (2 lam),   0 <= a_i <= 1/n,

with ``w = sum_i a_i y_i x_i / lam``; the duality gap certifies its accuracy.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.optimize

from cryorecon import optim
from cryorecon.demos._common import (
    load_breast_cancer,
    load_digits,
    new_figure,
    save_figure,
    standardized_split,
)

DESCRIPTION = (
    "Pegasos linear SVM (mini-batch hinge subgradient, step 1/(lam t), projection) on "
    "breast_cancer and digits 3-vs-8, against scipy's solution of the same problem"
)

LAM = 0.01


def primal_objective(w: np.ndarray, X: np.ndarray, y: np.ndarray, lam: float) -> float:
    """``lam |w|^2 / 2 + mean_i max(0, 1 - y_i <w, x_i>)``."""
    return float(0.5 * lam * w @ w + np.mean(np.maximum(0.0, 1.0 - y * (X @ w))))


def primal_subgradient(w: np.ndarray, X: np.ndarray, y: np.ndarray, lam: float) -> np.ndarray:
    """A subgradient of :func:`primal_objective`: ``lam w`` plus the hinge subgradient."""
    _, g_hinge = optim.hinge_loss(w, X, y)
    return lam * w + g_hinge


def project_to_ball(w: np.ndarray, lam: float) -> np.ndarray:
    """Project onto ``|w| <= 1 / sqrt(lam)``, the ball that holds the SVM minimiser."""
    radius = 1.0 / np.sqrt(lam)
    norm = np.linalg.norm(w)
    return w * (radius / norm) if norm > radius else w


def pegasos(X, y, lam, n_steps, batch_size, rng, record_every=50):
    """Mini-batch Pegasos; returns the last iterate and its primal objective every ``record_every`` steps."""
    n, d = X.shape
    w = np.zeros(d)
    opt = optim.sgd(lambda t: 1.0 / (lam * (t + 1)))
    state = opt.init(w)
    history = []
    for t in range(n_steps):
        idx = rng.integers(0, n, size=batch_size)
        updates, state = opt.update(primal_subgradient(w, X[idx], y[idx], lam), state, w)
        w = project_to_ball(optim.apply_updates(w, updates), lam)
        if (t + 1) % record_every == 0:
            history.append((t + 1, primal_objective(w, X, y, lam)))
    return w, np.array(history)


def svm_reference(X: np.ndarray, y: np.ndarray, lam: float):
    """Solve the same SVM with scipy (L-BFGS-B on the dual); return ``w`` and the duality gap."""
    n = len(y)
    Z = X * y[:, None]

    def neg_dual(a):
        v = Z.T @ a
        return -a.sum() + 0.5 * (v @ v) / lam, -1.0 + Z @ v / lam

    res = scipy.optimize.minimize(
        neg_dual, np.zeros(n), jac=True, method="L-BFGS-B", bounds=[(0.0, 1.0 / n)] * n,
        options={"maxiter": 10_000, "ftol": 1e-15, "gtol": 1e-12})
    w = Z.T @ res.x / lam
    return w, primal_objective(w, X, y, lam) + res.fun


def _problems(rng):
    X, y = load_breast_cancer()
    yield "breast_cancer", standardized_split(X, y, rng)
    X, labels = load_digits()
    keep = (labels == 3) | (labels == 8)
    yield "digits_3v8", standardized_split(X[keep], np.where(labels[keep] == 3, 1.0, -1.0), rng)


def run(out_dir: Path, quick: bool = False, seed: int = 0) -> dict:
    """Train Pegasos on both data sets and compare with the scipy solution.

    Returns
    -------
    dict
        Per data set ``<name>_test_acc``, ``<name>_ref_test_acc``, ``<name>_primal``,
        ``<name>_ref_primal``, ``<name>_rel_gap`` (``P(w) / P(w*) - 1``) and
        ``<name>_ref_duality_gap``.
    """
    problems = list(_problems(np.random.default_rng(seed)))
    rng = np.random.default_rng([seed, 1])
    n_steps = 6000 if quick else 20000
    batch_size = 256
    metrics = {}
    fig, axes = new_figure(ncols=2, size=(5.0, 4.0))
    for col, (name, (X_tr, y_tr, X_te, y_te)) in enumerate(problems):
        X_tr = np.hstack([X_tr, np.ones((len(X_tr), 1))])
        X_te = np.hstack([X_te, np.ones((len(X_te), 1))])
        w, history = pegasos(X_tr, y_tr, LAM, n_steps, batch_size, rng)
        w_ref, dual_gap = svm_reference(X_tr, y_tr, LAM)
        p, p_ref = primal_objective(w, X_tr, y_tr, LAM), primal_objective(w_ref, X_tr, y_tr, LAM)
        metrics.update({
            f"{name}_test_acc": float(np.mean(np.sign(X_te @ w) == y_te)),
            f"{name}_ref_test_acc": float(np.mean(np.sign(X_te @ w_ref) == y_te)),
            f"{name}_primal": p,
            f"{name}_ref_primal": p_ref,
            f"{name}_rel_gap": p / p_ref - 1.0,
            f"{name}_ref_duality_gap": float(dual_gap),
        })
        ax = axes[0, col]
        ax.loglog(history[:, 0], history[:, 1] / p_ref - 1.0, color="C0")
        ax.axhline(0.01, color="C3", lw=0.8, label="1% of the scipy optimum")
        ax.set_xlabel("Pegasos step t (batch 256, step 1/(lam t))")
        ax.set_ylabel("P(w_t) / P(w*) - 1")
        ax.set_title(f"{name}: test acc {metrics[f'{name}_test_acc']:.3f} "
                     f"(scipy {metrics[f'{name}_ref_test_acc']:.3f})", fontsize=9)
        ax.legend(fontsize=8)
    for key, value in metrics.items():
        print(f"{key}: {value:.4g}")
    save_figure(fig, out_dir, "svm_pegasos.png")
    return metrics
