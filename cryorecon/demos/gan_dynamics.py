"""GAN training dynamics on the Dirac-GAN, and an MLP GAN on a ring of Gaussians.

Mescheder, Geiger & Nowozin (2018), "Which training methods for GANs do actually
converge?", reduce a GAN to two scalars: the generator is a point mass at ``theta``, the
data a point mass at 0, and the discriminator is linear, ``D(x) = psi x``. The game is

    min_theta max_psi  L(theta, psi) = f(psi theta) - (gamma / 2) psi^2,

with ``f(t) = t`` for the WGAN form and ``f(t) = -log(1 + exp(-t))`` for the original
GAN; ``(gamma / 2) psi^2`` is their R1 gradient penalty ``(gamma/2) E_data |grad_x D|^2``.

- Simultaneous gradient steps on the bilinear game multiply ``(theta, psi)`` by
  ``[[1, -eta], [eta, 1]]``, which is ``sqrt(1 + eta^2)`` times a rotation: the iterates
  spiral out by exactly that factor every step.
- Alternating steps give a matrix of determinant 1 with eigenvalues on the unit circle:
  the iterates circle for ever, bounded but not convergent.
- The R1 penalty adds damping to the discriminator, and simultaneous steps converge to
  the equilibrium ``(0, 0)``.

The second half trains a small MLP GAN (non-saturating loss, Adam) on a 2-D mixture of 8
Gaussians on a ring from fresh mini-batches; it is plotted, not asserted, because GAN
mode coverage on so few steps is seed-dependent.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from cryorecon import optim
from cryorecon.demos._common import new_figure, save_figure

DESCRIPTION = (
    "Dirac-GAN: simultaneous steps spiral out by sqrt(1+eta^2), alternating steps cycle, "
    "an R1 penalty converges (Mescheder 2018); plus an MLP GAN on 8 Gaussians"
)


# ---------------------------------------------------------------- Dirac-GAN ----------
def _f(t, kind):
    if kind == "wgan":
        return t
    return -np.logaddexp(0.0, -t)


def _f_prime(t, kind):
    if kind == "wgan":
        return np.ones_like(t)
    return 0.5 * (1.0 - np.tanh(0.5 * t))  # sigmoid(-t), overflow-free


def dirac_value(theta, psi, kind="wgan", gamma=0.0):
    """The Dirac-GAN objective ``f(psi theta) - gamma psi^2 / 2``."""
    return _f(psi * theta, kind) - 0.5 * gamma * psi**2


def dirac_gradients(theta, psi, kind="wgan", gamma=0.0):
    """``(dL/dtheta, dL/dpsi)`` of :func:`dirac_value`."""
    fp = _f_prime(psi * theta, kind)
    return psi * fp, theta * fp - gamma * psi


def dirac_trajectory(theta0, psi0, eta, n_steps, mode="simultaneous", kind="wgan", gamma=0.0):
    """Train the Dirac-GAN with SGD steps of size ``eta`` for both players.

    The generator descends ``L`` and the discriminator ascends it (it descends ``-L``).
    ``mode`` is ``"simultaneous"`` (both gradients at the same point) or
    ``"alternating"`` (the discriminator sees the generator's new position).

    Returns an array (n_steps + 1, 2) of ``(theta, psi)``.
    """
    gen, disc = optim.sgd(eta), optim.sgd(eta)
    theta, psi = np.array(float(theta0)), np.array(float(psi0))
    s_gen, s_disc = gen.init(theta), disc.init(psi)
    path = np.empty((n_steps + 1, 2))
    path[0] = theta, psi
    for t in range(n_steps):
        g_theta, g_psi = dirac_gradients(theta, psi, kind, gamma)
        u, s_gen = gen.update(g_theta, s_gen, theta)
        theta = optim.apply_updates(theta, u)
        if mode == "alternating":
            g_psi = dirac_gradients(theta, psi, kind, gamma)[1]
        elif mode != "simultaneous":
            raise ValueError(f"mode must be 'simultaneous' or 'alternating', not {mode!r}")
        u, s_disc = disc.update(-g_psi, s_disc, psi)
        psi = optim.apply_updates(psi, u)
        path[t + 1] = theta, psi
    return path


# ---------------------------------------------------------------- MLP GAN ------------
def init_mlp(sizes, rng, scale=1.0):
    """Parameters ``{"W0", "b0", ...}`` of an MLP with the given layer sizes (He-style init)."""
    params = {}
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        params[f"W{i}"] = scale * rng.standard_normal((n_in, n_out)) / np.sqrt(n_in)
        params[f"b{i}"] = np.zeros(n_out)
    return params


def mlp_forward(params, x):
    """Tanh MLP with a linear last layer; returns the output and the activations for backprop."""
    n_layers = len(params) // 2
    acts = [x]
    for i in range(n_layers):
        z = acts[-1] @ params[f"W{i}"] + params[f"b{i}"]
        acts.append(np.tanh(z) if i < n_layers - 1 else z)
    return acts[-1], acts


def mlp_backward(params, acts, d_out):
    """Backprop ``d_out`` (dLoss/dOutput) through :func:`mlp_forward`; returns (grads, dLoss/dx)."""
    n_layers = len(params) // 2
    grads = {}
    delta = d_out
    for i in reversed(range(n_layers)):
        grads[f"W{i}"] = acts[i].T @ delta
        grads[f"b{i}"] = delta.sum(axis=0)
        delta = delta @ params[f"W{i}"].T
        if i > 0:
            delta = delta * (1.0 - acts[i] ** 2)  # tanh' from its output
    return grads, delta


def _softplus(t):
    return np.logaddexp(0.0, t)


def _sigmoid(t):
    return 0.5 * (1.0 + np.tanh(0.5 * t))


def discriminator_loss(d_params, real, fake):
    """``mean softplus(-D(real)) + mean softplus(D(fake))`` and its gradient in ``d_params``."""
    x = np.concatenate([real, fake])
    logits, acts = mlp_forward(d_params, x)
    logits = logits[:, 0]
    n_real, n_fake = len(real), len(fake)
    loss = _softplus(-logits[:n_real]).mean() + _softplus(logits[n_real:]).mean()
    d_logits = np.concatenate([-_sigmoid(-logits[:n_real]) / n_real, _sigmoid(logits[n_real:]) / n_fake])
    grads, _ = mlp_backward(d_params, acts, d_logits[:, None])
    return float(loss), grads


def generator_loss(g_params, d_params, z):
    """Non-saturating ``mean softplus(-D(G(z)))`` and its gradient in ``g_params``."""
    fake, g_acts = mlp_forward(g_params, z)
    logits, d_acts = mlp_forward(d_params, fake)
    logits = logits[:, 0]
    loss = _softplus(-logits).mean()
    d_logits = -_sigmoid(-logits) / len(z)
    _, d_fake = mlp_backward(d_params, d_acts, d_logits[:, None])
    grads, _ = mlp_backward(g_params, g_acts, d_fake)
    return float(loss), grads


def ring_of_gaussians(n, rng, n_modes=8, radius=2.0, std=0.05):
    """``n`` samples from ``n_modes`` Gaussians of std ``std`` evenly spaced on a circle."""
    angle = 2 * np.pi * rng.integers(0, n_modes, size=n) / n_modes
    centres = radius * np.stack([np.cos(angle), np.sin(angle)], axis=1)
    return centres + std * rng.standard_normal((n, 2))


def train_ring_gan(rng, n_steps, batch_size=128, z_dim=2, hidden=64, learning_rate=1e-3):
    """Train the MLP GAN on the ring; return generator snapshots and the loss history."""
    g_params = init_mlp([z_dim, hidden, hidden, 2], rng)
    d_params = init_mlp([2, hidden, hidden, 1], rng)
    # beta1 = 0.5 is the usual GAN setting: less momentum, less overshoot in the game
    g_opt, d_opt = optim.adam(learning_rate, b1=0.5), optim.adam(learning_rate, b1=0.5)
    g_state, d_state = g_opt.init(g_params), d_opt.init(d_params)
    z_show = rng.standard_normal((1000, z_dim))
    snap_at = {0, n_steps // 4, n_steps // 2, n_steps}
    snapshots, history = {}, []
    for t in range(n_steps + 1):
        if t in snap_at:
            snapshots[t] = mlp_forward(g_params, z_show)[0]
        if t == n_steps:
            break
        real = ring_of_gaussians(batch_size, rng)
        fake = mlp_forward(g_params, rng.standard_normal((batch_size, z_dim)))[0]
        d_loss, d_grads = discriminator_loss(d_params, real, fake)
        u, d_state = d_opt.update(d_grads, d_state, d_params)
        d_params = optim.apply_updates(d_params, u)
        g_loss, g_grads = generator_loss(g_params, d_params, rng.standard_normal((batch_size, z_dim)))
        u, g_state = g_opt.update(g_grads, g_state, g_params)
        g_params = optim.apply_updates(g_params, u)
        history.append((d_loss, g_loss))
    return snapshots, np.array(history)


def modes_covered(samples, n_modes=8, radius=2.0, within=0.3, min_share=0.02):
    """How many ring modes receive at least ``min_share`` of the samples within ``within``."""
    angle = 2 * np.pi * np.arange(n_modes) / n_modes
    centres = radius * np.stack([np.cos(angle), np.sin(angle)], axis=1)
    dist = np.linalg.norm(samples[:, None, :] - centres[None], axis=2)
    near = dist.min(axis=1) < within
    share = np.bincount(dist.argmin(axis=1)[near], minlength=n_modes) / len(samples)
    return int((share >= min_share).sum())


def run(out_dir: Path, quick: bool = False, seed: int = 0) -> dict:
    """Dirac-GAN dynamics (asserted) and a ring-of-Gaussians MLP GAN (plotted)."""
    rng = np.random.default_rng(seed)
    eta = 0.1
    n_steps = 300 if quick else 1000
    theta0, psi0 = 1.0 + 0.5 * rng.random(), 0.5 * rng.random()

    sim = dirac_trajectory(theta0, psi0, eta, n_steps, "simultaneous", "wgan")
    norms = np.linalg.norm(sim, axis=1)
    ratio_err = float(np.max(np.abs(norms[1:] / norms[:-1] - np.sqrt(1 + eta**2))))

    alt = dirac_trajectory(theta0, psi0, eta, n_steps, "alternating", "wgan")
    alt_norms = np.linalg.norm(alt, axis=1)
    tenth = max(n_steps // 10, 1)
    alt_drift = float(alt_norms[-tenth:].max() / alt_norms[:tenth].max())

    sim_gan = dirac_trajectory(theta0, psi0, eta, n_steps, "simultaneous", "gan")
    r1_wgan = dirac_trajectory(theta0, psi0, eta, n_steps, "simultaneous", "wgan", gamma=1.0)
    r1_gan = dirac_trajectory(theta0, psi0, eta, n_steps, "simultaneous", "gan", gamma=1.0)

    gan_steps = 1000 if quick else 6000
    snapshots, history = train_ring_gan(rng, gan_steps)
    final = snapshots[gan_steps]

    metrics = {
        "simultaneous_ratio_max_abs_err": ratio_err,
        "simultaneous_growth": float(norms[-1] / norms[0]),
        "predicted_growth": float((1 + eta**2) ** (n_steps / 2)),
        "alternating_max_norm_over_initial": float(alt_norms.max() / alt_norms[0]),
        "alternating_late_over_early_max": alt_drift,
        "gan_simultaneous_growth": float(np.linalg.norm(sim_gan[-1]) / np.linalg.norm(sim_gan[0])),
        "r1_wgan_final_norm": float(np.linalg.norm(r1_wgan[-1])),
        "r1_gan_final_norm": float(np.linalg.norm(r1_gan[-1])),
        "ring_modes_covered": modes_covered(final),
        "ring_final_d_loss": float(history[-100:, 0].mean()),
    }
    for k, v in metrics.items():
        print(f"{k}: {v}")

    fig, axes = new_figure(ncols=3, size=(4.4, 4.2))
    ax = axes[0, 0]
    grid = np.linspace(-3, 3, 21)
    th, ps = np.meshgrid(grid, grid)
    g_th, g_ps = dirac_gradients(th, ps, "wgan")
    ax.quiver(th, ps, -g_th, g_ps, color="0.75", width=0.003)
    ax.plot(sim[:, 0], sim[:, 1], lw=1, label=f"simultaneous (×{np.sqrt(1 + eta**2):.4f}/step)")
    ax.plot(alt[:, 0], alt[:, 1], lw=1, label="alternating (cycles)")
    ax.plot(r1_wgan[:, 0], r1_wgan[:, 1], lw=1, label="simultaneous + R1 (γ=1)")
    ax.plot(0, 0, "k*", ms=10)
    ax.set_xlim(-3, 3)
    ax.set_ylim(-3, 3)
    ax.set_xlabel("θ (generator)")
    ax.set_ylabel("ψ (discriminator)")
    ax.set_title(f"Dirac-GAN, f(t)=t, η={eta}")
    ax.legend(fontsize=7, loc="lower left")

    ax = axes[0, 1]
    steps = np.arange(n_steps + 1)
    ax.semilogy(steps, norms, label="simultaneous, f(t)=t")
    ax.semilogy(steps, norms[0] * (1 + eta**2) ** (steps / 2), "k:", label="√(1+η²)^t")
    ax.semilogy(steps, alt_norms, label="alternating, f(t)=t")
    ax.semilogy(steps, np.linalg.norm(sim_gan, axis=1), label="simultaneous, GAN f")
    ax.semilogy(steps, np.linalg.norm(r1_wgan, axis=1), label="R1, f(t)=t")
    ax.semilogy(steps, np.linalg.norm(r1_gan, axis=1), label="R1, GAN f")
    ax.set_xlabel("step")
    ax.set_ylabel("‖(θ, ψ)‖")
    ax.set_title("distance from equilibrium")
    ax.legend(fontsize=7)

    ax = axes[0, 2]
    target = ring_of_gaussians(1000, np.random.default_rng(seed + 1))
    ax.scatter(target[:, 0], target[:, 1], s=3, c="0.7", label="data")
    for t, pts in sorted(snapshots.items()):
        if t == 0:
            continue
        ax.scatter(pts[:, 0], pts[:, 1], s=2, alpha=0.5, label=f"G after {t} steps")
    ax.set_aspect("equal")
    ax.set_xlim(-3, 3)
    ax.set_ylim(-3, 3)
    ax.set_title(f"MLP GAN, 8 Gaussians ({metrics['ring_modes_covered']} modes hit)")
    ax.legend(fontsize=7, markerscale=4, loc="upper right")
    save_figure(fig, out_dir, "gan_dynamics.png")
    return metrics
