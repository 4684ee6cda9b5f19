"""One mini-batch of the reconstruction engine: pose search, posterior, gradient.

Shared by ab initio (stochastic steps), the full-data hand-over and the true-pose oracle,
so that all three see exactly the same forward model and likelihood.

A mini-batch is searched in two stages, branch-and-bound in spirit (cryoSPARC, Punjani
et al. 2017; cryoDRGN): every rotation of a coarse SO(3) grid and every shift of a
coarse shift grid is scored on the low-frequency part of the band only; the best few
candidates per image are then rescored on the whole band over a finer local grid of
rotations and shifts around each. The posterior is the softmax over those local poses;
the gradient and curvature are backprojected from every pose of non-negligible weight.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..forward import fourier, projector
from ..scoring import likelihood, pose_search
from ..backend import array_module
from ..geometry.so3_grid import local_grid, so3_grid
from ..geometry.shifts import shift_grid


@dataclass
class SearchGrids:
    """Rotation and shift grids of the two search stages, on the device."""

    rotations: object  # (R, 3, 3) coarse global grid
    coarse_step_deg: float
    shifts: object  # (T, 2) coarse shifts in working pixels
    shift_step_px: float
    local_rotations: object  # (n, 3, 3) small rotations around the identity
    local_shifts: object  # (t, 2) small offsets around a candidate's shift
    shift_sigma_px: float

    @classmethod
    def make(cls, xp, coarse_step_deg=15.0, max_shift_px=6.0, shift_step_px=2.0, shift_sigma_px=None, local_fraction=0.5):
        """Grids for a coarse step; the local grids step ``local_fraction`` of it."""
        rotations = so3_grid(coarse_step_deg)
        rotations = rotations[0] if isinstance(rotations, tuple) else rotations
        fine = coarse_step_deg * local_fraction
        local = local_grid(np.eye(3), fine, n_steps=1)
        local_shift = shift_grid(shift_step_px * local_fraction, shift_step_px * local_fraction) if max_shift_px > 0 else np.zeros((1, 2))
        shifts = shift_grid(max_shift_px, shift_step_px) if max_shift_px > 0 else np.zeros((1, 2))
        sigma = shift_sigma_px if shift_sigma_px is not None else max(max_shift_px / 2.0, 1.0)
        return cls(
            xp.asarray(rotations, dtype=xp.float32),
            float(coarse_step_deg),
            xp.asarray(shifts, dtype=xp.float32),
            float(shift_step_px),
            xp.asarray(local, dtype=xp.float32),
            xp.asarray(local_shift, dtype=xp.float32),
            float(sigma),
        )

    def log_prior_shift(self, shifts):
        """Gaussian prior on the origin offset, ``-|o|^2 / (2 sigma^2)``."""
        xp = array_module(shifts)
        return -xp.sum(shifts**2, axis=-1) / (2 * self.shift_sigma_px**2)


@dataclass
class BatchResult:
    """What one mini-batch contributes: loss, gradient, curvature and best poses."""

    nll: object  # 0-d array: sum over images of the marginal negative log-likelihood
    grad: list  # per class, (pL)^3 complex gradient w.r.t. the padded transform
    curvature: list  # per class, (pL)^3 real backprojected 2 w C^2
    group_grads: list | None  # per class, list of per-group gradients (adaptive batch)
    best_rotation: object  # (B, 3, 3)
    best_shift: object  # (B, 2) working pixels
    best_class: object  # (B,)
    class_probability: object  # (B, K)
    residual_power: object  # (M,) mean |Y - C S P|^2 at the best pose


@dataclass(frozen=True)
class SearchOptions:
    """How a batch is searched and how much of its posterior reaches the gradient.

    Attributes
    ----------
    n_candidates : int
        Coarse poses per image (and class) that are refined locally.
    pad : int
        Zero-padding factor of the map transforms.
    n_groups : int
        With ``n_groups >= 2``, also return the gradient of each of that many disjoint
        image groups, from which the adaptive batch size measures gradient noise.
    min_weight : float
        Posterior weights below this fraction of an image's largest are dropped.
    max_poses : int
        At most this many poses per image carry weight into the gradient: at low SNR
        the posterior is broad, and its long tail costs backprojections without
        changing the map.
    compact_rows : bool, optional
        Backproject only the rows of non-zero weight (the default on the CPU) or a
        fixed number per image (the default on a GPU; see :func:`_live_rows`).
    """

    n_candidates: int = 3
    pad: int = 2
    n_groups: int = 0
    min_weight: float = 1e-3
    max_poses: int = 24
    compact_rows: bool | None = None


@dataclass
class _Poses:
    """The poses scored for a batch: ``C`` candidates per image, each with a local grid.

    Candidates are laid out class by class, ``per_class`` consecutive slots for each
    class, so that every class's slices come from plain slicing, never from a
    data-dependent selection (which would need the host on a GPU).
    """

    rotations: object  # (B, C, n, 3, 3): candidate x local rotation
    shifts: object  # (B, C, t, 2): candidate x local shift, working pixels
    per_class: int

    @property
    def n_cand(self):
        return self.rotations.shape[1]

    @property
    def n_loc(self):
        return self.rotations.shape[2]

    @property
    def n_shift(self):
        return self.shifts.shape[2]


@dataclass
class _Scores:
    """Every (candidate, local shift, local rotation) of the batch, scored on the band."""

    y_rep: object  # (S, M) images repeated per candidate, S = B x C
    ctf_rep: object  # (S, M)
    phases: object  # (S, t, M) shift phases of each candidate's local shifts
    slices: object  # (S, n, M) nearest-neighbour slices of each candidate's rotations
    lse: object  # (B,) log-sum-exp of -score over every pose of the image
    posterior: object  # (B, C t n) weights, thresholded and capped


def evaluate_batch(
    f_pads,
    y,
    ctf,
    noise: likelihood.NoiseModel,
    band: likelihood.Band,
    grids: SearchGrids,
    k_coarse_px: float,
    options: SearchOptions = SearchOptions(),
    *,
    fixed_poses=None,
    local_poses=None,
) -> BatchResult:
    """Search poses for one mini-batch and return the posterior-weighted gradient.

    Four named steps: :func:`candidate_poses` (global coarse search, or given poses),
    :func:`score_poses` (every local pose on the whole band, posterior), the best pose
    per image (:func:`_best_poses`), and :func:`backproject_posterior` (gradient and
    curvature from the poses of non-negligible weight).

    Parameters
    ----------
    f_pads : list of (pL)^3 complex
        Padded transforms of the K class maps.
    y, ctf : (B, M)
        Image coefficients and CTF on ``band``.
    noise, band, grids
    k_coarse_px : float
        Band limit of the global coarse search.
    options : SearchOptions
    fixed_poses : (rotations (B,3,3), shifts (B,2)), optional
        Skip the search and use these poses with weight 1 (the true-pose oracle).
    local_poses : (rotations (B,3,3), shifts (B,2)), optional
        Skip the global stage: search only the local grids around these poses (local
        refinement from known poses). Every class is searched around the same pose:
        the class maps share the consensus frame.
    """
    xp = array_module(y)
    b = y.shape[0]
    n_classes = len(f_pads)
    w = noise.weights(band).astype(y.real.dtype)
    poses = candidate_poses(f_pads, y, ctf, w, band, grids, k_coarse_px, options, fixed_poses, local_poses)
    scores = score_poses(f_pads, y, ctf, w, band, grids, poses, options)
    best_rotation, best_shift, best_class, class_prob, residual_power = _best_poses(y, ctf, band, poses, scores, n_classes)
    grads, curvs, groups = backproject_posterior(f_pads, w, band, poses, scores, options)
    # a device scalar: the caller reads it when it logs, not here
    nll = -xp.sum(scores.lse) + b * float(np.log(grids.rotations.shape[0] * max(n_classes, 1)))
    return BatchResult(nll, grads, curvs, groups if options.n_groups >= 2 else None, best_rotation, best_shift, best_class, class_prob, residual_power)


def candidate_poses(f_pads, y, ctf, w, band, grids, k_coarse_px, options, fixed_poses=None, local_poses=None) -> _Poses:
    """The poses to score: given (the oracle), around given poses, or from the coarse search."""
    xp = array_module(y)
    n_classes = len(f_pads)
    if fixed_poses is not None:
        if n_classes != 1:
            raise ValueError("fixed poses (the true-pose oracle) take a single map")
        rot = xp.asarray(fixed_poses[0], dtype=xp.float32)[:, None, None]  # (B, 1, 1, 3, 3)
        sh = xp.asarray(fixed_poses[1], dtype=xp.float32)[:, None, None, :]  # (B, 1, 1, 2)
        return _Poses(rot, sh, 1)
    if local_poses is not None:
        # every class around the same pose: the class maps share the consensus frame
        rot = xp.repeat(xp.asarray(local_poses[0], dtype=xp.float32)[:, None], n_classes, axis=1)  # (B, K, 3, 3)
        sh = xp.repeat(xp.asarray(local_poses[1], dtype=xp.float32)[:, None], n_classes, axis=1)  # (B, K, 2)
        per_class = 1
    else:
        rot, sh = _coarse_candidates(f_pads, y, ctf, w, band, grids, k_coarse_px, options.n_candidates, options.pad)
        per_class = rot.shape[1] // n_classes
    # local neighbourhoods of every candidate
    rot = xp.matmul(rot[:, :, None], grids.local_rotations[None, None])  # (B, C, n, 3, 3)
    sh = sh[:, :, None, :] + grids.local_shifts[None, None]  # (B, C, t, 2)
    return _Poses(rot, sh, per_class)


def score_poses(f_pads, y, ctf, w, band, grids, poses: _Poses, options: SearchOptions) -> _Scores:
    """Score every (candidate, local shift, local rotation) on the whole band; the posterior."""
    xp = array_module(y)
    b, m = y.shape
    n_cand, n_loc, n_shift, per_class = poses.n_cand, poses.n_loc, poses.n_shift, poses.per_class
    s = b * n_cand
    y_rep = xp.repeat(y, n_cand, axis=0)
    ctf_rep = xp.repeat(ctf, n_cand, axis=0)
    shifts = poses.shifts.reshape(s, n_shift, 2)
    phases = _batched_phases(band.coords, band.L, shifts, y.dtype)
    terms = pose_search.batch_terms(y_rep, ctf_rep, w, phases)
    slices = xp.empty((b, n_cand, n_loc, m), dtype=y.dtype)
    for k in range(len(f_pads)):
        block = slice(k * per_class, (k + 1) * per_class)
        ext = projector.extract_nearest(f_pads[k], poses.rotations[:, block].reshape(-1, 3, 3), band.coords, pad=options.pad)
        slices[:, block] = ext.reshape(b, per_class, n_loc, m)
    slices = slices.reshape(s, n_loc, m)
    # float32, not TF32: with TF32 here the median pose error of 50,000 particles at 128 px
    # went from 1.2 to 6.8 deg on an H200 (neighbouring local poses differ by less than
    # the rounding of the cross term)
    err = pose_search.errors_per_image(terms, slices)  # (S, t, n)
    score = err - grids.log_prior_shift(shifts)[:, :, None]
    score_img = score.reshape(b, -1)
    lse = pose_search.logsumexp_neg(score_img)
    p = pose_search.posterior(score_img, min_weight=options.min_weight)
    p = _keep_top(p, options.max_poses)
    return _Scores(y_rep, ctf_rep, phases, slices, lse, p)


def _best_poses(y, ctf, band, poses: _Poses, scores: _Scores, n_classes):
    """Best pose, class and class probabilities per image; residual power at the best pose."""
    xp = array_module(y)
    b, m = y.shape
    n_cand, n_loc, n_shift = poses.n_cand, poses.n_loc, poses.n_shift
    p = scores.posterior
    best = xp.argmax(p, axis=1)
    per_cand = n_shift * n_loc
    c_best = best // per_cand
    t_best = (best % per_cand) // n_loc
    r_best = best % n_loc
    ar = xp.arange(b)
    best_rotation = poses.rotations[ar, c_best, r_best]
    best_shift = poses.shifts[ar, c_best, t_best]
    best_class = c_best // poses.per_class
    class_prob = p.reshape(b, n_classes, -1).sum(axis=2).astype(xp.float64)
    # residual power at the best pose, for the noise model
    best_slice = scores.slices.reshape(b, n_cand, n_loc, m)[ar, c_best, r_best]
    best_phase = fourier.shift_phase(band.coords, band.L, best_shift, dtype=y.dtype)
    resid = y - ctf * best_phase * best_slice
    residual_power = xp.mean(resid.real**2 + resid.imag**2, axis=0)
    return best_rotation, best_shift, best_class, class_prob, residual_power


def backproject_posterior(f_pads, w, band, poses: _Poses, scores: _Scores, options: SearchOptions):
    """Gradient and curvature per class, backprojected from the rows that carry weight.

    Rows are (image x candidate, local rotation) pairs, grouped by image
    (``rows_per_image`` each when the layout is fixed). The search scored
    nearest-neighbour slices; the gradient needs the exact trilinear slices of the few
    live rows, so that it is the adjoint's true gradient.

    Returns
    -------
    grads, curvatures : list (per class) of (pL)^3 arrays
    groups : list (per class) of per-group gradients (one group unless ``n_groups >= 2``)
    """
    xp = array_module(scores.posterior)
    b = scores.posterior.shape[0]
    n_cand, n_loc, n_shift, per_class = poses.n_cand, poses.n_loc, poses.n_shift, poses.per_class
    n_classes = len(f_pads)
    s = b * n_cand
    p_sub = scores.posterior.reshape(s, n_shift, n_loc)
    live_s, live_r, rows_per_image = _live_rows(scores.posterior, b, n_cand, n_shift, n_loc, n_classes, options.max_poses, options.compact_rows)
    rot_rows = poses.rotations.reshape(s, n_loc, 3, 3)[live_s, live_r]
    groups_n = max(options.n_groups, 1)
    grads, curvs, groups = [], [], []
    shape = f_pads[0].shape
    for k in range(n_classes):
        if rows_per_image is not None:  # fixed layout: class k's rows are one block
            block = b * rows_per_image
            sel = slice(k * block, (k + 1) * block)
        elif n_classes == 1:
            sel = slice(None)
        else:  # compacted (CPU): candidate slots are class by class
            sel = xp.nonzero((live_s % n_cand) // per_class == k)[0]
        rows_s, rows_r, rows_rot = live_s[sel], live_r[sel], rot_rows[sel]
        exact = projector.extract(f_pads[k], rows_rot, band.coords, pad=options.pad)
        grad_rows, curv_rows = likelihood.slice_gradient(
            scores.y_rep[rows_s], scores.ctf_rep[rows_s], w, scores.phases[rows_s], exact, p_sub[rows_s, :, rows_r]
        )
        parts = []
        for g in range(groups_n):
            if groups_n == 1:
                pick = slice(None)
            elif rows_per_image is not None:
                pick = _every_gth_image(grad_rows.shape[0], rows_per_image, groups_n, g, xp)
            else:
                pick = xp.nonzero((rows_s // n_cand) % groups_n == g)[0]
            parts.append(projector.backproject(grad_rows[pick], rows_rot[pick], band.coords, shape, pad=options.pad))
        grads.append(sum(parts[1:], parts[0]))
        groups.append(parts)
        curvs.append(projector.backproject_weights(curv_rows, rows_rot, band.coords, shape, pad=options.pad))
    return grads, curvs, groups


def _batched_phases(coords, L, shifts, dtype):
    """Shift phases for per-sub-problem shift sets: shifts (S, T, 2) -> (S, T, M)."""
    s, t, _ = shifts.shape
    return fourier.shift_phase(coords, L, shifts.reshape(s * t, 2), dtype=dtype).reshape(s, t, -1)


def _every_gth_image(n_rows, rows_per_image, n_groups, g, xp):
    """Row indices of images ``g, g + G, ...`` when rows come ``rows_per_image`` per image."""
    images = xp.arange(g, n_rows // rows_per_image, n_groups)
    return (images[:, None] * rows_per_image + xp.arange(rows_per_image)[None, :]).ravel()


def _live_rows(p, b, n_cand, n_shift, n_loc, n_classes, max_poses, compact_rows):
    """(image x candidate, rotation) rows that carry posterior weight.

    Compacted (only rows of non-zero weight, grouped by image) on the CPU, where the
    selection is free. On a GPU a fixed ``min(max_poses, C_k n)`` rows per image and
    class, the heaviest, laid out class by class and image by image, so that no array's
    size depends on device values and each class's rows are a plain slice. Rows of zero
    weight add exactly zero.

    Returns
    -------
    live_s, live_r : (Q,) int
        Sub-problem (image x candidate) and local rotation of each row.
    rows_per_image : int or None
        The fixed number of rows per image and class, or None when compacted.
    """
    xp = array_module(p)
    pair = p.reshape(b, n_cand, n_shift, n_loc).sum(axis=2).reshape(b, n_cand * n_loc)
    if compact_rows if compact_rows is not None else xp is np:
        img, pos = xp.nonzero(pair > 0)
        return img * n_cand + pos // n_loc, pos % n_loc, None
    per_class = n_cand // n_classes
    n_rows = min(max_poses, per_class * n_loc)
    live_s, live_r = [], []
    for k in range(n_classes):
        block = pair[:, k * per_class * n_loc : (k + 1) * per_class * n_loc]
        top, _ = pose_search.smallest(-block, n_rows, overwrite=True)
        live_s.append((xp.arange(b)[:, None] * n_cand + k * per_class + top // n_loc).ravel())
        live_r.append((top % n_loc).ravel())
    return xp.concatenate(live_s), xp.concatenate(live_r), n_rows


def _coarse_candidates(f_pads, y, ctf, w, band, grids, k_coarse_px, n_candidates, pad):
    """Global search over coarse rotations x coarse shifts on the low band, per class.

    Every class keeps its own ``n_candidates`` per image, so that no class is shut out
    of the local stage before its map has had a chance to become distinct.
    """
    xp = array_module(y)
    mc = max(band.prefix(k_coarse_px), 1)
    coords = band.coords[:mc]
    phases = fourier.shift_phase(coords, band.L, grids.shifts, dtype=y.dtype)
    terms = pose_search.batch_terms(y[:, :mc], ctf[:, :mc], w[:mc], phases)
    n_rot = grids.rotations.shape[0]
    log_prior = grids.log_prior_shift(grids.shifts)
    rots, shifts = [], []
    for k, f_pad in enumerate(f_pads):
        result = pose_search.global_search(
            terms,
            lambda start, stop, f_pad=f_pad: projector.extract_nearest(f_pad, grids.rotations[start:stop], coords, pad=pad),
            n_rot,
            n_candidates,
            log_prior=log_prior,
        )
        rots.append(grids.rotations[result.r_idx])  # (B, C, 3, 3)
        shifts.append(grids.shifts[result.t_idx])  # (B, C, 2)
    return xp.concatenate(rots, axis=1), xp.concatenate(shifts, axis=1)


def _keep_top(p, k):
    """Zero all but the ``k`` largest weights of each row and renormalise."""
    xp = array_module(p)
    if p.shape[1] <= k:
        return p
    cut = -pose_search.smallest(-p, k, overwrite=True)[1][:, k - 1 : k]
    kept = xp.where(p >= cut, p, 0)
    return kept / xp.sum(kept, axis=1, keepdims=True)
