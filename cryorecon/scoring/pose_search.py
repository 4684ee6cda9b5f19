"""Score every (rotation, shift) of a mini-batch as real matrix products.

The Gaussian error of image ``i`` under rotation ``r`` and shift ``t`` expands to

    E[i,t,r] = sum_k w_k |Y_ik|^2
               - 2 Re sum_k w_k conj(Y_ik) C_ik S_t(k) P_r(k)
               + sum_k w_k C_ik^2 |P_r(k)|^2

with ``w_k = m_k / (2 sigma_k^2)`` (``m_k`` the Hermitian multiplicity of a half-plane
coefficient). The middle term is one real GEMM, (images x shifts, 2M) @ (2M, rotations),
and the last one is (images, M) @ (M, rotations), so BLAS or cuBLAS does the work. The
first term does not depend on the pose but is kept so that ``E`` is the true negative
log-likelihood (up to the normalising constant) and log-sum-exps are comparable across
images.

Everything here takes its array module from its inputs, so numpy and cupy share one path.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..backend import kernels, memory
from ..backend import array_module


@dataclass
class BatchTerms:
    """Pose-independent pieces of the expanded error for one mini-batch.

    Attributes
    ----------
    cross_lhs : (B, T, 2M) real
        ``[Re X, -Im X]`` with ``X = w C conj(Y) S_t``; multiplying by ``[Re P, Im P]``
        gives ``Re sum_k w conj(Y) C S_t P``.
    norm_lhs : (B, M) real
        ``w C^2``, multiplied by ``|P|^2``.
    const : (B,) real
        ``sum_k w |Y|^2``.
    """

    cross_lhs: object
    norm_lhs: object
    const: object


def batch_terms(y, ctf, w, phases) -> BatchTerms:
    """Precompute the pose-independent factors of the error for images ``y``.

    Parameters
    ----------
    y : (B, M) complex
        Image Fourier coefficients on the band's half-plane coordinates.
    ctf : (B, M) real
        CTF at the same coordinates (ones where there is no CTF).
    w : (M,) or (B, M) real
        ``m_k / (2 sigma_k^2)``.
    phases : (T, M) complex
        Shift phases ``S_t(k)``.
    """
    xp = array_module(y)
    wc = w * ctf
    x = (wc * xp.conj(y))[:, None, :] * phases[None, :, :]
    cross_lhs = xp.concatenate([x.real, -x.imag], axis=-1)
    norm_lhs = wc * ctf
    const = xp.sum(w * (y.real**2 + y.imag**2), axis=-1)
    real = y.real.dtype
    return BatchTerms(cross_lhs.astype(real, copy=False), norm_lhs.astype(real, copy=False), const.astype(real, copy=False))


def slice_matrices(slices):
    """``[Re P, Im P]`` (R, 2M) and ``|P|^2`` (R, M) for slices ``P`` (R, M)."""
    xp = array_module(slices)
    return xp.concatenate([slices.real, slices.imag], axis=-1), slices.real**2 + slices.imag**2


def errors_shared(terms: BatchTerms, slices):
    """Errors ``E[i, t, r]`` when every image is scored against the same rotations.

    Parameters
    ----------
    terms : BatchTerms
    slices : (R, M) complex
        Central slices ``P_r`` of the current map.

    Returns
    -------
    (B, T, R) real
    """
    b, t, m2 = terms.cross_lhs.shape
    p_cat, p_abs2 = slice_matrices(slices)
    # assembled in place: at low bands the elementwise passes over the (B, T, R) block
    # cost as much as the GEMM itself, so no temporaries of that size are made
    err = (terms.cross_lhs.reshape(b * t, m2) @ p_cat.T).reshape(b, t, -1)
    norm = terms.norm_lhs @ p_abs2.T
    assemble = assemble_errors if array_module(err) is np else kernels.assemble_errors
    return assemble(err, norm, terms.const)


def assemble_errors(cross, norm, const):
    """``cross <- -2 cross + norm[:, None, :] + const[:, None, None]``, in place.

    The reference for :func:`cryorecon.backend.kernels.assemble_errors`, which does it in
    one pass.
    """
    cross *= -2
    cross += norm[:, None, :]
    cross += const[:, None, None]
    return cross


def errors_per_image(terms: BatchTerms, slices):
    """Errors ``E[i, t, r]`` when each image has its own rotations (local refinement).

    ``slices`` is (B, R, M): a batched matrix product per image.
    """
    p_cat, p_abs2 = slice_matrices(slices)
    xp = array_module(slices)
    cross = xp.matmul(terms.cross_lhs, xp.swapaxes(p_cat, 1, 2))
    norm = xp.matmul(terms.norm_lhs[:, None, :], xp.swapaxes(p_abs2, 1, 2))
    return terms.const[:, None, None] - 2 * cross + norm


def top_poses(errors, k: int, log_prior=None, overwrite: bool = False):
    """The ``k`` best (lowest ``E - log prior``) poses per image.

    Parameters
    ----------
    errors : (B, T, R) real
    k : int
    log_prior : (T,) real, optional
        Log prior over shifts (for example a Gaussian on the shift length).
    overwrite : bool
        ``errors`` may be overwritten (see :func:`smallest`).

    Returns
    -------
    t_idx, r_idx : (B, k) int
        Shift and rotation indices, best first.
    neg_logp : (B, k) real
        ``E - log prior`` of those poses.
    """
    b, t, r = errors.shape
    score = errors if log_prior is None else errors - log_prior[None, :, None]
    idx, vals = smallest(score.reshape(b, t * r), k, overwrite=overwrite or log_prior is not None)
    return idx // r, idx % r, vals


def smallest(values, k: int, overwrite: bool = False):
    """The ``k`` smallest entries of each row, in ascending order.

    Parameters
    ----------
    values : (B, N) real
    k : int
        At most N are returned.
    overwrite : bool
        ``values`` is a temporary that may be overwritten: on a GPU this saves a copy
        of it (numpy never writes to it).

    Returns
    -------
    idx : (B, k) int
    vals : (B, k) real

    On numpy, ``argpartition`` and a sort of the ``k``. On a GPU, ``k`` rounds of
    ``argmin`` on a copy: cupy's ``argpartition`` reads a value back to the host (its
    ``unravel_index`` checks for negative indices), which would stall every batch, and
    for the few poses kept here ``k`` reductions cost less than a sort.
    """
    xp = array_module(values)
    b, n = values.shape
    k = min(k, n)
    if xp is np:
        idx = np.argpartition(values, k - 1, axis=1)[:, :k] if k < n else np.broadcast_to(np.arange(n), (b, n))
        vals = np.take_along_axis(values, idx, axis=1)
        order = np.argsort(vals, axis=1, kind="stable")
        return np.take_along_axis(idx, order, axis=1), np.take_along_axis(vals, order, axis=1)
    work = values if overwrite else values.copy()
    rows = xp.arange(b)
    idx = xp.empty((b, k), dtype=xp.int64)
    vals = xp.empty((b, k), dtype=values.dtype)
    for j in range(k):
        best = xp.argmin(work, axis=1)
        idx[:, j] = best
        vals[:, j] = work[rows, best]
        work[rows, best] = xp.inf
    return idx, vals


def logsumexp_neg(neg_logp, axis=-1):
    """``log sum exp(-neg_logp)`` along ``axis``, stable."""
    xp = array_module(neg_logp)
    lo = xp.min(neg_logp, axis=axis, keepdims=True)
    return -xp.squeeze(lo, axis=axis) + xp.log(xp.sum(xp.exp(-(neg_logp - lo)), axis=axis))


def posterior(neg_logp, min_weight: float = 1e-4):
    """Softmax of ``-neg_logp`` along the last axis, with negligible weights dropped.

    Weights below ``min_weight`` times the largest are set to zero and the rest
    renormalised: they cost a backprojection each and change nothing.
    """
    xp = array_module(neg_logp)
    lo = xp.min(neg_logp, axis=-1, keepdims=True)
    p = xp.exp(-(neg_logp - lo))
    p = xp.where(p >= min_weight, p, 0)
    return p / xp.sum(p, axis=-1, keepdims=True)


def rotation_chunk(n_images: int, n_shifts: int, n_coeffs: int, budget_bytes: float = 256e6) -> int:
    """Rotations per chunk so that one chunk's error tensor and slices fit ``budget_bytes``."""
    per_rotation = 4 * (n_images * n_shifts + 3 * n_coeffs + n_images)
    return max(1, int(budget_bytes // per_rotation))


@dataclass
class SearchResult:
    """Best poses found for a mini-batch, with their log-weights."""

    t_idx: object  # (B, K) shift indices into the shift set
    r_idx: object  # (B, K) rotation indices into the rotation set
    neg_logp: object  # (B, K) E - log prior
    log_evidence: object  # (B,) log sum over the whole searched set of exp(-E) p(t)


def global_search(terms: BatchTerms, slice_fn, n_rotations: int, k: int, log_prior=None, chunk=None, oom_errors=None) -> SearchResult:
    """Score all rotations in chunks, keeping the ``k`` best poses per image.

    Parameters
    ----------
    terms : BatchTerms
    slice_fn : callable
        ``slice_fn(start, stop) -> (stop - start, M) complex`` central slices of those
        rotations; slices are made chunk by chunk so memory stays bounded. It may be
        called again for the same range after an out-of-memory error.
    n_rotations : int
    k : int
        Poses to keep per image.
    log_prior : (T,) real, optional
    chunk : int, optional
        Rotations per chunk. By default, on numpy :func:`rotation_chunk`; on cupy the
        largest that fits half the free device memory
        (:func:`cryorecon.backend.memory.pose_chunk_size`).
    oom_errors : tuple of exception types, optional
        What counts as out of memory (default
        :func:`cryorecon.backend.memory.oom_errors`). A chunk that raises one is halved
        and scored again, and the later chunks keep the smaller size.
    """
    xp = array_module(terms.const)
    b, t, m2 = terms.cross_lhs.shape
    if not chunk:
        if xp is np:
            chunk = rotation_chunk(b, t, m2 // 2)
        else:
            itemsize = terms.cross_lhs.dtype.itemsize
            chunk = memory.pose_chunk_size(memory.free_bytes(xp), b, t, m2 // 2, n_rotations=n_rotations, itemsize=itemsize)

    def score_chunk(start, stop):
        score = errors_shared(terms, slice_fn(start, stop))
        if log_prior is not None:
            score -= log_prior[None, :, None]
        chunk_lse = logsumexp_neg(score.reshape(b, -1))
        ti, ri, v = top_poses(score, k, overwrite=True)  # score is not used after this
        return chunk_lse, ti, ri + start, v

    best_t = best_r = best_v = None
    lse = None
    for _start, _stop, (chunk_lse, ti, ri, v) in memory.map_chunks(score_chunk, n_rotations, chunk, errors=oom_errors):
        lse = chunk_lse if lse is None else xp.logaddexp(lse, chunk_lse)
        if best_v is None:
            best_t, best_r, best_v = ti, ri, v
        else:
            order, best_v = smallest(xp.concatenate([best_v, v], axis=1), k, overwrite=True)
            best_t = xp.take_along_axis(xp.concatenate([best_t, ti], axis=1), order, axis=1)
            best_r = xp.take_along_axis(xp.concatenate([best_r, ri], axis=1), order, axis=1)
    return SearchResult(best_t, best_r, best_v, lse)
