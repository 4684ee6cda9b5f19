"""Splitting a consensus map into classes along its leading directions of variability.

Given a consensus map ``F`` and a pose per particle, the residual of image ``i`` is
``r_i = y_i - A_i F`` with ``A_i`` the image's forward model (slice, shift, CTF). If the
particles come from maps ``F + sum_j c_ij D_j``, the residuals carry ``A_i D c_i`` plus
noise, so the ``D_j`` are the leading eigenvectors of the covariance of the
backprojected residuals, ``sum_i A_i^T W r_i r_i^T W A_i`` (the 3D covariance of
Penczek et al. 2006, J. Struct. Biol. 154:168, and of Anden & Singer 2018, SIAM J.
Imaging Sci. 11:1441). Noise adds about the data term's own Hessian
``H = sum_i A_i^T W A_i`` to that operator, so we solve the generalised problem
``Cov D = mu H D`` by subspace iteration, each step preconditioned by ``H^{-1}``: the
noise then has a flat spectrum and real variability stands above it.

Each particle's coordinates ``c_i`` come from least squares on its own projections of
the ``D_j``; k-means on them gives the first classes, and the class maps start at
``F + mean(c) D``. Expectation-maximisation over classes and local poses then takes
over (:meth:`cryorecon.reconstruct.abinitio.handover.Handover.full_pass`).

Why not K maps by SGD from K random starts? Independent starts converge to maps in
different frames and hands, and a split of the batch that balances the classes follows
views as readily as it follows structure; on a complex with and without a subunit it
stalled near 80% correct. A shared consensus frame makes the difference between the
classes a small, linear signal that this subspace finds directly.
"""
from __future__ import annotations

import logging

import numpy as np
from scipy.cluster.vq import kmeans2

from ..forward import fourier, projector
from ..backend import array_module, to_host

log = logging.getLogger(__name__)


def _forward_rows(f_pad, rotations, coords, phases, ctf, pad):
    """``A_i F`` on the band for each image: CTF x shift phase x trilinear slice."""
    return ctf * phases * projector.extract(f_pad, rotations, coords, pad=pad)


def variability_subspace(batch_data, f_pad, poses, noise, band, n_vectors: int, *, mask, band_mask, regulariser,
                         pad: int = 2, n_iter: int = 8, batch: int = 256, seed: int = 0):
    """Leading generalised eigenvectors of the residual covariance, and each particle's coordinates.

    Parameters
    ----------
    batch_data : callable
        ``batch_data(idx, band) -> (y, ctf)``: the image coefficients and CTF of
        particles ``idx`` on ``band``, on the device (e.g.
        :meth:`cryorecon.reconstruct.abinitio.Workspace.batch_data`).
    f_pad : (pL)^3 complex
        Padded transform of the consensus map.
    poses : dict
        ``rotations`` (N, 3, 3) and ``shifts`` (N, 2, working px) of every particle.
    noise : likelihood.NoiseModel
    band : likelihood.Band
        The band the split looks at.
    n_vectors : int
        Directions to find (``K - 1`` for ``K`` classes).
    mask : (L, L, L) array
        Real-space mask the directions live in.
    band_mask : (pL)^3 array
        The band on the padded grid (1 inside, 0 outside).
    regulariser : callable
        ``regulariser(curvature) -> lam``, the Tikhonov term added to the Hessian
        before dividing by it (per voxel of the padded grid).
    pad : int
        Padding factor of ``f_pad``.
    n_iter : int
        Subspace iterations (each one pass over the data).

    Returns
    -------
    vectors : (n_vectors, L, L, L) float32
        Orthonormal (in real space) directions of variability, inside the mask.
    coords : (N, n_vectors) float64
        Each particle's least-squares coefficients along them.
    """
    xp = array_module(f_pad)
    mask = np.asarray(mask)
    L = mask.shape[0]
    n = len(poses["rotations"])
    rng = np.random.default_rng(seed)
    mask = mask.ravel()
    w = noise.weights(band).astype(np.float32)
    vectors = _orthonormal(rng.standard_normal((n_vectors, L**3)) * mask)
    hessian = None
    for it in range(n_iter):
        f_dirs = [projector.volume_ft(xp.asarray(v.reshape(L, L, L), dtype=xp.float32), pad=pad) for v in vectors]
        acc = [xp.zeros(f_pad.shape, dtype=f_pad.dtype) for _ in vectors]
        first = hessian is None
        if first:
            hessian = xp.zeros(f_pad.shape, dtype=f_pad.real.dtype)
        for idx, rot, ctf, wr, proj in _batches(batch_data, f_pad, f_dirs, poses, band, w, pad, batch):
            a = _inner(proj, wr)  # (B, n) <A_i D_j, W r_i>
            for j in range(len(vectors)):
                acc[j] += projector.backproject(a[:, j, None] * wr, rot, band.coords, f_pad.shape, pad=pad)
            if first:
                hessian += projector.backproject_weights(w * ctf * ctf, rot, band.coords, f_pad.shape, pad=pad)
        lam = regulariser(hessian)
        new = []
        for j in range(len(vectors)):
            step = projector.volume_ft_adjoint(band_mask * acc[j] / (hessian + lam), L, pad=pad)
            new.append(to_host(step).ravel() * mask)
        new = _orthonormal(np.stack(new))
        change = 1.0 - float(np.min(np.abs(np.linalg.svd(new @ vectors.T, compute_uv=False))))
        vectors = new
        log.info("variability subspace iteration %d: change %.3g", it + 1, change)
        if change < 1e-4:
            break
    f_dirs = [projector.volume_ft(xp.asarray(v.reshape(L, L, L), dtype=xp.float32), pad=pad) for v in vectors]
    coords = np.zeros((n, len(vectors)))
    for idx, rot, ctf, wr, proj in _batches(batch_data, f_pad, f_dirs, poses, band, w, pad, batch):
        a = to_host(_inner(proj, wr)).astype(np.float64)
        gram = to_host(_gram(proj, w * ctf * ctf)).astype(np.float64)  # (B, n, n)
        ridge = 1e-6 * np.trace(gram, axis1=1, axis2=2)[:, None, None] / len(vectors) + 1e-30
        coords[idx] = np.linalg.solve(gram + ridge * np.eye(len(vectors)), a[:, :, None])[:, :, 0]
    return vectors.reshape(-1, L, L, L).astype(np.float32), coords


def _batches(batch_data, f_pad, f_dirs, poses, band, w, pad, batch):
    """Per batch: indices, rotations, CTF, ``A_i^* W r_i`` rows (slice domain), and slices of the ``D_j`` (B, n, M)."""
    xp = array_module(f_pad)
    n = len(poses["rotations"])
    for start in range(0, n, batch):
        idx = np.arange(start, min(start + batch, n))
        y, ctf = batch_data(idx, band)
        rot = xp.asarray(poses["rotations"][idx], dtype=xp.float32)
        phases = fourier.shift_phase(band.coords, band.L, xp.asarray(poses["shifts"][idx], dtype=xp.float32), dtype=y.dtype)
        resid = y - _forward_rows(f_pad, rot, band.coords, phases, ctf, pad)
        wr = w * ctf * xp.conj(phases) * resid  # the slice-domain adjoint of the forward model
        proj = xp.stack([projector.extract(f, rot, band.coords, pad=pad) for f in f_dirs], axis=1)
        yield idx, rot, ctf, wr, proj


def _inner(proj, wr):
    """``Re sum_k conj(P_ij(k)) wr_i(k)``: (B, n)."""
    xp = array_module(proj)
    return xp.sum(proj.real * wr.real[:, None] + proj.imag * wr.imag[:, None], axis=-1)


def _gram(proj, wc2):
    """Per image ``Re <A_i D_j, W A_i D_l>`` from bare slices and ``w C^2`` (B, M); phases cancel."""
    xp = array_module(proj)
    pw = proj * wc2[:, None]
    return (xp.matmul(pw.real, xp.swapaxes(proj.real, 1, 2)) + xp.matmul(pw.imag, xp.swapaxes(proj.imag, 1, 2)))


def _orthonormal(rows):
    """Rows made orthonormal (Gram-Schmidt by QR)."""
    q, _ = np.linalg.qr(np.asarray(rows, dtype=np.float64).T)
    return q.T


def split_classes(coords, n_classes: int, seed: int = 0):
    """Initial classes by k-means (k-means++ start, best of several) on the coordinates.

    Returns
    -------
    labels : (N,) int
    centres : (n_classes, n) float64
    """
    rng = np.random.default_rng(seed)
    scale = coords.std(axis=0)
    scale[scale == 0] = 1.0
    points = coords / scale
    best = None
    for _ in range(8):
        centres, labels = kmeans2(points, n_classes, minit="++", seed=rng)
        inertia = float(np.sum((points - centres[labels]) ** 2))
        if np.bincount(labels, minlength=n_classes).min() > 0 and (best is None or inertia < best[0]):
            best = (inertia, labels, centres)
    if best is None:
        raise RuntimeError("k-means left a class empty on every restart")
    _, labels, centres = best
    return labels, centres * scale
