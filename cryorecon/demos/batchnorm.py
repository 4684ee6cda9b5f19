"""Batch normalisation by hand: its backward pass couples the batch, and it speeds training.

Ioffe & Szegedy (2015), "Batch normalization: accelerating deep network training by
reducing internal covariate shift". In train mode a BN layer normalises each feature with
the mean and variance of the current mini-batch,

    x_hat_i = (x_i - mu_B) / sqrt(var_B + eps),   y_i = gamma x_hat_i + beta,

so the loss of example ``i`` depends on every other example of the batch. The backward
pass (their Section 3) is

    dx_i = gamma / (N sqrt(var_B + eps)) * (N dy_i - sum_j dy_j - x_hat_i sum_j dy_j x_hat_j),

which sums to zero over the batch for every feature (shifting the whole batch changes
nothing) and changes when another example ``j`` changes. With frozen statistics (the
inference mode) the layer is a fixed affine map: ``dx_i = gamma dy_i / sqrt(var + eps)``
depends on example ``i`` alone.

The demo then repeats the paper's MNIST experiment on scikit-learn's ``digits``: an MLP
with three hidden layers of 100 sigmoid units, mini-batches of 60, the same SGD step for
both nets, with and without BN before each sigmoid, counting the steps needed to bring
the training loss below a threshold.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from cryorecon import optim
from cryorecon.demos._common import load_digits, new_figure, save_figure

DESCRIPTION = (
    "Batch norm by hand (Ioffe & Szegedy 2015): train-mode dx sums to zero and couples the "
    "batch, frozen statistics do not; a sigmoid MLP on digits trains faster with BN"
)

EPS = 1e-5


def batchnorm_forward(x, gamma, beta, stats=None):
    """Normalise each column of ``x`` (N, D); return ``y`` and a cache for the backward pass.

    With ``stats=None`` (train mode) the batch mean and variance are used and returned in
    the cache as ``cache["stats"]``; otherwise ``stats = (mean, var)`` are frozen.
    """
    if stats is None:
        mean, var = x.mean(axis=0), x.var(axis=0)
        frozen = False
    else:
        mean, var = stats
        frozen = True
    inv_std = 1.0 / np.sqrt(var + EPS)
    x_hat = (x - mean) * inv_std
    cache = {"x_hat": x_hat, "inv_std": inv_std, "gamma": gamma, "frozen": frozen, "stats": (mean, var)}
    return gamma * x_hat + beta, cache


def batchnorm_backward(dy, cache):
    """Gradients ``(dx, dgamma, dbeta)`` of a BN layer given ``dy = dLoss/dy``."""
    x_hat, inv_std, gamma = cache["x_hat"], cache["inv_std"], cache["gamma"]
    dgamma = (dy * x_hat).sum(axis=0)
    dbeta = dy.sum(axis=0)
    if cache["frozen"]:
        return gamma * inv_std * dy, dgamma, dbeta
    n = dy.shape[0]
    dx = (gamma * inv_std / n) * (n * dy - dbeta - x_hat * dgamma)
    return dx, dgamma, dbeta


def init_mlp(sizes, rng, use_bn, init_std=0.1):
    """Sigmoid MLP parameters; small Gaussian weights as in the paper's MNIST experiment.

    With ``use_bn`` every hidden layer gets ``gamma`` (ones) and ``beta`` (zeros), and its
    linear bias is dropped because BN's ``beta`` replaces it.
    """
    params = {}
    n_layers = len(sizes) - 1
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        params[f"W{i}"] = init_std * rng.standard_normal((n_in, n_out))
        if use_bn and i < n_layers - 1:
            params[f"gamma{i}"] = np.ones(n_out)
            params[f"beta{i}"] = np.zeros(n_out)
        else:
            params[f"b{i}"] = np.zeros(n_out)
    return params


def _n_layers(params):
    return sum(1 for k in params if k.startswith("W"))


def mlp_loss(params, x, labels, stats=None):
    """Mean softmax cross-entropy of the MLP and its parameter gradients.

    BN layers (present when ``params`` has ``gamma*`` keys) run in train mode when
    ``stats`` is None, else with the frozen per-layer ``stats``.

    Returns
    -------
    loss : float
    grads : dict like ``params``
    aux : dict with ``"logits"`` and the per-layer batch ``"stats"``
    """
    n_layers = _n_layers(params)
    h = x
    caches, batch_stats = [], []
    for i in range(n_layers):
        z = h @ params[f"W{i}"]
        bn_cache = None
        if f"gamma{i}" in params:
            z, bn_cache = batchnorm_forward(z, params[f"gamma{i}"], params[f"beta{i}"],
                                            None if stats is None else stats[i])
            batch_stats.append(bn_cache["stats"])
        else:
            z = z + params[f"b{i}"]
            batch_stats.append(None)
        caches.append((h, bn_cache))
        h = 0.5 * (1.0 + np.tanh(0.5 * z)) if i < n_layers - 1 else z
    logits = h
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    n = len(labels)
    loss = -log_p[np.arange(n), labels].mean()

    grads = {}
    delta = np.exp(log_p)
    delta[np.arange(n), labels] -= 1.0
    delta /= n
    for i in reversed(range(n_layers)):
        h_in, bn_cache = caches[i]
        if bn_cache is None:
            grads[f"b{i}"] = delta.sum(axis=0)
        else:
            delta, grads[f"gamma{i}"], grads[f"beta{i}"] = batchnorm_backward(delta, bn_cache)
        grads[f"W{i}"] = h_in.T @ delta
        if i > 0:
            delta = (delta @ params[f"W{i}"].T) * h_in * (1.0 - h_in)  # sigmoid' from its output
    return float(loss), grads, {"logits": logits, "stats": batch_stats}


def evaluate(params, x_train, y_train, x_test, y_test):
    """Training loss and test accuracy with BN statistics of the whole training set."""
    train_loss, _, aux = mlp_loss(params, x_train, y_train)
    frozen = aux["stats"] if any(s is not None for s in aux["stats"]) else None
    _, _, aux_test = mlp_loss(params, x_test, y_test, stats=frozen)
    accuracy = float((aux_test["logits"].argmax(axis=1) == y_test).mean())
    return train_loss, accuracy


def train(params, data, learning_rate, n_steps, batch_size, rng, eval_every):
    """Plain SGD; return the (step, training loss, test accuracy) history and final params."""
    x_train, y_train, x_test, y_test = data
    opt = optim.sgd(learning_rate)
    state = opt.init(params)
    history = [(0, *evaluate(params, *data))]
    for t in range(1, n_steps + 1):
        idx = rng.choice(len(x_train), size=batch_size, replace=False)
        _, grads, _ = mlp_loss(params, x_train[idx], y_train[idx])
        updates, state = opt.update(grads, state, params)
        params = optim.apply_updates(params, updates)
        if t % eval_every == 0:
            history.append((t, *evaluate(params, *data)))
    return np.array(history), params


def steps_to_loss(history, target):
    """First evaluated step with training loss at or below ``target``; inf if never."""
    hit = np.nonzero(history[:, 1] <= target)[0]
    return float(history[hit[0], 0]) if hit.size else float("inf")


def coupling_demo(rng, n=16, d=4):
    """The two batch-coupling facts on one random batch, as numbers.

    Returns the largest per-feature ``|sum_i dx_i|`` (relative to ``|dx|``) and how much
    ``dx_0`` changes when only example 1 is perturbed, in train and frozen mode.
    """
    x = rng.standard_normal((n, d)) * 3.0 + 1.0
    gamma, beta = rng.uniform(0.5, 2.0, d), rng.standard_normal(d)
    dy = rng.standard_normal((n, d))
    frozen_stats = (x.mean(axis=0), x.var(axis=0))

    def dx_of(xs, stats):
        _, cache = batchnorm_forward(xs, gamma, beta, stats)
        return batchnorm_backward(dy, cache)[0]

    dx = dx_of(x, None)
    x_pert = x.copy()
    x_pert[1] += rng.standard_normal(d)
    return {
        "dx_feature_sum_rel": float(np.abs(dx.sum(axis=0)).max() / np.abs(dx).max()),
        "frozen_dx_feature_sum_rel": float(
            np.abs(dx_of(x, frozen_stats).sum(axis=0)).max() / np.abs(dx_of(x, frozen_stats)).max()
        ),
        "train_dx0_change": float(np.abs(dx_of(x_pert, None)[0] - dx[0]).max()),
        "frozen_dx0_change": float(np.abs(dx_of(x_pert, frozen_stats)[0] - dx_of(x, frozen_stats)[0]).max()),
    }


def run(out_dir: Path, quick: bool = False, seed: int = 0) -> dict:
    """Check the BN coupling facts, then race a sigmoid MLP with and without BN on digits."""
    rng = np.random.default_rng(seed)
    metrics = coupling_demo(rng)

    x, y = load_digits()
    x = x / 16.0  # raw pixel intensities in [0, 1], as the paper fed MNIST
    order = rng.permutation(len(x))
    n_test = len(x) // 4
    data = (x[order[n_test:]], y[order[n_test:]], x[order[:n_test]], y[order[:n_test]])

    sizes = [64, 100, 100, 100, 10]
    n_steps = 1000 if quick else 5000
    learning_rate = 0.5
    target = 0.5
    histories = {}
    for use_bn in (False, True):
        params = init_mlp(sizes, np.random.default_rng(seed + 1), use_bn)  # same weights for both
        histories[use_bn], _ = train(params, data, learning_rate, n_steps, 60, rng, eval_every=25)
    steps_plain = steps_to_loss(histories[False], target)
    steps_bn = steps_to_loss(histories[True], target)
    metrics.update(
        {
            "target_loss": target,
            "steps_to_target_plain": steps_plain,
            "steps_to_target_bn": steps_bn,
            "speedup": steps_plain / steps_bn,
            "final_loss_plain": float(histories[False][-1, 1]),
            "final_loss_bn": float(histories[True][-1, 1]),
            "test_accuracy_plain": float(histories[False][-1, 2]),
            "test_accuracy_bn": float(histories[True][-1, 2]),
        }
    )
    for k, v in metrics.items():
        print(f"{k}: {v}")

    fig, axes = new_figure(ncols=2, size=(5.0, 4.0))
    ax = axes[0, 0]
    for use_bn, label in ((False, "no BN"), (True, "with BN")):
        h = histories[use_bn]
        ax.semilogy(h[:, 0], h[:, 1], label=label)
    ax.axhline(target, color="k", ls=":", lw=1, label=f"target loss {target}")
    ax.set_xlabel("SGD step (batch 60, same learning rate)")
    ax.set_ylabel("training cross-entropy")
    ax.set_title(f"sigmoid MLP on digits: {metrics['speedup']:.1f}× fewer steps with BN")
    ax.legend()
    ax = axes[0, 1]
    for use_bn, label in ((False, "no BN"), (True, "with BN")):
        h = histories[use_bn]
        ax.plot(h[:, 0], h[:, 2], label=label)
    ax.set_xlabel("SGD step")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1)
    ax.set_title("held-out accuracy")
    ax.legend()
    save_figure(fig, out_dir, "batchnorm.png")
    return metrics
