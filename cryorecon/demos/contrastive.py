"""Contrastive learning with the InfoNCE loss on ``digits``.

InfoNCE (van den Oord, Li & Vinyals 2018, "Representation learning with contrastive
predictive coding"; in the two-view form of SimCLR, Chen et al. 2020, and CLIP, Radford
et al. 2021): embed two random augmentations ``u_i, v_i`` of each of ``B`` examples as unit
vectors, form the similarities ``S_ij = <z(u_i), z(v_j)> / tau`` and score each row
(and, symmetrically, each column) as a ``B``-way classification of its positive pair:

    L = 1/(2B) sum_i [ (logsumexp_j S_ij - S_ii) + (logsumexp_j S_ji - S_ii) ].

Facts shown here:

- With all similarities equal the loss is exactly ``log B``: chance level for a
  ``B``-way choice, so the loss depends on the batch size itself.
- Each example's loss depends on the whole batch (the other examples are its
  negatives). Accumulating gradients over micro-batches therefore gives a different
  gradient from the full batch, unlike a per-example loss (checked against
  :func:`cryorecon.optim.accumulate`).
- Trained on ``digits`` with shift/noise/dropout augmentations and no labels, the
  embedding separates the classes: a linear probe on it beats a linear probe on a random
  projection of the same dimension.

The encoder is a one-hidden-layer tanh MLP followed by L2 normalisation; all its
gradients are written by hand.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from cryorecon import optim
from cryorecon.demos._common import load_digits, new_figure, save_figure

DESCRIPTION = (
    "InfoNCE on digits: log B at equal similarities, micro-batch accumulation is not the "
    "full-batch gradient, and learned embeddings beat a random projection on a linear probe"
)


def init_encoder(n_in, n_hidden, n_out, rng):
    """Encoder parameters ``W1, b1, W2, b2`` (Glorot-scaled Gaussian weights)."""
    return {
        "W1": rng.standard_normal((n_in, n_hidden)) / np.sqrt(n_in),
        "b1": np.zeros(n_hidden),
        "W2": rng.standard_normal((n_hidden, n_out)) / np.sqrt(n_hidden),
        "b2": np.zeros(n_out),
    }


def encode(params, x):
    """Unit-norm embeddings ``z = h / |h|`` with ``h = tanh(x W1 + b1) W2 + b2``; and a cache."""
    a = np.tanh(x @ params["W1"] + params["b1"])
    h = a @ params["W2"] + params["b2"]
    norm = np.linalg.norm(h, axis=1, keepdims=True)
    z = h / norm
    return z, (x, a, z, norm)


def encode_backward(params, cache, dz):
    """Gradients of the encoder parameters given ``dz = dLoss/dz``."""
    x, a, z, norm = cache
    # the projection removes the radial part: normalisation is blind to the length of h
    dh = (dz - z * (z * dz).sum(axis=1, keepdims=True)) / norm
    da = dh @ params["W2"].T
    dpre = da * (1.0 - a**2)
    return {"W1": x.T @ dpre, "b1": dpre.sum(axis=0), "W2": a.T @ dh, "b2": dh.sum(axis=0)}


def _log_softmax(s, axis):
    s = s - s.max(axis=axis, keepdims=True)
    return s - np.log(np.exp(s).sum(axis=axis, keepdims=True))


def info_nce(z_u, z_v, temperature):
    """Symmetric InfoNCE of paired unit embeddings and its gradients ``(dz_u, dz_v)``.

    Parameters
    ----------
    z_u, z_v : (B, D) arrays
        Embeddings of the two views; row ``i`` of each is the positive pair.
    temperature : float
        ``tau``; similarities are cosines divided by it.

    Returns
    -------
    loss : float
    dz_u, dz_v : (B, D) arrays
    """
    b = z_u.shape[0]
    s = z_u @ z_v.T / temperature
    log_p_rows = _log_softmax(s, axis=1)
    log_p_cols = _log_softmax(s, axis=0)
    diag = np.arange(b)
    loss = -(log_p_rows[diag, diag].sum() + log_p_cols[diag, diag].sum()) / (2 * b)
    eye = np.eye(b)
    ds = (np.exp(log_p_rows) - eye + np.exp(log_p_cols) - eye) / (2 * b)
    return float(loss), ds @ z_v / temperature, ds.T @ z_u / temperature


def contrastive_loss(params, x_u, x_v, temperature):
    """InfoNCE of the encoder on a batch of view pairs; returns (loss, parameter gradients)."""
    z_u, cache_u = encode(params, x_u)
    z_v, cache_v = encode(params, x_v)
    loss, dz_u, dz_v = info_nce(z_u, z_v, temperature)
    g_u = encode_backward(params, cache_u, dz_u)
    g_v = encode_backward(params, cache_v, dz_v)
    return loss, {k: g_u[k] + g_v[k] for k in g_u}


def alignment_loss(params, x_u, x_v):
    """A per-example loss for contrast: ``mean_i |z(u_i) - z(v_i)|^2`` and its gradients."""
    z_u, cache_u = encode(params, x_u)
    z_v, cache_v = encode(params, x_v)
    diff = z_u - z_v
    b = len(x_u)
    g_u = encode_backward(params, cache_u, 2 * diff / b)
    g_v = encode_backward(params, cache_v, -2 * diff / b)
    return float((diff**2).sum() / b), {k: g_u[k] + g_v[k] for k in g_u}


def augment(images, rng, max_shift=1, noise=0.1, drop=0.2):
    """Random views of 8x8 digits in [0, 1]: a shift of up to ``max_shift`` pixels, pixel
    dropout with probability ``drop`` and additive Gaussian noise; returns (N, 64)."""
    n = len(images)
    imgs = images.reshape(n, 8, 8)
    pad = np.pad(imgs, ((0, 0), (max_shift, max_shift), (max_shift, max_shift)))
    dy, dx = rng.integers(0, 2 * max_shift + 1, size=(2, n))
    rows = dy[:, None] + np.arange(8)
    cols = dx[:, None] + np.arange(8)
    shifted = pad[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]
    keep = rng.random(shifted.shape) >= drop
    return (shifted * keep + noise * rng.standard_normal(shifted.shape)).reshape(n, 64)


def accumulated_update(loss_fn, params, x_u, x_v, n_micro):
    """The update that ``optim.accumulate(optim.sgd(1), n_micro)`` makes from ``n_micro``
    equal micro-batches of the pairs, as a flat vector (minus the averaged gradient)."""
    opt = optim.accumulate(optim.sgd(1.0), every_k=n_micro)
    state = opt.init(params)
    for part_u, part_v in zip(np.array_split(x_u, n_micro), np.array_split(x_v, n_micro)):
        updates, state = opt.update(loss_fn(params, part_u, part_v)[1], state, params)
    return np.concatenate([updates[k].ravel() for k in sorted(updates)])


def _flat(tree):
    return np.concatenate([tree[k].ravel() for k in sorted(tree)])


def linear_probe_accuracy(train_feats, train_labels, test_feats, test_labels, ridge=1e-3):
    """Test accuracy of a ridge least-squares linear classifier fitted on one-hot labels."""
    a = np.hstack([train_feats, np.ones((len(train_feats), 1))])
    targets = np.eye(train_labels.max() + 1)[train_labels]
    w = np.linalg.solve(a.T @ a + ridge * len(a) * np.eye(a.shape[1]), a.T @ targets)
    pred = np.hstack([test_feats, np.ones((len(test_feats), 1))]) @ w
    return float((pred.argmax(axis=1) == test_labels).mean())


def _unit_rows(f):
    return f / np.linalg.norm(f, axis=1, keepdims=True)


def split_digits(rng):
    """``digits`` scaled to [0, 1], shuffled with ``rng``; a quarter held out.

    Returns (x_train, y_train, x_test, y_test).
    """
    x, y = load_digits()
    x = x / 16.0
    order = rng.permutation(len(x))
    n_test = len(x) // 4
    return x[order[n_test:]], y[order[n_test:]], x[order[:n_test]], y[order[:n_test]]


def train_encoder(params, x_train, n_steps, batch, temperature, rng, learning_rate=1e-2):
    """Adam on InfoNCE over fresh pairs of augmented views; returns (params, per-step losses)."""
    opt = optim.adam(learning_rate)
    state = opt.init(params)
    history = []
    for _ in range(n_steps):
        idx = rng.choice(len(x_train), size=batch, replace=False)
        loss, grads = contrastive_loss(
            params, augment(x_train[idx], rng), augment(x_train[idx], rng), temperature
        )
        updates, state = opt.update(grads, state, params)
        params = optim.apply_updates(params, updates)
        history.append(loss)
    return params, history


def accumulation_check(params, x, temperature, rng, n_micro=4):
    """InfoNCE and a per-example loss, each accumulated over ``n_micro`` micro-batches of ``x``.

    Returns the metrics comparing each with its full-batch gradient (relative difference,
    and cosine for InfoNCE) and InfoNCE's full-batch and mean micro-batch losses.
    """
    x_u, x_v = augment(x, rng), augment(x, rng)
    nce = lambda p, a, b: contrastive_loss(p, a, b, temperature)  # noqa: E731
    full_nce = -_flat(nce(params, x_u, x_v)[1])
    acc_nce = accumulated_update(nce, params, x_u, x_v, n_micro)
    full_align = -_flat(alignment_loss(params, x_u, x_v)[1])
    acc_align = accumulated_update(alignment_loss, params, x_u, x_v, n_micro)
    micro_loss = float(np.mean([nce(params, a, b)[0] for a, b in
                                zip(np.array_split(x_u, n_micro), np.array_split(x_v, n_micro))]))
    return {
        "accumulated_vs_full_rel_diff": float(np.linalg.norm(acc_nce - full_nce) / np.linalg.norm(full_nce)),
        "accumulated_vs_full_cosine": float(
            full_nce @ acc_nce / (np.linalg.norm(full_nce) * np.linalg.norm(acc_nce))
        ),
        "full_batch_loss": nce(params, x_u, x_v)[0],
        "mean_micro_batch_loss": micro_loss,
        "per_example_loss_accumulation_rel_diff": float(
            np.linalg.norm(acc_align - full_align) / np.linalg.norm(full_align)
        ),
    }


def plot(out_dir, history, batch, temperature, metrics, test_views, y_test):
    """Training curve, accumulation error bars, and PCA scatters of ``test_views``.

    ``test_views`` maps a name to (unit-norm test features, probe accuracy), in panel order.
    """
    fig, axes = new_figure(ncols=4, size=(4.4, 4.0))
    ax = axes[0, 0]
    ax.plot(history, lw=0.8)
    ax.axhline(np.log(batch), color="k", ls=":", label=f"log B = {np.log(batch):.2f} (chance)")
    ax.set_xlabel("Adam step")
    ax.set_ylabel("InfoNCE loss")
    ax.set_title(f"training, B={batch}, τ={temperature}")
    ax.legend()
    ax = axes[0, 1]
    errs = [metrics["accumulated_vs_full_rel_diff"], max(metrics["per_example_loss_accumulation_rel_diff"], 1e-17)]
    ax.bar(["InfoNCE", "per-example\nalignment"], errs, color=["C3", "C2"])
    ax.set_yscale("log")
    ax.set_ylabel("relative gradient difference")
    ax.set_title("4 micro-batches vs one batch")
    for ax, (name, (z, acc)) in zip(axes[0, 2:], test_views.items()):
        centred = z - z.mean(axis=0)
        pcs = np.linalg.svd(centred, full_matrices=False)[2][:2]
        xy = centred @ pcs.T
        sc = ax.scatter(xy[:, 0], xy[:, 1], c=y_test, cmap="tab10", s=6)
        ax.set_title(f"{name}, d={z.shape[1]}\nlinear probe accuracy {acc:.2f}")
        ax.set_xlabel("PC 1")
        ax.set_ylabel("PC 2")
    fig.colorbar(sc, ax=axes[0, 3], label="digit")
    save_figure(fig, out_dir, "contrastive.png")


def run(out_dir: Path, quick: bool = False, seed: int = 0) -> dict:
    """Show the InfoNCE facts, train an encoder on digits and probe it."""
    rng = np.random.default_rng(seed)
    x_train, y_train, x_test, y_test = split_digits(rng)
    dim, hidden, temperature = 8, 64, 0.2
    batch = 128
    params = init_encoder(64, hidden, dim, rng)

    # log B at equal similarities: a constant encoder (zero weights) maps everything to one point
    const = {k: np.zeros_like(v) for k, v in params.items()}
    const["b2"] = rng.standard_normal(dim)
    equal_loss, _ = contrastive_loss(const, x_train[:batch], x_train[:batch], temperature)

    # random-projection baselines of the same dimension
    proj = rng.standard_normal((64, dim))
    random_probe = linear_probe_accuracy(_unit_rows(x_train @ proj), y_train, _unit_rows(x_test @ proj), y_test)
    untrained_probe = linear_probe_accuracy(encode(params, x_train)[0], y_train, encode(params, x_test)[0], y_test)

    params, history = train_encoder(params, x_train, 800 if quick else 4000, batch, temperature, rng)
    z_train, z_test = encode(params, x_train)[0], encode(params, x_test)[0]
    # micro-batch accumulation against the full batch, at the trained encoder
    accumulation = accumulation_check(params, x_train[:batch], temperature, rng)
    learned_probe = linear_probe_accuracy(z_train, y_train, z_test, y_test)

    metrics = {
        "equal_similarity_loss": equal_loss,
        "log_batch_size": float(np.log(batch)),
        **accumulation,
        "initial_loss": float(np.mean(history[:20])),
        "final_loss": float(np.mean(history[-20:])),
        "probe_accuracy_learned": learned_probe,
        "probe_accuracy_random_projection": random_probe,
        "probe_accuracy_untrained_encoder": untrained_probe,
    }
    for k, v in metrics.items():
        print(f"{k}: {v}")
    plot(out_dir, history, batch, temperature, metrics, {
        "random projection": (_unit_rows(x_test @ proj), random_probe),
        "InfoNCE embedding": (z_test, learned_probe),
    }, y_test)
    return metrics
