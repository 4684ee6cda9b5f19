"""SGD as a thermostat: its noise sets a temperature proportional to eta / B.

Mandt, Hoffman & Blei (2017), "Stochastic gradient descent as approximate Bayesian
inference", and Smith & Le (2018), "A Bayesian perspective on generalization and
stochastic gradient descent", model constant-step SGD as a Langevin process whose
temperature is ``T = eta * sigma^2 / (2 B)``. Three consequences are measured here on
genuine mini-batch SGD (examples drawn with replacement from a finite data set):

1. On ``f(x) = h x^2 / 2`` the iterates settle into a stationary distribution. For the
   discrete recursion ``x' = (1 - eta h) x - eta n`` with ``Var n = sigma^2 / B`` the
   variance is exactly ``eta sigma^2 / (B h (2 - eta h))``; the continuous-time
   approximation drops the ``- eta h``.
2. Only the ratio ``eta / B`` matters to first order: pairs with the same ratio have the
   same spread.
3. On a double well, the time to escape over the barrier grows like
   ``exp(Delta U / T)`` (Kramers), i.e. exponentially in ``B / eta``.

The per-example losses are ``f_i(x) = h (x - c_i)^2 / 2`` and
``f_i(x) = x^4/4 - x^2/2 + c_i x`` with offsets ``c_i`` of mean zero, so each per-example
gradient is the full gradient plus a noise term of exactly known variance.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from cryorecon import optim
from cryorecon.demos._common import new_figure, save_figure

DESCRIPTION = (
    "SGD temperature eta/B: stationary variance eta*sigma^2/(B h (2-eta h)) on a "
    "quadratic and barrier-escape times growing with B/eta (Mandt 2017, Smith & Le 2018)"
)

#: Barrier height of ``x^4/4 - x^2/2`` between a minimum at -1 and the saddle at 0.
BARRIER = 0.25

#: (eta, B) settings of the stationary-variance check, from small to large ``eta h``.
VARIANCE_SETTINGS = [(0.05, 1), (0.2, 1), (0.5, 1), (0.2, 4), (0.8, 2), (0.5, 8)]
#: (eta, B) pairs sharing ``eta / B = 0.02``, and one pair at a quarter of that ratio.
SAME_RATIO = [(0.02, 1), (0.04, 2), (0.08, 4), (0.16, 8)]
OTHER_RATIO = (0.02, 4)


def make_offsets(n: int, scale: float, rng: np.random.Generator) -> np.ndarray:
    """``n`` data offsets with mean exactly 0 and population standard deviation ``scale``."""
    c = rng.standard_normal(n)
    c -= c.mean()
    return scale * c / c.std()


def quadratic_loss(x, h: float, offsets: np.ndarray):
    """Full-data loss ``mean_i h (x - c_i)^2 / 2``, elementwise over an array of chains ``x``."""
    x = np.asarray(x, dtype=np.float64)
    return 0.5 * h * np.mean((x[..., None] - offsets) ** 2, axis=-1)


def quadratic_grad(x, h: float, offsets: np.ndarray, idx=None):
    """Gradient of :func:`quadratic_loss`; with ``idx`` (chains x B) a mini-batch estimate."""
    x = np.asarray(x, dtype=np.float64)
    c_mean = offsets.mean() if idx is None else offsets[idx].mean(axis=-1)
    return h * (x - c_mean)


def double_well_loss(x, offsets: np.ndarray):
    """Full-data loss ``mean_i (x^4/4 - x^2/2 + c_i x)``, elementwise over chains ``x``."""
    x = np.asarray(x, dtype=np.float64)
    return x**4 / 4 - x**2 / 2 + x * offsets.mean()


def double_well_grad(x, offsets: np.ndarray, idx=None):
    """Gradient of :func:`double_well_loss`; with ``idx`` (chains x B) a mini-batch estimate."""
    x = np.asarray(x, dtype=np.float64)
    c_mean = offsets.mean() if idx is None else offsets[idx].mean(axis=-1)
    return x**3 - x + c_mean


def predicted_variance(eta: float, batch_size: int, h: float, sigma2: float) -> float:
    """Exact stationary variance ``eta sigma^2 / (B h (2 - eta h))`` of SGD on ``h x^2/2``."""
    return eta * sigma2 / (batch_size * h * (2.0 - eta * h))


def stationary_samples(eta, batch_size, h, offsets, n_chains, n_burn, n_sample, rng):
    """Run ``n_chains`` independent SGD chains on the quadratic; return the post-burn-in iterates.

    Returns an array (n_sample, n_chains). The chains start at the minimiser; ``n_burn``
    should be several relaxation times ``1 / (eta h)``.
    """
    opt = optim.sgd(eta)
    x = np.zeros(n_chains)
    state = opt.init(x)
    kept = np.empty((n_sample, n_chains))
    for t in range(n_burn + n_sample):
        idx = rng.integers(0, offsets.size, size=(n_chains, batch_size))
        updates, state = opt.update(quadratic_grad(x, h, offsets, idx), state, x)
        x = optim.apply_updates(x, updates)
        if t >= n_burn:
            kept[t - n_burn] = x
    return kept


def escape_steps(eta, batch_size, offsets, n_chains, max_steps, rng, x_exit=0.5):
    """Steps until each chain, started in the left well at -1, first passes ``x_exit``.

    Chains that have not escaped after ``max_steps`` are reported as ``max_steps``
    (censored), which can only bias the mean escape time down.
    """
    opt = optim.sgd(eta)
    x = -np.ones(n_chains)
    state = opt.init(x)
    steps = np.full(n_chains, max_steps, dtype=np.int64)
    done = np.zeros(n_chains, dtype=bool)
    for t in range(1, max_steps + 1):
        idx = rng.integers(0, offsets.size, size=(n_chains, batch_size))
        updates, state = opt.update(double_well_grad(x, offsets, idx), state, x)
        x = optim.apply_updates(x, updates)
        newly = (~done) & (x > x_exit)
        steps[newly] = t
        done |= newly
        if done.all():
            break
    return steps, int((~done).sum())


def kramers_time(temperature: float) -> float:
    """Kramers' mean escape time ``2 pi / sqrt(U''(min) |U''(saddle)|) exp(dU / T)`` for the well."""
    return 2 * np.pi / np.sqrt(2.0 * 1.0) * np.exp(BARRIER / temperature)


def variance_arm(offsets, h, sigma2, n_chains, rng):
    """Stationary variance of SGD on ``h x^2 / 2`` for each of :data:`VARIANCE_SETTINGS`.

    Returns a list of ``(eta, B, empirical, predicted)`` with the exact discrete formula
    as the prediction.
    """
    rows = []
    for eta, b in VARIANCE_SETTINGS:
        n_burn = int(10 / (eta * h))
        samples = stationary_samples(eta, b, h, offsets, n_chains, n_burn, 4 * n_burn, rng)
        rows.append((eta, b, float(np.mean(samples**2)), predicted_variance(eta, b, h, sigma2)))
    return rows


def same_ratio_arm(offsets, h_flat, n_chains, rng):
    """Stationary samples for :data:`SAME_RATIO` and :data:`OTHER_RATIO`, keyed by (eta, B).

    Run on a flatter quadratic ``h_flat`` so that ``eta h`` stays small and only the
    first-order ratio ``eta / B`` should matter.
    """
    samples = {}
    for eta, b in SAME_RATIO + [OTHER_RATIO]:
        n_burn = int(8 / (eta * h_flat))
        samples[(eta, b)] = stationary_samples(eta, b, h_flat, offsets, n_chains, n_burn, 3 * n_burn, rng)
    return samples


def escape_arm(dw_offsets, dw_scale, eta, batches, n_chains, rng):
    """Mean escape time from the left well for each batch size; temperature ``eta s^2 / (2 B)``.

    Returns a list of ``(B / eta, mean escape time in units of steps x eta, Kramers'
    time, number of censored chains)``.
    """
    rows = []
    for b in batches:
        steps, censored = escape_steps(eta, b, dw_offsets, n_chains, 60000, rng)
        temperature = eta * dw_scale**2 / (2 * b)
        rows.append((b / eta, float(steps.mean() * eta), kramers_time(temperature), censored))
    return rows


def plot(out_dir, var_rows, h, sigma2, spread_samples, escape_rows):
    """The three panels: stationary variance, same-ratio spreads, escape times."""
    fig, axes = new_figure(ncols=3, size=(4.6, 4.0))
    ax = axes[0, 0]
    pred = np.array([r[3] for r in var_rows])
    emp = np.array([r[2] for r in var_rows])
    cont = np.array([eta * sigma2 / (2 * b * h) for eta, b, _, _ in var_rows])
    lim = [pred.min() * 0.7, pred.max() * 1.4]
    ax.plot(lim, lim, "k-", lw=0.8, label="y = x")
    ax.loglog(pred, emp, "o", label=r"exact $\eta\sigma^2/(Bh(2-\eta h))$")
    ax.loglog(cont, emp, "x", label=r"continuous $\eta\sigma^2/(2Bh)$")
    for (eta, b, e, p) in var_rows:
        ax.annotate(f"ηh={eta * h:g},B={b}", (p, e), fontsize=7, xytext=(3, -9), textcoords="offset points")
    ax.set_xlabel("predicted variance")
    ax.set_ylabel("empirical variance")
    ax.set_title("stationary variance on h x²/2")
    ax.legend(fontsize=7)

    ax = axes[0, 1]
    max_std = max(float(np.sqrt(np.mean(spread_samples[k] ** 2))) for k in SAME_RATIO)
    bins = np.linspace(-4 * max_std, 4 * max_std, 60)
    for k in SAME_RATIO + [OTHER_RATIO]:
        style = "-" if k in SAME_RATIO else "--"
        ax.hist(spread_samples[k].ravel(), bins=bins, density=True, histtype="step", ls=style,
                label=f"η={k[0]}, B={k[1]} (η/B={k[0] / k[1]:.3g})")
    ax.set_xlabel("x")
    ax.set_title("same η/B, same spread")
    ax.legend(fontsize=7)

    ax = axes[0, 2]
    ratio = np.array([r[0] for r in escape_rows])
    ax.semilogy(ratio, [r[1] for r in escape_rows], "o-", label="SGD (mean over chains)")
    ax.semilogy(ratio, [r[2] for r in escape_rows], "k--", label="Kramers")
    ax.set_xlabel("B / η")
    ax.set_ylabel("escape time (steps × η)")
    ax.set_title("double-well escape")
    ax.legend(fontsize=8)
    save_figure(fig, out_dir, "temperature.png")


def run(out_dir: Path, quick: bool = False, seed: int = 0) -> dict:
    """Measure stationary spreads and escape times; plot them; return the metrics."""
    rng = np.random.default_rng(seed)
    n_chains = 1000 if quick else 4000
    h, scale = 2.0, 1.0
    offsets = make_offsets(512, scale, rng)
    sigma2 = (h * scale) ** 2  # per-example gradient variance h^2 Var(c)

    var_rows = variance_arm(offsets, h, sigma2, n_chains, rng)
    rel_err = [abs(emp - pred) / pred for _, _, emp, pred in var_rows]
    continuous_err = [abs(emp - eta * sigma2 / (2 * b * h)) / emp for eta, b, emp, _ in var_rows]

    spread_samples = same_ratio_arm(offsets, 0.5, n_chains, rng)
    stds = {k: float(np.sqrt(np.mean(v**2))) for k, v in spread_samples.items()}
    same_stds = [stds[k] for k in SAME_RATIO]

    dw_scale = 3.0
    dw_offsets = make_offsets(512, dw_scale, rng)
    batches = [2, 4, 6] if quick else [2, 4, 6, 8]
    escape_rows = escape_arm(dw_offsets, dw_scale, 0.1, batches, 200 if quick else 1000, rng)
    escape_times = [r[1] for r in escape_rows]
    log_slope = float(np.polyfit([r[0] for r in escape_rows], np.log(escape_times), 1)[0])

    metrics = {
        "stationary_var_max_rel_err": float(max(rel_err)),
        "continuous_formula_max_rel_err": float(max(continuous_err)),
        "same_ratio_spread_max_over_min": float(max(same_stds) / min(same_stds)),
        "quarter_ratio_spread_ratio": float(stds[SAME_RATIO[0]] / stds[OTHER_RATIO]),
        "escape_B_over_eta": [r[0] for r in escape_rows],
        "escape_time": escape_times,
        "escape_censored": int(sum(r[3] for r in escape_rows)),
        "escape_log_slope": log_slope,
        "kramers_log_slope": BARRIER * 2 / dw_scale**2,
    }
    for eta, b, emp, pred in var_rows:
        print(f"var eta={eta} B={b}: empirical {emp:.5g} predicted {pred:.5g}")
    for k, v in metrics.items():
        print(f"{k}: {v}")
    plot(out_dir, var_rows, h, sigma2, spread_samples, escape_rows)
    return metrics
