"""How large must a mini-batch be? The Law of Large Numbers, made quantitative by Chebyshev.

A mini-batch gradient ``g_B`` is the mean of ``B`` per-example gradients drawn
independently (with replacement) from the data, so ``E g_B = g`` and
``E |g_B - g|^2 = tr Cov / B``, with ``Cov`` the covariance of one per-example gradient.
Markov's inequality applied to ``|g_B - g|^2`` (the vector form of Chebyshev's
inequality) gives ``P(|g_B - g| >= eps) <= tr Cov / (B eps^2)``, so

    B >= tr Cov / (delta eps^2)

guarantees a failure rate of at most ``delta``. With ``eps = |g|`` a success means the
mini-batch gradient is a descent direction (``g_B . g > 0``); the bound is then
``B_simple / delta`` with the "simple noise scale" ``B_simple = tr Cov / |g|^2`` of
McCandlish et al. (2018), "An empirical model of large-batch training".

The demo trains L2-regularised softmax regression on scikit-learn's ``digits`` for a few
steps with :func:`cryorecon.optim.sgd`, estimates ``tr Cov`` from a pilot sample of
per-example gradients (as an adaptive-batch engine would), and then measures the
empirical failure rate over thousands of mini-batches of each size. The bound holds, the
rate falls as ``B`` grows, and Chebyshev is conservative by roughly ``1 / delta`` because
in many dimensions ``|g_B - g|^2`` concentrates near its mean.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from cryorecon import optim
from cryorecon.demos._common import load_digits, new_figure, save_figure, standardized_split

DESCRIPTION = (
    "Chebyshev batch-size bound B >= tr Cov / (delta eps^2) on softmax regression over "
    "digits: empirical failure rate vs B, and how conservative the bound is"
)

N_CLASSES = 10


def add_bias(X: np.ndarray) -> np.ndarray:
    """Append a constant-1 column so the bias is one more row of the weight matrix."""
    return np.hstack([X, np.ones((len(X), 1), dtype=X.dtype)])


def softmax(z: np.ndarray) -> np.ndarray:
    """Row-wise softmax, shifted by the row maximum so that ``exp`` cannot overflow."""
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def loss(W: np.ndarray, X: np.ndarray, y: np.ndarray, l2: float) -> float:
    """Mean cross-entropy of softmax regression plus ``l2 |W|^2 / 2``.

    ``W`` is (features + 1, classes), ``X`` already carries the bias column.
    """
    z = X @ W
    z = z - z.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(z).sum(axis=1))
    ce = np.mean(log_norm - z[np.arange(len(y)), y])
    return float(ce + 0.5 * l2 * np.sum(W * W))


def per_example_grads(W: np.ndarray, X: np.ndarray, y: np.ndarray, l2: float) -> np.ndarray:
    """The (n, W.size) matrix whose row i is the gradient of example i's loss.

    Example i's loss is its cross-entropy plus the full regulariser, so the rows average
    to the gradient of :func:`loss`: ``x_i (p_i - e_{y_i})^T + l2 W``.
    """
    P = softmax(X @ W)
    P[np.arange(len(y)), y] -= 1.0
    G = X[:, :, None] * P[:, None, :]
    return G.reshape(len(y), -1) + l2 * W.ravel()


def grad(W: np.ndarray, X: np.ndarray, y: np.ndarray, l2: float) -> np.ndarray:
    """Gradient of :func:`loss` with respect to ``W`` (same shape as ``W``)."""
    P = softmax(X @ W)
    P[np.arange(len(y)), y] -= 1.0
    return X.T @ P / len(y) + l2 * W


def batch_error_norms(G: np.ndarray, batch_size: int, n_draws: int, rng: np.random.Generator,
                      chunk: int = 250) -> np.ndarray:
    """``|g_B - g|`` for ``n_draws`` mini-batches of ``batch_size`` rows of ``G`` (with replacement).

    A batch mean is a vector of draw counts times ``G``, so a chunk of batches is one
    dense matrix product (BLAS) instead of a gather of ``draws x B`` rows.
    """
    n = len(G)
    D = G - G.mean(axis=0)
    out = np.empty(n_draws)
    for start in range(0, n_draws, chunk):
        m = min(chunk, n_draws - start)
        idx = rng.integers(0, n, size=(m, batch_size))
        flat = (np.arange(m)[:, None] * n + idx).ravel()
        counts = np.bincount(flat, minlength=m * n).reshape(m, n).astype(G.dtype)
        out[start:start + m] = np.linalg.norm(counts @ D, axis=1) / batch_size
    return out


def run(out_dir: Path, quick: bool = False, seed: int = 0) -> dict:
    """Check the Chebyshev batch-size bound on softmax regression over ``digits``.

    Parameters
    ----------
    out_dir : Path
        Where ``batch_size.png`` is written.
    quick : bool
        Fewer mini-batch draws per batch size (for tests).
    seed : int
        Seeds the split, the pilot sample and every mini-batch draw.

    Returns
    -------
    dict
        ``delta``, ``eps``, ``trace_cov`` (exact, all training examples),
        ``trace_cov_pilot`` (from a pilot sample of 256), ``B_simple``, ``B_bound``
        (from the exact trace), ``B_bound_pilot`` (from the pilot), ``failure_at_bound``, ``B_empirical`` (smallest tested B whose failure
        rate is at most delta), ``conservatism`` (``B_bound / B_empirical``),
        ``batch_sizes`` and ``failure_rates``.
    """
    rng = np.random.default_rng(seed)
    X, y = load_digits()
    X_train, y_train, _, _ = standardized_split(X, y, rng)
    X_train = add_bias(X_train)
    n, d = X_train.shape
    l2 = 1e-3
    delta = 0.1
    n_draws = 500 if quick else 4000
    n_pilot = 256

    # A few SGD steps move W off zero, where every class is equally likely and the
    # gradient is atypical of training.
    W = np.zeros((d, N_CLASSES))
    opt = optim.sgd(0.1, momentum=0.5)
    state = opt.init(W)
    for _ in range(10):
        idx = rng.integers(0, n, size=64)
        updates, state = opt.update(grad(W, X_train[idx], y_train[idx], l2), state, W)
        W = optim.apply_updates(W, updates)

    G = per_example_grads(W, X_train, y_train, l2)
    g = G.mean(axis=0)
    trace_cov = float(np.sum((G - g) ** 2) / n)
    pilot = G[rng.choice(n, size=n_pilot, replace=False)]
    trace_cov_pilot = float(np.sum((pilot - pilot.mean(axis=0)) ** 2) / (n_pilot - 1))
    eps = float(np.linalg.norm(g))
    # Batches are drawn from the training set itself, so its exact covariance makes
    # Chebyshev a theorem here; the pilot estimate is what an engine would have to use.
    b_bound = int(np.ceil(optim.noise.chebyshev_batch_size(trace_cov, eps, delta)))
    b_pilot = int(np.ceil(optim.noise.chebyshev_batch_size(trace_cov_pilot, eps, delta)))

    # Geometric grid in half octaves, from far below the bound to just above it.
    sizes = np.unique(np.round(b_bound * 2.0 ** (np.arange(-12, 2) / 2)).astype(int))
    sizes = np.unique(np.append(sizes[sizes >= 1], b_bound))
    errors = {int(b): batch_error_norms(G, int(b), n_draws, rng) for b in sizes}
    rates = np.array([np.mean(errors[int(b)] >= eps) for b in sizes])
    failure_at_bound = float(rates[sizes == b_bound][0])
    ok = sizes[rates <= delta]
    b_empirical = int(ok.min())

    metrics = {
        "delta": delta,
        "eps": eps,
        "trace_cov": trace_cov,
        "trace_cov_pilot": trace_cov_pilot,
        "B_simple": trace_cov / eps**2,
        "B_bound": b_bound,
        "B_bound_pilot": b_pilot,
        "failure_at_bound": failure_at_bound,
        "B_empirical": b_empirical,
        "conservatism": b_bound / b_empirical,
        "batch_sizes": sizes.tolist(),
        "failure_rates": rates.tolist(),
    }
    for key in ("delta", "eps", "trace_cov", "trace_cov_pilot", "B_simple", "B_bound",
                "B_bound_pilot",                 "failure_at_bound", "B_empirical", "conservatism"):
        value = metrics[key]
        print(f"{key}: {value:.4g}" if isinstance(value, float) else f"{key}: {value}")

    fig, axes = new_figure(ncols=2, size=(5.5, 4.2))
    ax = axes[0, 0]
    ax.semilogx(sizes, rates, "o-", label="empirical P(|g_B - g| >= eps)")
    chebyshev = np.minimum(1.0, trace_cov / (sizes * eps**2))
    ax.semilogx(sizes, chebyshev, "--", label="Chebyshev: tr Cov / (B eps^2)")
    ax.axhline(delta, color="k", lw=0.8, label=f"delta = {delta}")
    ax.axvline(b_bound, color="C3", lw=1.0, label=f"bound B = {b_bound}")
    ax.axvline(b_empirical, color="C2", lw=1.0, ls=":", label=f"empirical B = {b_empirical}")
    ax.set_xlabel("batch size B")
    ax.set_ylabel("failure rate")
    ax.set_title(f"digits softmax regression, eps = |g| (bound {b_bound / b_empirical:.1f}x safe)")
    ax.legend(fontsize=7)
    ax = axes[0, 1]
    for b in (b_empirical, b_bound):
        ax.hist(errors[b] / eps, bins=40, alpha=0.6, label=f"B = {b}")
    ax.axvline(1.0, color="k", lw=0.8)
    ax.set_xlabel("|g_B - g| / eps")
    ax.set_ylabel("mini-batches")
    ax.set_title("error concentrates: Chebyshev is loose by ~1/delta")
    ax.legend(fontsize=8)
    save_figure(fig, out_dir, "batch_size.png")
    return metrics
