"""The SGD phase: mini-batch steps on the map, preconditioned by the running curvature.

Each iteration has four named steps (:class:`SgdPhase`):

1. **draw** a mini-batch (without replacement, epoch by epoch, from the run's seeded
   generator) and the band of the frequency march at the current image visits;
2. **evaluate** it with the engine: poses searched, posterior-weighted gradient and
   curvature backprojected, the noise model updated from the residuals;
3. **step** the map through :mod:`cryorecon.optim`. The gradient of the objective in
   the padded Fourier space, ``g = (N / B) grad + lam F`` (``lam`` the per-shell
   Gaussian prior's precision, restricted to the band), goes through
   ``chain(scale_by_diagonal(decay=curvature_decay), sgd(learning_rate, momentum))``:
   the preconditioner keeps in its state the running average of the full-data
   curvature estimates ``(N / B) c_batch`` and divides by it plus ``lam``; the
   Fourier-space update is then carried to the voxels (:meth:`Workspace.to_voxels`),
   and the real-space priors applied;
4. **adapt**: the gradient noise is measured from the engine's per-group gradients with
   :mod:`cryorecon.optim.noise`; the batch grows toward Chebyshev's bound, and once the
   band has reached the target the hand-over switch
   (:func:`cryorecon.optim.noise.switch_when_snr_high`) reads the batch gradient's SNR.
   The iteration is logged, and checkpointed every ``checkpoint_every``.

Why the optimizer works in Fourier space, with the carry to voxels after it: the
curvature is a Fourier-space quantity, and a chain's members all see one parameter
tree, so a transform inside the chain that changed spaces would leave the
preconditioner's and the momentum's states in two shapes that ``chain.init`` cannot
build. The carry is linear, so momentum before it is the same step as momentum after.

Why the running average is of ``(N / B) c_batch`` and not of ``c_batch``: each term is
then an unbiased estimate of the full-data curvature whatever the batch it came from.
Averaging ``c_batch`` and scaling by the current ``N / B`` would, just after the batch
grows, count the older, smaller batches' curvatures as if they were the new size's and
underestimate the curvature (too long a step) by up to their size ratio.

The phase ends when the budget of image visits (``epochs``) or ``max_iter`` is spent,
or earlier when the switch fires: see :class:`AbinitioSettings` ``handover_snr``.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import numpy as np

from ... import optim
from ...backend import to_host
from ...progress import progress_bar
from ..engine import SearchOptions, evaluate_batch
from .observe import IterationReport, RunStopped, current_observer
from .outputs import HandoverRecord
from .settings import AbinitioSettings, band_limit_px, progress_fraction, resolution_schedule
from .state import RunState, class_tree

log = logging.getLogger(__name__)


def step_optimizer(s: AbinitioSettings) -> optim.GradientTransformation:
    """The SGD step on the padded transforms: running-curvature preconditioner, then SGD."""
    return optim.chain(
        optim.scale_by_diagonal(damping=0.0, decay=s.curvature_decay),
        optim.sgd(s.learning_rate, momentum=s.momentum),
    )


def handover_switch(s: AbinitioSettings) -> optim.noise.SnrSwitch:
    """The switch that ends the SGD phase on a high batch gradient SNR (used only when ``handover_snr > 0``)."""
    return optim.noise.switch_when_snr_high(max(s.handover_snr, 0.0), s.handover_patience)


def next_batch_size(batch_size: int, noise: optim.noise.NoiseEstimate, s: AbinitioSettings) -> int:
    """The batch that Chebyshev's bound asks for, approached by at most 10% per iteration.

    The batch gradient should be within ``batch_eps |G|`` of the full gradient with
    probability ``1 - batch_delta``: ``B >= tr Cov / (delta eps^2 |G|^2)``
    (:func:`cryorecon.optim.noise.chebyshev_batch_size`), at most ``max_batch_size``;
    it never shrinks.
    """
    eps_abs = s.batch_eps * np.sqrt(max(noise.mean_sq, 1e-30))
    need = optim.noise.chebyshev_batch_size(noise.trace_cov, eps_abs, s.batch_delta)
    target = int(np.clip(np.ceil(need), batch_size, s.max_batch_size))
    # grow gently (at most 10% per iteration) so one noisy estimate cannot jump B
    return int(min(target, max(batch_size + 1, int(1.1 * batch_size)))) if target > batch_size else batch_size


def group_noise(group_grads, batch: int, precond, band_mask) -> optim.noise.NoiseEstimate:
    """The batch's gradient noise, per image, in the preconditioned space, from per-group gradients.

    The engine returns the summed gradient of each of ``J`` disjoint groups of the
    batch; their preconditioned means are ``J`` independent estimates of the mean
    gradient, each averaged over ``B / J`` images, so the per-image ``tr Cov`` is
    ``B / J`` times theirs (:meth:`~cryorecon.optim.noise.NoiseEstimate.per_example`).
    One read from the device.
    """
    per_group = batch / len(group_grads)
    means = [band_mask * g / (per_group * precond) for g in group_grads]
    return optim.noise.GradientNoiseStats.from_examples(means).estimate().per_example(per_group)


@dataclass
class Batch:
    """One iteration's mini-batch and band."""

    idx: np.ndarray  # sorted particle indices, host
    idx_device: object  # the same on the device
    fraction: float  # how far the budget was spent when it was drawn
    res_A: float
    band: object
    k_coarse: float


class SgdPhase:
    """The SGD phase of a run, over a :class:`RunState`.

    Parameters
    ----------
    ws : Workspace
    settings : AbinitioSettings
    grids : engine.SearchGrids
    checkpoint_path : path, optional
        Where to checkpoint every ``settings.checkpoint_every`` iterations.
    progress : bool
        Show a progress bar.
    observer : callable, optional
        Called after each iteration (see :mod:`.observe`); the one installed by
        :func:`.observe.watching` when omitted.
    """

    def __init__(self, ws, settings: AbinitioSettings, grids, checkpoint_path=None, progress=False, observer=None):
        self.ws, self.s, self.grids = ws, settings, grids
        self.checkpoint_path = checkpoint_path
        self.progress = progress
        self.observer = observer if observer is not None else current_observer()
        self.optimizer = step_optimizer(settings)
        self.switch = handover_switch(settings)
        # the group gradients serve the adaptive batch and the hand-over alike
        self.measures_noise = settings.n_groups >= 2 and (settings.adaptive_batch or settings.handover_snr > 0)

    def run(self, state: RunState) -> HandoverRecord:
        """Iterate until the budget, ``max_iter`` or the hand-over switch; ``state`` is updated in place."""
        s, n = self.s, self.ws.n
        budget = int(np.ceil(s.epochs * n))
        visits = state.visits
        t0 = time.perf_counter() - (state.history.rows[-1][-1] if state.history.rows else 0.0)
        with progress_bar(budget, desc="ab initio", unit="img", initial=visits, enabled=self.progress) as bar:
            while state.iteration < s.max_iter and visits < budget and not state.switch.switched:
                batch = self.draw(state, visits)
                out, f_pads = self.evaluate(state, batch)
                grad_sq, lam = self.step(state, out, f_pads, batch)
                measured = self.measure(state, out, lam, batch)
                self.adapt(state, batch)
                visits += len(batch.idx)
                self.record(state, out, grad_sq, batch, measured, time.perf_counter() - t0, visits, budget, bar)
        return self.conclude(state, visits, budget)

    # ----------------------------------------------------------------- steps
    def draw(self, state: RunState, visits: int) -> Batch:
        """The next mini-batch (without replacement, epoch by epoch) and the band at ``visits``."""
        ws, s, xp = self.ws, self.s, self.ws.xp
        fraction = progress_fraction(visits, ws.n, s)
        res_A = resolution_schedule(fraction, s)
        band = ws.band_at(res_A)
        k_coarse = band_limit_px(max(res_A, s.coarse_res_A), ws.L, ws.pixel_size_A)
        b, pos = state.batch_size, state.pos
        if pos + b > ws.n:
            state.perm, pos = state.rng.permutation(ws.n), 0
            state.perm_device = xp.asarray(state.perm)  # one upload per epoch
        idx = np.sort(state.perm[pos : pos + b])
        idx_device = xp.sort(state.perm_device[pos : pos + b])
        state.pos = pos + b
        return Batch(idx, idx_device, fraction, res_A, band, k_coarse)

    def evaluate(self, state: RunState, batch: Batch):
        """Engine output for the batch (poses, gradient, curvature), and the maps' padded transforms."""
        s = self.s
        y, ctf = self.ws.batch_data(batch.idx, batch.band, batch.idx_device)
        f_pads = [self.ws.fourier(m) for m in state.maps]
        options = SearchOptions(n_candidates=s.n_candidates, pad=s.pad, n_groups=s.n_groups if self.measures_noise else 0)
        out = evaluate_batch(f_pads, y, ctf, state.noise, batch.band, self.grids, batch.k_coarse, options)
        state.noise.update(batch.band, out.residual_power, rate=s.noise_rate)
        return out, f_pads

    def step(self, state: RunState, out, f_pads, batch: Batch):
        """One optimizer step on every map; returns ``|g|^2`` (a device scalar) and the prior precisions."""
        ws, xp = self.ws, self.ws.xp
        scale = ws.n / len(batch.idx)
        band_mask = ws.band_mask(batch.band.k_max_px)
        grads, curvatures, lam = {}, {}, {}
        grad_sq = 0.0
        for key, f, g, c in zip(class_tree(f_pads), f_pads, out.grad, out.curvature):
            lam[key] = ws.prior_lambda(f)
            grads[key] = band_mask * (scale * g + lam[key] * f)
            curvatures[key] = scale * c  # a full-data estimate, whatever the batch size
            grad_sq = grad_sq + xp.sum(xp.abs(grads[key]) ** 2)
        updates, state.opt_state = self.optimizer.update(grads, state.opt_state, class_tree(f_pads), curvature=curvatures, damping=lam)
        state.maps = [ws.apply_priors(m + ws.to_voxels(u)) for m, u in zip(state.maps, updates.values())]
        return grad_sq, lam

    def measure(self, state: RunState, out, lam, batch: Batch) -> bool:
        """Fold this batch's gradient noise into the running estimate; False when not measured."""
        if out.group_grads is None:
            return False
        # the preconditioner the step just used: the running curvature plus the prior
        precond = state.opt_state[0].curvature["class0"] + lam["class0"]
        current = group_noise(out.group_grads[0], len(batch.idx), precond, self.ws.band_mask(batch.band.k_max_px))
        state.grad_noise = optim.noise.running_average(state.grad_noise, current, self.s.noise_decay)
        return True

    def adapt(self, state: RunState, batch: Batch):
        """Grow the batch toward Chebyshev's bound; let the switch read the SNR at the target band."""
        s, noise = self.s, state.grad_noise
        if noise.count == 0:
            return
        # The early iterations explore: gradient noise is what lets SGD leave a wrong
        # fold, and the images disagree about a random map anyway. The batch may grow
        # once the band is half-way marched and the fold has settled.
        if s.adaptive_batch and batch.fraction >= s.adapt_after * s.march_fraction:
            state.batch_size = next_batch_size(state.batch_size, noise, s)
        # Only at the target band: a hand-over during the march would jump bands.
        if s.handover_snr > 0 and batch.fraction >= s.march_fraction:
            _, state.switch = self.switch.update(noise, state.switch)

    def record(self, state: RunState, out, grad_sq, batch: Batch, measured: bool, seconds, visits, budget, bar):
        """History, log, progress bar and checkpoint of the iteration just done."""
        s, xp = self.s, self.ws.xp
        b = len(batch.idx)
        # the one deliberate read of device values per iteration besides the noise: for the log
        nll, grad_sq = (float(v) for v in to_host(xp.stack([xp.asarray(out.nll, dtype=xp.float64), xp.asarray(grad_sq, dtype=xp.float64)])))
        snr = state.grad_noise.batch_snr(debias=True) if measured else math.nan
        state.iteration += 1
        state.history.add(
            iteration=state.iteration, loss=nll / b, grad_norm=float(np.sqrt(grad_sq)), k_max_px=batch.band.k_max_px,
            resolution_A=batch.res_A, batch_size=b, batch_snr=snr, seconds=seconds,
        )
        if state.iteration % 10 == 0:
            log.info("iteration %d: %d/%d images, band %.1f A, batch %d, loss %.5g, batch gradient SNR %.3g, %.0f s",
                     state.iteration, visits, budget, batch.res_A, b, nll / b, snr, seconds)
        bar.update(b)
        bar.set_postfix(res=f"{batch.res_A:.1f}A", B=b, loss=f"{nll / b:.4g}")
        going_on = state.iteration < s.max_iter and visits < budget and not state.switch.switched
        if self.checkpoint_path and state.iteration % s.checkpoint_every == 0 and going_on:
            state.save(self.checkpoint_path, s)
        if self.observer is not None:
            row = dict(zip(state.history.columns, state.history.rows[-1]))
            report = IterationReport(state.iteration, progress_fraction(visits, self.ws.n, s), row, self.ws.pixel_size_A, tuple(state.maps))
            if self.observer(report):
                # stop where the state is whole, so that a resume continues bit for bit
                if self.checkpoint_path:
                    state.save(self.checkpoint_path, s)
                raise RunStopped(state.iteration, self.checkpoint_path)

    def conclude(self, state: RunState, visits: int, budget: int) -> HandoverRecord:
        """When and why the phase ended, logged."""
        s = self.s
        last = dict(zip(state.history.columns, state.history.rows[-1])) if state.history.rows else {}
        res_A, snr = last.get("resolution_A", s.start_res_A), last.get("batch_snr", math.nan)
        reason = "snr" if state.switch.switched else ("max_iter" if state.iteration >= s.max_iter else "budget")
        record = HandoverRecord(reason, state.iteration, visits, budget, float(res_A), float(snr))
        if reason == "snr":
            log.info("hand-over by gradient SNR at iteration %d: %d/%d image visits (%.0f%% of the budget), band %.1f A; "
                     "batch gradient SNR %.3g >= %g on %d consecutive iterations",
                     state.iteration, visits, budget, 100.0 * visits / budget, res_A, snr, s.handover_snr, s.handover_patience)
        else:
            why = "the visit budget ran out" if reason == "budget" else f"max_iter ({s.max_iter}) was reached"
            log.info("hand-over after SGD iteration %d: %s first (%d/%d image visits, band %.1f A, batch gradient SNR %.3g, "
                     "switch at %g)", state.iteration, why, visits, budget, res_A, snr, s.handover_snr)
        return record
