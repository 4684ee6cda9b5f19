"""Heavy-ball momentum in ravines: Polyak's step and momentum against gradient descent.

On a quadratic with Hessian eigenvalues in ``[mu, L]`` (condition number
``kappa = L / mu``), gradient descent with its best constant step ``2 / (L + mu)``
contracts the error by ``(kappa - 1) / (kappa + 1)`` per step. Polyak's heavy ball,

    x' = x - alpha grad f(x) + beta (x - x_prev),
    alpha = 4 / (sqrt(L) + sqrt(mu))^2,   beta = ((sqrt(kappa) - 1) / (sqrt(kappa) + 1))^2,

contracts it by ``(sqrt(kappa) - 1) / (sqrt(kappa) + 1)``: about ``sqrt(kappa)`` times
fewer iterations (B. T. Polyak 1964, "Some methods of speeding up the convergence of
iteration methods"). :func:`cryorecon.optim.sgd` with ``momentum=beta`` is exactly this
recursion: its trace ``t = g + beta t`` makes ``-lr t`` the heavy-ball step.

The demo counts the iterations each needs to reach a relative loss
``(f - f*) / (f(x0) - f*) <= 1e-6`` on

- a rotated 2-D quadratic with ``kappa = 100``;
- Rosenbrock's valley from the classic start ``(-1.2, 1)``, with ``mu`` the smallest
  Hessian eigenvalue at the minimum and ``L`` the largest Hessian eigenvalue met at the
  start or at the minimum (Polyak's theorem is local; taking ``L`` from the minimum alone
  makes the first heavy-ball steps unstable where the valley wall is steeper).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from cryorecon import optim
from cryorecon.demos._common import new_figure, save_figure

DESCRIPTION = (
    "Heavy-ball momentum with Polyak's settings vs gradient descent on a kappa=100 "
    "quadratic and on Rosenbrock: iterations to 1e-6 relative loss, trajectories on contours"
)

TOL = 1e-6
X0_QUADRATIC = np.array([1.0, 1.0])
X0_ROSENBROCK = np.array([-1.2, 1.0])


def quadratic_matrix(kappa: float = 100.0, angle_deg: float = 30.0) -> np.ndarray:
    """A 2x2 SPD matrix with eigenvalues 1 and ``kappa``, eigenvectors rotated by ``angle_deg``."""
    t = np.deg2rad(angle_deg)
    R = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    return R @ np.diag([1.0, kappa]) @ R.T


def quadratic_loss(x: np.ndarray, A: np.ndarray) -> float:
    """``x^T A x / 2``; its minimum is 0 at the origin."""
    return float(0.5 * x @ A @ x)


def quadratic_grad(x: np.ndarray, A: np.ndarray) -> np.ndarray:
    """Gradient ``A x`` of :func:`quadratic_loss`."""
    return A @ x


def rosenbrock(x: np.ndarray) -> float:
    """``(1 - x)^2 + 100 (y - x^2)^2``; its minimum is 0 at ``(1, 1)``."""
    return float((1.0 - x[0]) ** 2 + 100.0 * (x[1] - x[0] ** 2) ** 2)


def rosenbrock_grad(x: np.ndarray) -> np.ndarray:
    """Gradient of :func:`rosenbrock`."""
    r = x[1] - x[0] ** 2
    return np.array([-2.0 * (1.0 - x[0]) - 400.0 * x[0] * r, 200.0 * r])


def rosenbrock_hessian(x: np.ndarray) -> np.ndarray:
    """Hessian of :func:`rosenbrock`."""
    return np.array([[2.0 - 400.0 * (x[1] - x[0] ** 2) + 800.0 * x[0] ** 2, -400.0 * x[0]],
                     [-400.0 * x[0], 200.0]])


def polyak_settings(L: float, mu: float) -> tuple[float, float]:
    """Polyak's heavy-ball ``(alpha, beta)`` for curvature in ``[mu, L]``."""
    sk = np.sqrt(L / mu)
    return 4.0 / (np.sqrt(L) + np.sqrt(mu)) ** 2, ((sk - 1.0) / (sk + 1.0)) ** 2


def iterations_to_tolerance(fun, grad, x0, opt, tol=TOL, f_star=0.0, max_iter=100_000):
    """Run ``opt`` from ``x0`` until the relative loss is at most ``tol``.

    Returns
    -------
    n_iter : int or None
        Iterations taken, or ``None`` when ``max_iter`` ran out or the run diverged.
    path : ndarray
        (iterations + 1, 2) iterates.
    losses : ndarray
        Relative loss at each iterate.
    """
    x = np.array(x0, dtype=np.float64)
    f0 = fun(x) - f_star
    state = opt.init(x)
    path, losses = [x.copy()], [1.0]
    for k in range(max_iter):
        if losses[-1] <= tol:
            return k, np.array(path), np.array(losses)
        if not np.isfinite(losses[-1]) or losses[-1] > 1e8:
            return None, np.array(path), np.array(losses)
        updates, state = opt.update(grad(x), state, x)
        x = optim.apply_updates(x, updates)
        path.append(x.copy())
        losses.append((fun(x) - f_star) / f0)
    return None, np.array(path), np.array(losses)


def _compare(fun, grad, x0, L, mu):
    lr_gd = 2.0 / (L + mu)
    alpha, beta = polyak_settings(L, mu)
    n_gd, path_gd, loss_gd = iterations_to_tolerance(fun, grad, x0, optim.sgd(lr_gd))
    n_hb, path_hb, loss_hb = iterations_to_tolerance(
        fun, grad, x0, optim.sgd(alpha, momentum=beta))
    return dict(lr_gd=lr_gd, alpha=alpha, beta=beta, n_gd=n_gd, n_hb=n_hb,
                path_gd=path_gd, path_hb=path_hb, loss_gd=loss_gd, loss_hb=loss_hb)


def run(out_dir: Path, quick: bool = False, seed: int = 0) -> dict:
    """Count iterations to 1e-6 relative loss for gradient descent and heavy ball.

    Both problems are deterministic, so ``quick`` and ``seed`` change nothing; they are
    accepted for the common demo interface.

    Returns
    -------
    dict
        For ``quadratic`` and ``rosenbrock``: ``*_gd_iters``, ``*_hb_iters``,
        ``*_speedup`` (GD iterations / heavy-ball iterations), and the settings used
        (``*_gd_lr``, ``*_hb_alpha``, ``*_hb_beta``).
    """
    del quick, seed
    A = quadratic_matrix(100.0)
    eig = np.linalg.eigvalsh(A)
    quad = _compare(lambda x: quadratic_loss(x, A), lambda x: quadratic_grad(x, A),
                    X0_QUADRATIC, eig[-1], eig[0])

    eig_min = np.linalg.eigvalsh(rosenbrock_hessian(np.array([1.0, 1.0])))
    L_ros = max(eig_min[-1], np.linalg.eigvalsh(rosenbrock_hessian(X0_ROSENBROCK))[-1])
    ros = _compare(rosenbrock, rosenbrock_grad, X0_ROSENBROCK, L_ros, eig_min[0])

    metrics = {}
    for name, res in (("quadratic", quad), ("rosenbrock", ros)):
        speedup = (res["n_gd"] / res["n_hb"]) if res["n_gd"] and res["n_hb"] else float("nan")
        metrics.update({
            f"{name}_gd_lr": res["lr_gd"],
            f"{name}_hb_alpha": res["alpha"],
            f"{name}_hb_beta": res["beta"],
            f"{name}_gd_iters": res["n_gd"],
            f"{name}_hb_iters": res["n_hb"],
            f"{name}_speedup": speedup,
        })
    for key, value in metrics.items():
        print(f"{key}: {value:.4g}" if isinstance(value, float) else f"{key}: {value}")

    fig, axes = new_figure(ncols=2, nrows=2, size=(5.5, 4.5))
    grids = (
        (quad, lambda X, Y: 0.5 * (A[0, 0] * X**2 + 2 * A[0, 1] * X * Y + A[1, 1] * Y**2),
         (-1.3, 1.3), (-1.3, 1.3), np.geomspace(1e-4, 60, 14), "quadratic, kappa = 100"),
        (ros, lambda X, Y: (1 - X) ** 2 + 100 * (Y - X**2) ** 2,
         (-1.6, 1.6), (-0.4, 1.6), np.geomspace(1e-3, 600, 14), "Rosenbrock from (-1.2, 1)"),
    )
    for col, (res, f, xr, yr, levels, title) in enumerate(grids):
        X, Y = np.meshgrid(np.linspace(*xr, 300), np.linspace(*yr, 300))
        ax = axes[0, col]
        ax.contour(X, Y, f(X, Y), levels=levels, colors="0.7", linewidths=0.7)
        ax.plot(*res["path_gd"].T, ".-", ms=2, lw=0.6, color="C0",
                label=f"GD lr={res['lr_gd']:.3g}: {res['n_gd']} it")
        ax.plot(*res["path_hb"].T, ".-", ms=2, lw=0.6, color="C3",
                label=f"heavy ball a={res['alpha']:.3g}, b={res['beta']:.3f}: {res['n_hb']} it")
        ax.set_xlim(*xr)
        ax.set_ylim(*yr)
        ax.set_title(title)
        ax.legend(fontsize=7, loc="lower right")
        ax = axes[1, col]
        ax.semilogy(res["loss_gd"], color="C0", label="gradient descent")
        ax.semilogy(res["loss_hb"], color="C3", label="heavy ball (Polyak)")
        ax.axhline(TOL, color="k", lw=0.8)
        ax.set_xscale("symlog", linthresh=10)
        ax.set_xlim(left=0)
        ax.set_xlabel("iteration")
        ax.set_ylabel("(f - f*) / (f0 - f*)")
        ax.legend(fontsize=8)
    save_figure(fig, out_dir, "momentum.png")
    return metrics
