"""The hand-over: full-data passes after SGD, the class split, and the true-pose oracle.

After the SGD phase, a few full-data passes (every particle, the same engine) take
Newton-like steps from the SGD map, which is what turns a correct low-resolution fold
into a map close to the true-pose oracle. Each step is the full gradient divided by the
full curvature plus a Tikhonov term, through :mod:`cryorecon.optim`
(``chain(scale_by_diagonal(), sgd(1.0))``, with the curvature and the term given per
step), so that both phases step the map the same way. The first pass searches
globally; later ones refine locally on finer grids.

With ``K > 1`` classes the consensus is split after the first pass along its leading
directions of variability (:mod:`cryorecon.reconstruct.heterogeneity`), and
expectation-maximisation passes over classes and local poses follow.

The last pass aligns against the map low-passed to ``restart_factor`` times the
target resolution, so that the final poses do not lock onto noise that earlier passes
fitted.

The oracle is the same full pass with the true poses given: the reference that tells
how much of the gap to the truth is the poses'.
"""
from __future__ import annotations

import logging

import numpy as np

from ... import optim
from ...backend import to_host
from ...forward import fourier
from ...scoring import likelihood
from ..engine import SearchGrids, SearchOptions, evaluate_batch
from .settings import AbinitioSettings, band_limit_px
from .state import class_tree

log = logging.getLogger(__name__)

# A full-data step is a damped diagonal Newton step: divide by the curvature plus the
# per-step Tikhonov term, learning rate 1.
NEWTON_STEP = optim.chain(optim.scale_by_diagonal(damping=0.0), optim.sgd(1.0))


class Handover:
    """Full-data passes over a :class:`Workspace`.

    Parameters
    ----------
    ws : Workspace
    settings : AbinitioSettings
    grids : engine.SearchGrids
        The SGD phase's grids; local passes use finer ones derived from them.
    """

    def __init__(self, ws, settings: AbinitioSettings, grids: SearchGrids):
        self.ws, self.s, self.grids = ws, settings, grids

    def run(self, maps, noise):
        """The passes after SGD: returns the final maps (one per class) and every particle's pose.

        The poses are a dict of host arrays: ``rotations`` (N, 3, 3), ``shifts`` (N, 2,
        working px), ``classes`` (N,) and ``class_probability`` (N, K).
        """
        s, ws = self.s, self.ws
        final_band = ws.band_at(s.target_res_A)
        k_coarse = band_limit_px(max(s.target_res_A, s.coarse_res_A), ws.L, ws.pixel_size_A)
        log.info("hand-over: %d full-data pass(es) at %.1f A", max(s.handover_passes, 1), s.target_res_A)
        # the first pass searches globally; later ones refine locally on finer grids
        maps, poses = self.full_pass(maps, noise, final_band, k_coarse, update_map=s.handover_passes > 0)
        levels = list(range(1, s.handover_passes))
        if s.n_classes > 1:
            maps = self.split_consensus(maps[0], poses, noise)
            # EM over classes at the first fine level, then the finer levels as for K = 1
            levels = [1] * max(s.class_passes - len(levels), 0) + levels
        for p, level in enumerate(levels):
            maps, poses = self.full_pass(maps, noise, final_band, k_coarse, local_from=poses, grids=self.fine_grids(level))
            log.info("hand-over pass %d done", p + 2)
        if s.restart_factor > 0 and s.handover_passes > 0:
            # Iterating against its own map drifts: each pass aligns to noise that the
            # previous one fitted, and the map got worse with every extra pass (FSC0.143
            # 11.9 -> 12.4 A over four passes; the same with independent half-sets). So the
            # last pass aligns against the map with its top octave removed, as RELION starts
            # refinement from a low-passed reference, and reconstructs the full band afresh.
            res_A = s.restart_factor * s.target_res_A
            maps = [ws.low_pass(m, res_A) for m in maps]
            maps, poses = self.full_pass(maps, noise, final_band, k_coarse, local_from=poses, grids=self.fine_grids(2))
            log.info("final pass, aligned against the map low-passed to %.1f A, done", res_A)
        return maps, poses

    def full_pass(self, maps, noise, band, k_coarse, update_map=True, fixed_poses=None, batch=256, local_from=None, grids=None):
        """One pass over every particle: poses, and (optionally) a full-data Newton step.

        With ``fixed_poses`` (rotations (N,3,3), shifts (N,2) working px) the search is
        skipped: that is the true-pose oracle through the same engine. With
        ``local_from`` (poses as :meth:`run` returns them) the search is local around
        them, on ``grids``.
        """
        ws, xp = self.ws, self.ws.xp
        f_pads = [ws.fourier(m) for m in maps]
        grad = [xp.zeros_like(f) for f in f_pads]
        curv = [xp.zeros(f.shape, dtype=f.real.dtype) for f in f_pads]
        found = {"rotations": [], "shifts": [], "classes": [], "class_probability": []}
        index_sets = [np.arange(start, min(start + batch, ws.n)) for start in range(0, ws.n, batch)]
        # a stack too large to stay on the device is read and copied one batch ahead,
        # through pinned buffers, while the current batch computes
        loader = ws.loader(index_sets) if ws.streamed else None
        try:
            for idx in index_sets:
                loaded = next(loader) if loader is not None else None
                out = self._pass_batch(idx, loaded, f_pads, noise, band, k_coarse, fixed_poses, local_from, grids)
                for k in range(len(maps)):
                    grad[k] += out.grad[k]
                    curv[k] += out.curvature[k]
                for key, value in zip(found, (out.best_rotation, out.best_shift, out.best_class, out.class_probability)):
                    found[key].append(value)
        finally:
            if loader is not None:
                loader.close()
        if update_map:
            maps = self.newton_step(maps, f_pads, grad, curv, band)
        # the poses come to the host once per pass
        dtypes = {"rotations": np.float32, "shifts": np.float32, "classes": np.int64, "class_probability": np.float64}
        return maps, {key: to_host(xp.concatenate(found[key])).astype(dtypes[key]) for key in found}

    def newton_step(self, maps, f_pads, grad, curv, band):
        """``F - (grad + lam F) / (curv + lam)`` on the band, carried to the voxels, priors applied.

        ``lam`` is :meth:`Workspace.flat_lambda`, the same regulariser as the oracle's,
        so that the two differ only in poses.
        """
        ws = self.ws
        band_mask = ws.band_mask(band.k_max_px)
        params = class_tree(f_pads)
        lam = class_tree([ws.flat_lambda(c) for c in curv])
        grads = {key: band_mask * (g + lam[key] * f) for key, g, f in zip(params, grad, f_pads)}
        updates, _ = NEWTON_STEP.update(grads, NEWTON_STEP.init(params), params, curvature=class_tree(curv), damping=lam)
        return [ws.apply_priors(m + ws.to_voxels(u)) for m, u in zip(maps, updates.values())]

    def _pass_batch(self, idx, loaded, f_pads, noise, band, k_coarse, fixed_poses, local_from, grids):
        s, xp = self.s, self.ws.xp
        y, ctf = self.ws.batch_data(idx, band, xp.arange(int(idx[0]), int(idx[-1]) + 1), loaded)
        fixed = None if fixed_poses is None else (fixed_poses[0][idx], fixed_poses[1][idx])
        local = None if local_from is None else (local_from["rotations"][idx], local_from["shifts"][idx])
        options = SearchOptions(n_candidates=s.n_candidates, pad=s.pad)
        return evaluate_batch(f_pads, y, ctf, noise, band, grids or self.grids, k_coarse, options, fixed_poses=fixed, local_poses=local)

    def fine_grids(self, level):
        """Local grids ``2**level`` times finer than the SGD phase's."""
        g = self.grids
        return SearchGrids.make(
            self.ws.xp,
            coarse_step_deg=g.coarse_step_deg,
            max_shift_px=0.0 if g.shifts.shape[0] == 1 else float(to_host(g.shifts).max()),
            shift_step_px=g.shift_step_px,
            local_fraction=0.5 / 2**level,
            shift_sigma_px=g.shift_sigma_px,
        )

    def split_consensus(self, consensus, poses, noise):
        """K class maps from the consensus: k-means along its leading directions of variability."""
        from ..heterogeneity import split_classes, variability_subspace

        s, ws = self.s, self.ws
        res_A = max(s.split_res_A, 2 * s.target_res_A)
        band = ws.band_at(res_A)
        vectors, coords = variability_subspace(
            ws.batch_data, ws.fourier(consensus), poses, noise, band, s.n_classes - 1,
            mask=ws.mask, band_mask=ws.band_mask(band.k_max_px), regulariser=ws.flat_lambda, pad=s.pad, seed=s.seed,
        )
        labels, centres = split_classes(coords, s.n_classes, seed=s.seed)
        log.info("consensus split at %.1f A into classes of %s particles", res_A, np.bincount(labels, minlength=s.n_classes).tolist())
        xp = ws.xp
        dirs = xp.asarray(vectors)
        return [ws.apply_priors(consensus + xp.tensordot(xp.asarray(c, dtype=xp.float32), dirs, axes=1)) for c in centres]

    def oracle(self, rotations, shifts_px, passes: int = 3):
        """Reconstruct with the true poses through the same engine (Newton steps from zero)."""
        ws, xp = self.ws, self.ws.xp
        band = ws.band_at(self.s.target_res_A)
        sample = ws.images[: min(ws.n, 500)]
        noise = likelihood.NoiseModel.from_images(xp.asarray(fourier.fft2c(sample)), ws.L // 2 + 2)
        maps = [xp.zeros((ws.L,) * 3, dtype=xp.float32)]
        fixed = (np.asarray(rotations, np.float32), np.asarray(shifts_px, np.float32))
        for _ in range(passes):
            maps, _ = self.full_pass(maps, noise, band, 0.0, fixed_poses=fixed)
        return to_host(maps[0])
