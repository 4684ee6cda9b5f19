"""Ab initio reconstruction in 2-D: an image from noisy 1-D projections at unknown angles.

A flat analogue of the package's 3-D engine, small enough to watch. The unknown is an
``L x L`` image ``x``; each observation is a 1-D tomographic projection (line integrals)
of it at an unknown angle, plus white Gaussian noise of variance ``sigma^2``. The image
is recovered by mini-batch SGD on the negative marginal log-likelihood, with the angle
of every projection marginalised over a grid of ``G`` angles:

``-log p(y_i | x) = -log (1/G) sum_g exp(-|y_i - P_g x|^2 / (2 sigma^2))``.

Each piece maps onto the 3-D engine (``DESIGN.md``, "Ab initio by SGD"):

- ``P_g`` (line integrals at angle g) is the 2-D counterpart of slice extraction
  ``P_r F`` at rotation r (a 1-D projection is a central line of the 2-D Fourier
  transform, just as a 2-D projection is a central slice of the 3-D one);
- the angle grid plays the SO(3) grid; the pose scores
  ``E[i, g] = (|y_i|^2 - 2 y_i . P_g x + |P_g x|^2) / (2 sigma^2)`` are the same
  expanded Gaussian error, computed as one GEMM over (images, pixels) x (pixels, angles);
- the posterior over angles is ``softmax(-E)``, and the gradient is the
  posterior-weighted adjoint (backprojection) of the residuals, ``P_g^T (P_g x - y_i)``;
- the step goes through :mod:`cryorecon.optim` (Adam with a cosine schedule here);
- the noise model starts inflated and anneals to the true ``sigma`` (early posteriors
  are broad, so no projection commits to a wrong angle before the map has formed), and
  the gradient is band-limited with a widening cut-off: frequency marching;
- non-negativity and a circular mask act as priors.

As in 3-D, the answer is determined only up to a global rotation and a mirror (the
projections of a mirrored image are the mirrored projections at mirrored angles), so the
result is compared with the truth after aligning over both.

References: Punjani, Rubinstein, Fleet & Brubaker (2017), "cryoSPARC: algorithms for
rapid unsupervised cryo-EM structure determination", Nature Methods 14; Basu & Bresler
(2000), "Uniqueness of tomography with unknown view angles", IEEE Trans. Image Process. 9.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from cryorecon import optim
from cryorecon.backend import array_module
from cryorecon.demos._common import new_figure, save_figure

DESCRIPTION = ("2-D ab initio: recover an image from noisy 1-D projections at unknown angles "
               "by SGD with the angle marginalised (posterior-weighted backprojection)")


def phantom(size_px: int) -> np.ndarray:
    """An asymmetric test image (ellipses, blobs and an L-shaped bar), float32, inside
    the inscribed circle so that every projection sees all of it."""
    from scipy import ndimage

    c = size_px // 2
    y, x = np.mgrid[:size_px, :size_px] - c
    r = size_px / 2

    def ellipse(cx, cy, a, b, theta, value):
        ct, st = np.cos(theta), np.sin(theta)
        u = (x - cx * r) * ct + (y - cy * r) * st
        v = -(x - cx * r) * st + (y - cy * r) * ct
        return value * ((u / (a * r)) ** 2 + (v / (b * r)) ** 2 <= 1)

    # A pear-shaped body (an ellipse and a lobe) with off-centre features: no rotation
    # or mirror symmetry, not even approximately, which ab initio would trap on.
    img = ellipse(0.08, 0.0, 0.55, 0.42, 0.3, 0.6)
    img = np.maximum(img, ellipse(-0.45, -0.2, 0.25, 0.25, 0.0, 0.6))
    img = img + ellipse(0.25, -0.1, 0.18, 0.10, 0.0, 0.8)
    img = img + ellipse(-0.25, 0.15, 0.12, 0.20, 0.5, -0.3)
    img = img + ellipse(0.05, 0.30, 0.08, 0.08, 0.0, 0.9)
    bar = (x > -0.5 * r) & (x < -0.35 * r) & (y > -0.55 * r) & (y < -0.1 * r)
    foot = (x > -0.5 * r) & (x < -0.15 * r) & (y > -0.55 * r) & (y < -0.42 * r)
    img = img + 0.7 * (bar | foot)
    return ndimage.gaussian_filter(img, 0.7).astype(np.float32)


def projection_matrix(size_px: int, angles_deg) -> np.ndarray:
    """Line-integral operator for each angle, as a dense ``(G, L, L*L)`` float32 array.

    Detector bin ``s`` at angle ``theta`` integrates the image along the ray
    ``s (cos, sin) + t (-sin, cos)``, ``t`` in unit steps over the box, with bilinear
    interpolation; coordinates are in pixels from the centre ``L//2``, and the image is
    indexed ``img[y, x]``. The adjoint (backprojection) is the transpose.
    """
    L = int(size_px)
    c = L // 2
    s = np.arange(L) - c
    S, T = np.meshgrid(s, s, indexing="ij")  # detector bin, position along the ray
    rows = np.broadcast_to(np.arange(L)[:, None], S.shape)
    theta = np.deg2rad(np.asarray(angles_deg, dtype=np.float64))
    A = np.zeros((len(theta), L, L * L), dtype=np.float64)
    for g, th in enumerate(theta):
        px = S * np.cos(th) - T * np.sin(th) + c
        py = S * np.sin(th) + T * np.cos(th) + c
        x0, y0 = np.floor(px).astype(np.int64), np.floor(py).astype(np.int64)
        fx, fy = px - x0, py - y0
        for dx, dy, w in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)),
                          (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):
            xi, yi = x0 + dx, y0 + dy
            ok = (xi >= 0) & (xi < L) & (yi >= 0) & (yi < L)
            np.add.at(A[g], (rows[ok], (yi * L + xi)[ok]), w[ok])
    return A.astype(np.float32)


def simulate_projections(image, n_images: int, snr: float, rng: np.random.Generator):
    """Noisy projections at uniformly random angles.

    Returns ``(images (n, L) float32, angles_deg (n,), sigma)`` where ``sigma`` is the
    noise standard deviation, set so that signal variance / noise variance = ``snr``.
    """
    L = image.shape[0]
    angles_deg = rng.uniform(0.0, 360.0, n_images)
    clean = projection_matrix(L, angles_deg) @ image.ravel()
    sigma = float(clean.std() / np.sqrt(snr))
    noisy = clean + sigma * rng.standard_normal(clean.shape)
    return noisy.astype(np.float32), angles_deg, sigma


def marginal_nll_and_grad(x, images, A, sigma2: float):
    """Mean negative marginal log-likelihood of a batch over the angle grid, its gradient.

    Parameters
    ----------
    x : (L*L,) array
        Current image, flattened.
    images : (B, L) array
        The batch of projections.
    A : (G*L, L*L) array
        Stacked projection operators of the angle grid.
    sigma2 : float
        Noise variance of the likelihood.

    Returns
    -------
    nll : float
        ``mean_i -log mean_g exp(-E[i, g])``.
    grad : (L*L,) array
        ``mean_i sum_g w[i, g] P_g^T (P_g x - y_i) / sigma2``, the posterior-weighted
        backprojection (the derivative of the softmax weights cancels exactly).
    posterior : (B, G) array
        ``w = softmax(-E)`` per image.
    """
    xp = array_module(x, images, A)
    B, L = images.shape
    G = A.shape[0] // L
    proj = (A @ x).reshape(G, L)
    # The expanded error: two GEMM-shaped terms and a norm, as in the 3-D pose search.
    E = ((images * images).sum(axis=1)[:, None] - 2.0 * (images @ proj.T)
         + (proj * proj).sum(axis=1)[None, :]) / (2.0 * sigma2)
    E_min = E.min(axis=1, keepdims=True)
    w = xp.exp(-(E - E_min))
    Z = w.sum(axis=1, keepdims=True)
    w = w / Z
    nll = float(xp.mean(E_min[:, 0] - xp.log(Z[:, 0] / G)))
    resid = (w.sum(axis=0)[:, None] * proj - w.T @ images) / (sigma2 * B)
    grad = A.T @ resid.reshape(-1)
    return nll, grad, w


def _lowpass(img, sigma_px: float, xp):
    """Gaussian low-pass in Fourier space (the band limit of frequency marching)."""
    if sigma_px <= 0:
        return img
    L = img.shape[0]
    k = xp.fft.fftfreq(L)
    kr = xp.fft.rfftfreq(L)
    k2 = k[:, None] ** 2 + kr[None, :] ** 2
    filt = xp.exp(-2.0 * (np.pi * sigma_px) ** 2 * k2)
    return xp.fft.irfft2(xp.fft.rfft2(img) * filt, s=img.shape).astype(img.dtype)


def align_correlation(recon, truth, mask=None):
    """Best Pearson correlation of ``recon`` with ``truth`` over rotations and a mirror.

    A 6-degree search, refined to 1 degree around the best, for the image and its
    mirror (x -> -x). Returns ``(corr, angle_deg, mirrored, aligned_image)``.
    """
    from scipy import ndimage

    recon = np.asarray(recon, dtype=np.float64)
    truth = np.asarray(truth, dtype=np.float64)
    if mask is None:
        mask = np.ones(truth.shape, dtype=bool)

    def corr(im, a):
        r = ndimage.rotate(im, a, reshape=False, order=1)
        return float(np.corrcoef(r[mask], truth[mask])[0, 1])

    best = (-2.0, 0.0, False)
    for mirrored in (False, True):
        im = recon[:, ::-1] if mirrored else recon
        coarse = np.arange(0.0, 360.0, 6.0)
        a0 = coarse[int(np.argmax([corr(im, a) for a in coarse]))]
        for a in np.arange(a0 - 6.0, a0 + 6.5, 1.0):
            cc = corr(im, a)
            if cc > best[0]:
                best = (cc, float(a % 360.0), mirrored)
    cc, a, mirrored = best
    im = recon[:, ::-1] if mirrored else recon
    return cc, a, mirrored, ndimage.rotate(im, a, reshape=False, order=1)


def reconstruct(images, sigma: float, A, n_iter: int, batch_size: int, rng: np.random.Generator,
                learning_rate: float = 0.01, anneal: float = 20.0, anneal_fraction: float = 0.4,
                march_sigma_px: float = 2.0, x0=None, callback=None, optimizer=None):
    """Ab initio SGD with the angle marginalised; returns the image and the loss history.

    The noise variance of the likelihood starts at ``anneal * sigma^2`` and falls
    linearly to ``sigma^2`` over the first 40% of the iterations; the gradient is
    low-passed with a Gaussian of ``march_sigma_px`` pixels that narrows to nothing
    over the first half. The default start ``x0`` is seeded random smooth density with
    the right mean.
    """
    xp = array_module(images)
    n, L = images.shape
    yy, xx = np.mgrid[:L, :L] - L // 2
    mask = (np.hypot(yy, xx) < L / 2 - 1).astype(np.float32)
    mean_density = float(images.sum(axis=1).mean()) / mask.sum()
    if x0 is None:
        # Random smooth density, like cryoSPARC's random start. A symmetric start (a
        # disc) would be a trap: a centrosymmetric image gives equal posteriors at
        # theta and theta + 180, so its gradient is centrosymmetric too.
        blobs = _lowpass(rng.standard_normal((L, L)), 2.0, np)
        x0 = np.maximum(mean_density * (1.0 + blobs / blobs.std()), 0.0) * mask
    x = xp.asarray(x0.astype(np.float32).ravel())
    mask_flat = xp.asarray(mask.ravel())
    opt = optimizer or optim.adam(optim.schedules.cosine_decay(learning_rate, n_iter))
    state = opt.init(x)
    history = []
    for it in range(n_iter):
        frac = it / n_iter
        sigma2 = sigma ** 2 * max(1.0, anneal * (1.0 - frac / anneal_fraction))
        batch = xp.asarray(rng.choice(n, size=batch_size, replace=False))
        nll, grad, _ = marginal_nll_and_grad(x, images[batch], A, sigma2)
        band = march_sigma_px * max(0.0, 1.0 - frac / 0.5)
        # Curvature scales as 1/sigma2: multiplying by sigma2 keeps the step size
        # steady while the noise model anneals (a scalar preconditioner).
        grad = _lowpass(grad.reshape(L, L), band, xp).reshape(-1) * np.float32(sigma2)
        updates, state = opt.update(grad, state, x)
        x = optim.apply_updates(x, updates)
        # Priors: density is non-negative and lives inside the circle.
        x = xp.maximum(x * mask_flat, 0.0)
        history.append(nll)
        if callback is not None:
            callback(it, x)
    return x.reshape(L, L), np.asarray(history)


def run(out_dir: Path, quick: bool = False, seed: int = 0) -> dict:
    """Simulate, reconstruct ab initio, align to the truth; plot and return metrics."""
    rng = np.random.default_rng(seed)
    L, n_images, n_angles, n_iter = (40, 1000, 90, 400) if quick else (48, 3000, 120, 1000)
    snr, batch_size = 2.0, 64
    truth = phantom(L)
    images, angles_deg, sigma = simulate_projections(truth, n_images, snr, rng)
    grid_deg = np.arange(n_angles) * 360.0 / n_angles
    A = projection_matrix(L, grid_deg).reshape(n_angles * L, L * L)

    yy, xx = np.mgrid[:L, :L] - L // 2
    mask = np.hypot(yy, xx) < L / 2 - 1
    checkpoints = set(np.linspace(0, n_iter - 1, 9).astype(int).tolist())
    trace = []

    def watch(it, x):
        if it in checkpoints:
            trace.append((it + 1, align_correlation(np.asarray(x).reshape(L, L), truth, mask)[0]))

    x, history = reconstruct(images, sigma, A, n_iter, batch_size, rng, callback=watch)
    x = np.asarray(x)
    corr, angle, mirrored, aligned = align_correlation(x, truth, mask)

    # Angle recovery: posterior mode of each projection vs its true angle, after the
    # global alignment found above (mirror flips the sense of rotation).
    _, _, post = marginal_nll_and_grad(x.ravel(), images[:500], A, sigma ** 2)
    mode_deg = grid_deg[np.argmax(post, axis=1)]
    est = (-mode_deg if mirrored else mode_deg)
    diff = (est - angles_deg[:500] + 180.0) % 360.0
    offset = np.rad2deg(np.angle(np.mean(np.exp(1j * np.deg2rad(diff)))))
    err = np.abs((diff - offset + 180.0) % 360.0 - 180.0)

    metrics = {
        "aligned_correlation": corr,
        "initial_correlation": trace[0][1] if trace else float("nan"),
        "mirrored": float(mirrored),
        "median_angle_error_deg": float(np.median(err)),
        "grid_step_deg": 360.0 / n_angles,
        "final_nll": float(np.mean(history[-20:])),
        "snr": snr,
        "n_images": float(n_images),
    }
    for k, v in metrics.items():
        print(f"{k}: {v:.4g}")

    fig, ax = new_figure(ncols=4, nrows=1, size=(3.2, 3.0))
    ax = ax[0]
    ax[0].imshow(truth, cmap="gray")
    ax[0].set_title("truth")
    ax[1].imshow(images[:80], cmap="gray", aspect="auto")
    ax[1].set_title(f"80 of {n_images} projections\n(SNR {snr:g}, angles unknown)")
    ax[1].set_xlabel("detector bin")
    ax[2].imshow(aligned, cmap="gray")
    ax[2].set_title(f"SGD result, aligned\ncorr {corr:.3f}")
    it_, cc_ = zip(*trace) if trace else ((), ())
    ax[3].plot(np.arange(1, len(history) + 1), history, lw=0.6, color="0.5", label="batch -log p")
    ax[3].set_xlabel("iteration")
    ax[3].set_ylabel("marginal NLL")
    twin = ax[3].twinx()
    twin.plot(it_, cc_, "o-", color="C3", label="aligned corr")
    twin.set_ylim(0, 1)
    twin.set_ylabel("aligned correlation", color="C3")
    ax[3].set_title("loss and correlation")
    for a in ax[:3]:
        a.set_xticks([]) if a is not ax[1] else None
        a.set_yticks([])
    fig.tight_layout()
    save_figure(fig, out_dir, "cryoem_sgd.png")
    return metrics
