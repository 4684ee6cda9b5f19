"""Exploding gradients in a vanilla RNN, and gradient-norm clipping (Pascanu et al. 2013).

Pascanu, Mikolov & Bengio (2013), "On the difficulty of training recurrent neural
networks", ICML: when the recurrent matrix has spectral radius above 1, the
back-propagated gradient can grow exponentially with the sequence length; a single
such gradient throws the parameters far away (their "cliff"). Rescaling the gradient
whenever its norm exceeds a threshold keeps the direction and bounds the step.

The model is ``h_t = tanh(W h_{t-1} + U x_t + b)``, ``yhat = v . h_T + c``, trained with
back-propagation through time written by hand on the adding task (Hochreiter &
Schmidhuber 1997): each step carries a value ``u_t ~ U[0, 1]`` and a marker; one marker
sits in the first half and one in the second half, and the target is the sum of the two
marked values. Predicting the mean (1) has mean squared error ``2 / 12 = 1/6``, the
baseline any learning must beat. ``W`` starts as a Gaussian matrix rescaled to spectral
radius 2.5.

Both runs use :func:`cryorecon.optim.sgd` with the same learning rate and momentum, the
same initial weights and the same mini-batches; one is chained after
:func:`cryorecon.optim.clip_by_global_norm`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from cryorecon import optim
from cryorecon.demos._common import new_figure, save_figure

DESCRIPTION = (
    "Vanilla tanh RNN on the adding task (T=50, spectral radius 2.5): unclipped SGD "
    "blows up, clip_by_global_norm trains below the predict-the-mean loss (Pascanu 2013)"
)

BASELINE_MSE = 1.0 / 6.0


def adding_task(n: int, T: int, rng: np.random.Generator):
    """``n`` adding-task sequences: inputs (n, T, 2) of (value, marker) and targets (n,)."""
    values = rng.uniform(0.0, 1.0, size=(n, T))
    markers = np.zeros((n, T))
    rows = np.arange(n)
    markers[rows, rng.integers(0, T // 2, size=n)] = 1.0
    markers[rows, rng.integers(T // 2, T, size=n)] = 1.0
    return np.stack([values, markers], axis=-1), np.sum(values * markers, axis=1)


def init_params(n_hidden: int, spectral_radius: float, rng: np.random.Generator) -> dict:
    """Gaussian weights; ``W`` rescaled so that its largest |eigenvalue| is ``spectral_radius``."""
    W = rng.normal(0.0, 1.0, size=(n_hidden, n_hidden))
    W *= spectral_radius / np.max(np.abs(np.linalg.eigvals(W)))
    return {
        "W": W,
        "U": rng.normal(0.0, 1.0, size=(2, n_hidden)),
        "b": np.zeros(n_hidden),
        "v": rng.normal(0.0, 1.0 / np.sqrt(n_hidden), size=n_hidden),
        "c": np.zeros(()),
    }


def forward(params: dict, X: np.ndarray):
    """Hidden states (T + 1, n, H), starting from zero, and the predictions (n,)."""
    n, T, _ = X.shape
    hs = np.zeros((T + 1, n, params["W"].shape[0]))
    for t in range(T):
        hs[t + 1] = np.tanh(hs[t] @ params["W"] + X[:, t] @ params["U"] + params["b"])
    return hs, hs[-1] @ params["v"] + params["c"]


def loss(params: dict, X: np.ndarray, y: np.ndarray) -> float:
    """Mean squared error of the predictions."""
    return float(np.mean((forward(params, X)[1] - y) ** 2))


def loss_and_grad(params: dict, X: np.ndarray, y: np.ndarray):
    """Mean squared error and its gradient by back-propagation through time."""
    hs, pred = forward(params, X)
    n, T, _ = X.shape
    dpred = 2.0 * (pred - y) / n
    g = {k: np.zeros_like(p) for k, p in params.items()}
    g["v"] = hs[-1].T @ dpred
    g["c"] = np.asarray(dpred.sum())
    dh = np.outer(dpred, params["v"])
    for t in range(T - 1, -1, -1):
        da = dh * (1.0 - hs[t + 1] ** 2)
        g["W"] += hs[t].T @ da
        g["U"] += X[:, t].T @ da
        g["b"] += da.sum(axis=0)
        dh = da @ params["W"].T
    return float(np.mean((pred - y) ** 2)), g


def train(params, opt, n_steps, batch_size, T, rng, X_eval, y_eval, eval_every):
    """SGD on fresh adding-task batches.

    Returns per-step training loss, gradient norm and parameter norm (after the step),
    and the held-out losses every ``eval_every`` steps.

    Training stops at the first non-finite loss.
    """
    state = opt.init(params)
    losses, norms, param_norms, evals = [], [], [], []
    for step in range(n_steps):
        X, y = adding_task(batch_size, T, rng)
        value, g = loss_and_grad(params, X, y)
        losses.append(value)
        norms.append(float(optim.tree_norm(g)))
        if not np.isfinite(value):
            break
        updates, state = opt.update(g, state, params)
        params = optim.apply_updates(params, updates)
        param_norms.append(float(optim.tree_norm(params)))
        if (step + 1) % eval_every == 0:
            evals.append((step + 1, loss(params, X_eval, y_eval)))
    return (np.array(losses), np.array(norms), np.array(param_norms),
            np.array(evals).reshape(-1, 2))


def run(out_dir: Path, quick: bool = False, seed: int = 0) -> dict:
    """Train the RNN with and without gradient clipping.

    Returns
    -------
    dict
        ``baseline`` (1/6); for ``unclipped`` and ``clipped``: ``*_finite`` (no Inf/NaN
        loss), ``*_max_loss`` (largest training loss after the first update),
        ``*_max_grad_norm``, ``*_max_param_norm``, ``*_best_eval`` and ``*_final_eval`` (held-out MSE);
        ``initial_eval``, ``initial_grad_norm``, ``initial_param_norm`` and
        ``spectral_radius``.
    """
    T, n_hidden, batch_size = 50, 32, 64
    n_steps = 3000 if quick else 8000
    lr, momentum, clip_norm = 0.01, 0.9, 1.0
    X_eval, y_eval = adding_task(1000, T, np.random.default_rng([seed, 123]))
    p0 = init_params(n_hidden, 2.5, np.random.default_rng(seed))

    runs = {}
    for name, opt in (
        ("unclipped", optim.sgd(lr, momentum=momentum)),
        ("clipped", optim.chain(optim.clip_by_global_norm(clip_norm), optim.sgd(lr, momentum=momentum))),
    ):
        runs[name] = train(dict(p0), opt, n_steps, batch_size, T, np.random.default_rng([seed, 1]),
                           X_eval, y_eval, eval_every=50)

    metrics = {"baseline": BASELINE_MSE, "initial_eval": loss(p0, X_eval, y_eval),
               "spectral_radius": float(np.max(np.abs(np.linalg.eigvals(p0["W"]))))}
    metrics["initial_param_norm"] = float(optim.tree_norm(p0))
    for name, (losses, norms, param_norms, evals) in runs.items():
        finite = bool(np.all(np.isfinite(losses)))
        metrics[f"{name}_finite"] = finite
        metrics[f"{name}_max_loss"] = float(np.max(losses[1:])) if finite else float("inf")
        metrics[f"{name}_max_grad_norm"] = float(np.max(norms))
        metrics[f"{name}_max_param_norm"] = float(np.max(param_norms))
        metrics[f"{name}_best_eval"] = float(np.min(evals[:, 1])) if len(evals) else float("nan")
        metrics[f"{name}_final_eval"] = float(evals[-1, 1]) if len(evals) else float("nan")
    metrics["initial_grad_norm"] = float(runs["clipped"][1][0])
    for key, value in metrics.items():
        print(f"{key}: {value:.4g}" if isinstance(value, float) else f"{key}: {value}")

    fig, axes = new_figure(ncols=3, size=(5.0, 4.2))
    ax = axes[0, 0]
    for i, (name, (losses, _, _, evals)) in enumerate(runs.items()):
        ax.semilogy(losses, color=f"C{i}", alpha=0.35, lw=0.6)
        ax.semilogy(evals[:, 0], evals[:, 1], "o-", ms=3, color=f"C{i}", label=f"{name} (held-out)")
    ax.axhline(BASELINE_MSE, color="k", lw=0.8, ls="--", label="predict the mean: 1/6")
    ax.set_xlabel("SGD step")
    ax.set_ylabel("mean squared error")
    ax.set_title(f"adding task, T = {T}, spectral radius 2.5")
    ax.legend(fontsize=8)
    ax = axes[0, 1]
    for i, (name, (_, norms, _, _)) in enumerate(runs.items()):
        ax.semilogy(norms, color=f"C{i}", lw=0.6, label=name)
    ax.axhline(clip_norm, color="k", lw=0.8, ls=":", label=f"clip threshold {clip_norm}")
    ax.set_xlabel("SGD step")
    ax.set_ylabel("global gradient norm (before clipping)")
    ax.set_title("exploding gradients")
    ax.legend(fontsize=8)
    ax = axes[0, 2]
    for i, (name, (_, _, param_norms, _)) in enumerate(runs.items()):
        ax.semilogy(param_norms, color=f"C{i}", label=name)
    ax.set_xlabel("SGD step")
    ax.set_ylabel("parameter norm")
    ax.set_title("one exploding step throws the weights away")
    ax.legend(fontsize=8)
    save_figure(fig, out_dir, "rnn_clipping.png")
    return metrics
