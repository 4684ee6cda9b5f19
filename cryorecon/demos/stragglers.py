"""Stragglers in synchronous data-parallel SGD, and backup workers (Chen et al. 2016).

In synchronous data-parallel SGD each step waits for the slowest of the workers it
needs. With ``N`` workers whose times are independent Exp(1), the step takes the
maximum, whose mean is the harmonic number ``H_N = 1 + 1/2 + ... + 1/N`` (it grows like
``log N``). Launching ``b`` backup workers and keeping the first ``N`` of ``N + b``
gradients makes the step the ``N``-th order statistic of ``N + b`` exponentials, with mean
``H_{N+b} - H_b`` (Renyi's representation: the gaps between exponential order
statistics are independent Exp(1)/(n - k)).

The demo simulates step times and checks both closed forms; models a worker's time as a
fixed latency plus a per-example cost times an Exp(1) slowdown, so that the expected
step time is ``latency + (B/N) tau E[max]`` and smaller batches give more updates per
simulated second; and trains softmax regression on ``digits`` through
:mod:`cryorecon.optim` against the simulated clock, with and without backups, on the
same number of machines (``N`` = 20 all needed, against 18 needed + 2 backups).

Reference: Chen, Pan, Monga, Bengio & Jozefowicz (2016), "Revisiting Distributed
Synchronous SGD", arXiv:1604.00981.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from cryorecon import optim
from cryorecon.demos._common import (load_digits, new_figure, save_figure,
                                     softmax_cross_entropy, standardized_split)

DESCRIPTION = ("Synchronous SGD waits for stragglers: step time H_N for Exp(1) workers, "
               "H_{N+b} - H_b with b backups; smaller batches give more updates per second")


def harmonic(n: int) -> float:
    """``H_n = sum_{k=1}^n 1/k`` (``H_0 = 0``)."""
    return float(np.sum(1.0 / np.arange(1, int(n) + 1))) if n > 0 else 0.0


def expected_step_time(n_needed: int, n_backup: int = 0) -> float:
    """Mean of the ``n_needed``-th smallest of ``n_needed + n_backup`` Exp(1) times.

    ``H_{N+b} - H_b``; with no backups, ``H_N``, the mean of the maximum.
    """
    return harmonic(n_needed + n_backup) - harmonic(n_backup)


def simulate_step_times(n_needed: int, n_backup: int, n_steps: int, rng: np.random.Generator,
                        latency_s: float = 0.0, work_s: float = 1.0):
    """Simulated synchronous step times and which workers made each step.

    Every step launches ``n_needed + n_backup`` workers with times
    ``latency_s + work_s * X``, ``X ~ Exp(1)``, and ends when ``n_needed`` have
    finished. Returns ``(step_s (n_steps,), used (n_steps, n_needed + n_backup) bool)``.
    """
    m = n_needed + n_backup
    t = latency_s + work_s * rng.exponential(1.0, size=(n_steps, m))
    order = np.argsort(t, axis=1)
    step = np.take_along_axis(t, order[:, n_needed - 1:n_needed], axis=1)[:, 0]
    used = np.zeros((n_steps, m), dtype=bool)
    np.put_along_axis(used, order[:, :n_needed], True, axis=1)
    return step, used


def updates_per_second(batch_size: int, n_workers: int, latency_s: float, per_example_s: float,
                       n_backup: int = 0) -> float:
    """Closed form ``1 / (latency + (B/N) tau (H_{N+b} - H_b))``: updates per second when
    each of the ``N`` needed workers handles ``B/N`` examples."""
    work = batch_size / n_workers * per_example_s
    return 1.0 / (latency_s + work * expected_step_time(n_workers, n_backup))


def _train_on_clock(X, y, Xte, yte, n_needed, n_backup, shard, n_steps, rng, latency_s, per_example_s):
    """Softmax regression by synchronous SGD; each step averages the first N shards."""
    n, d = X.shape
    W = np.zeros((d, 10))
    opt = optim.sgd(0.2, momentum=0.9)
    state = opt.init(W)
    step_s, used = simulate_step_times(n_needed, n_backup, n_steps, rng, latency_s,
                                       shard * per_example_s)
    clock, losses = [0.0], [softmax_cross_entropy(W, Xte, yte)[0]]
    for k in range(n_steps):
        # Each launched worker gets its own shard; only the finishers' shards count.
        shards = rng.integers(0, n, size=(n_needed + n_backup, shard))
        rows = shards[used[k]].ravel()
        _, g = softmax_cross_entropy(W, X[rows], y[rows])
        u, state = opt.update(g, state, W)
        W = optim.apply_updates(W, u)
        clock.append(clock[-1] + step_s[k])
        losses.append(softmax_cross_entropy(W, Xte, yte)[0])
    return np.asarray(clock), np.asarray(losses)


def run(out_dir: Path, quick: bool = False, seed: int = 0) -> dict:
    """Check the order-statistic formulas by simulation; train against the clock; plot."""
    rng = np.random.default_rng(seed)
    n_sim = 20000 if quick else 200000
    Ns = np.array([1, 2, 4, 8, 16, 32, 64, 128])
    sim_max = np.array([simulate_step_times(int(N), 0, n_sim, rng)[0].mean() for N in Ns])
    th_max = np.array([expected_step_time(int(N)) for N in Ns])

    N = 32
    bs = np.array([0, 1, 2, 4, 8, 16])
    sim_b = np.array([simulate_step_times(N, int(b), n_sim, rng)[0].mean() for b in bs])
    th_b = np.array([expected_step_time(N, int(b)) for b in bs])

    latency_s, per_example_s, n_workers = 0.05, 0.002, 16
    batches = np.array([16, 32, 64, 128, 256, 512, 1024])
    sim_ups = np.array([1.0 / simulate_step_times(n_workers, 0, n_sim, rng, latency_s,
                                                  B / n_workers * per_example_s)[0].mean()
                        for B in batches])
    th_ups = np.array([updates_per_second(int(B), n_workers, latency_s, per_example_s) for B in batches])

    X, y = load_digits()
    Xtr, ytr, Xte, yte = standardized_split(X, y, rng)
    Xtr = np.hstack([Xtr, np.ones((len(Xtr), 1))])
    Xte = np.hstack([Xte, np.ones((len(Xte), 1))])
    n_steps = 150 if quick else 400
    machines = 20
    runs = {}
    for n_backup in (0, 2):
        runs[n_backup] = _train_on_clock(Xtr, ytr, Xte, yte, machines - n_backup, n_backup, 8,
                                         n_steps, rng, latency_s, 8 * per_example_s)

    metrics = {
        "max_rel_err_HN": float(np.max(np.abs(sim_max / th_max - 1))),
        "max_rel_err_backup": float(np.max(np.abs(sim_b / th_b - 1))),
        "max_rel_err_updates_per_s": float(np.max(np.abs(sim_ups / th_ups - 1))),
        "step_time_N32": float(sim_b[0]),
        "H_32": float(th_b[0]),
        "step_time_N32_b4": float(sim_b[list(bs).index(4)]),
        "H_36_minus_H_4": float(th_b[list(bs).index(4)]),
        "updates_per_s_B16": float(sim_ups[0]),
        "updates_per_s_B1024": float(sim_ups[-1]),
        "updates_per_s_decreasing": float(np.all(np.diff(sim_ups) < 0)),
        "sim_seconds_per_step_no_backup": float(np.diff(runs[0][0]).mean()),
        "sim_seconds_per_step_2_backups": float(np.diff(runs[2][0]).mean()),
        "final_test_loss_no_backup": float(runs[0][1][-1]),
        "final_test_loss_2_backups": float(runs[2][1][-1]),
    }
    for k, v in metrics.items():
        print(f"{k}: {v:.4g}")

    fig, ax = new_figure(ncols=4, nrows=1, size=(3.6, 3.2))
    ax = ax[0]
    ax[0].plot(Ns, th_max, "k-", label="$H_N$")
    ax[0].plot(Ns, sim_max, "o", color="C0", label="simulated")
    ax[0].set_xscale("log", base=2)
    ax[0].set_xlabel("workers N")
    ax[0].set_ylabel("mean step time (Exp(1) units)")
    ax[0].set_title("waiting for the slowest")
    ax[0].legend()
    ax[1].plot(bs, th_b, "k-", label="$H_{N+b} - H_b$")
    ax[1].plot(bs, sim_b, "o", color="C1", label="simulated")
    ax[1].set_xlabel(f"backup workers b (N = {N})")
    ax[1].set_title("backup workers")
    ax[1].legend()
    ax[2].plot(batches, th_ups, "k-", label="closed form")
    ax[2].plot(batches, sim_ups, "o", color="C2", label="simulated")
    ax[2].set_xscale("log", base=2)
    ax[2].set_yscale("log")
    ax[2].set_xlabel("global batch B")
    ax[2].set_ylabel("updates per simulated second")
    ax[2].set_title(f"{n_workers} workers, latency {latency_s} s")
    ax[2].legend()
    for n_backup, (clock, loss) in runs.items():
        ax[3].plot(clock, loss, label=f"{machines - n_backup} needed + {n_backup} backup")
    ax[3].set_xlabel("simulated seconds")
    ax[3].set_ylabel("test loss (digits)")
    ax[3].set_yscale("log")
    ax[3].set_title(f"{machines} machines, same budget")
    ax[3].legend()
    fig.tight_layout()
    save_figure(fig, out_dir, "stragglers.png")
    return metrics
