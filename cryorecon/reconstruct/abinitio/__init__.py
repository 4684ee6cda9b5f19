"""Ab initio reconstruction by preconditioned mini-batch SGD with marginalised poses.

The recipe follows cryoSPARC's (Punjani et al. 2017, Nature Methods 14:290):

1. a seeded random start, low-passed to the first band;
2. each iteration draws a mini-batch (without replacement, epoch by epoch), searches
   its poses (:mod:`cryorecon.reconstruct.engine`) in the current Fourier band and
   backprojects the posterior-weighted gradient;
3. the gradient is preconditioned in Fourier space by a running estimate of the
   diagonal of the Hessian (the backprojected ``2 w C^2``), plus a Wiener-like
   Gaussian prior per shell, and carried to the voxels by the FFT's pseudo-inverse;
4. the step goes through :mod:`cryorecon.optim` (SGD, optionally with momentum);
5. the band widens from ``start_res_A`` toward ``target_res_A`` (frequency marching).

With ``K > 1`` classes the SGD phase builds one consensus map; after the first
hand-over pass it is split along the leading directions of variability of the
residuals (:mod:`cryorecon.reconstruct.heterogeneity`), and expectation-maximisation
passes marginalise over classes and local poses in the consensus frame.

On top of that, two things of our own:

- the **adaptive batch size**: the gradient of several disjoint groups of the batch
  gives the trace of the per-image gradient covariance; Chebyshev's bound
  (:func:`cryorecon.optim.noise.chebyshev_batch_size`) then says how large a batch
  makes the batch gradient accurate to a relative ``eps`` with probability
  ``1 - delta``, and the batch grows toward it;
- the **hand-over**: after the SGD phase, a few full-data passes (every particle, the
  same engine) take Newton-like steps from the SGD map, which is what turns a correct
  low-resolution fold into a map close to the true-pose oracle. The last of them aligns
  against the map low-passed to twice the target resolution (``restart_factor``), so
  that the final poses do not lock onto noise that earlier passes fitted.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from ..forward import fourier, projector
from ..scoring import likelihood
from .. import optim
from ..backend import array_module, get_xp, to_host
from ..errors import InputError
from ..backend.memory import PrefetchLoader
from .engine import SearchGrids, SearchOptions, evaluate_batch

log = logging.getLogger(__name__)


@dataclass
class AbinitioSettings:
    """Settings of an ab initio run; :func:`default_settings` derives them from the data."""

    n_classes: int = 1
    split_res_A: float = 25.0  # band of the consensus split into classes (K > 1)
    class_passes: int = 6  # expectation-maximisation passes over classes and local poses (K > 1)
    seed: int = 0
    epochs: float = 4.0  # image visits of the SGD phase, in passes over the data
    max_iter: int = 1000  # a cap on SGD iterations (the budget is ``epochs``)
    batch_size: int = 100
    max_batch_size: int = 1000
    adaptive_batch: bool = True
    batch_eps: float = 0.5  # relative gradient error the batch aims for ...
    batch_delta: float = 0.2  # ... with this failure probability (Chebyshev)
    n_groups: int = 4
    adapt_after: float = 0.5  # the batch may grow after this fraction of the band's march
    start_res_A: float = 35.0
    target_res_A: float = 12.0
    march_fraction: float = 0.7  # fraction of the visit budget over which the band widens
    coarse_res_A: float = 25.0  # band limit of the global coarse search
    coarse_step_deg: float = 15.0
    n_candidates: int = 3
    max_shift_px: float = 6.0  # in the original box's pixels
    shift_step_px: float = 2.0
    learning_rate: float = 0.4
    momentum: float = 0.0
    curvature_decay: float = 0.9  # running average of the batch curvature
    prior_strength: float = 1.0
    noise_rate: float = 0.2
    nonnegative: bool = False
    mask_radius_fraction: float = 0.85  # of the half box
    handover_passes: int = 4
    # The last hand-over pass aligns against the map low-passed to this many times the
    # target resolution (0: no such pass); see Abinitio.run.
    restart_factor: float = 2.0
    checkpoint_every: int = 25
    pad: int = 2
    use_ctf: bool = True


# Below this SNR (:func:`cryorecon.reconstruct.preprocess.estimate_snr`) the SGD phase gets more steps;
# the benchmark's SNR 0.1 data read 0.098, clear of it.
LOW_SNR = 0.08
MAX_LOW_SNR_FACTOR = 4.0


def default_settings(n_particles: int, box: int, pixel_size_A: float, snr: float | None = None, **overrides) -> AbinitioSettings:
    """Settings that work on a typical data set without tuning.

    The target resolution defaults to the working box's Nyquist limit plus 10%; the batch
    to about 1/30 of the particles (between 64 and 200); the SGD phase to about 12,000
    image visits (between 1 and 10 passes over the data). Because the band schedule
    follows image visits, not iterations, a batch that grows adaptively makes fewer,
    more accurate steps within the same compute budget.

    ``snr``, the particles' signal-to-noise ratio, stretches the SGD phase below
    ``LOW_SNR`` by ``f = LOW_SNR / snr`` (at most 4x), and lets the batch start growing
    only ``f`` times later in the march. Finding the fold at low SNR takes *steps*, not
    accurate gradients: on the benchmark's ribosome at SNR 0.02 the map's correlation
    with the truth crept from 0.4 to 0.6 over the first 240 steps of 100 images, and
    locked onto the fold (0.89) by step 320. Four passes (about 70 steps) stayed at
    0.4; so did 16 passes once the batch had grown (224 steps), and 12 passes in
    batches of 400. At SNR 0.1 the default budget already ends within 7% of the
    true-pose oracle, so it is left alone there.
    """
    s = AbinitioSettings()
    if pixel_size_A <= 0:
        raise InputError(f"pixel size {pixel_size_A} A is not positive: pass --pixel-size")
    nyquist = 2.0 * pixel_size_A
    batch = min(int(np.clip(n_particles // 30, 64, 200)), n_particles)
    factor = 1.0
    if snr is not None and snr < LOW_SNR:
        factor = min(LOW_SNR / max(snr, 1e-9), MAX_LOW_SNR_FACTOR)
    s = replace(
        s,
        target_res_A=1.1 * nyquist,
        batch_size=batch,
        max_batch_size=max(min(n_particles // 4, 1000), batch),
        epochs=factor * float(np.clip(12000 / max(n_particles, 1), 1.0, 10.0)),
        adapt_after=min(1.0, factor * s.adapt_after),
    )
    s = replace(s, start_res_A=max(s.start_res_A, 4 * nyquist), coarse_res_A=max(s.coarse_res_A, 3 * nyquist))
    unknown = set(overrides) - set(asdict(s))
    if unknown:
        raise InputError(f"unknown ab initio setting(s): {', '.join(sorted(unknown))}")
    s = replace(s, **{k: v for k, v in overrides.items() if v is not None})
    check_settings(s, n_particles, box, pixel_size_A)
    return s


def check_settings(s: AbinitioSettings, n_particles: int, box: int, pixel_size_A: float):
    """Refuse impossible requests before any work, each with the fix."""
    nyquist = 2.0 * pixel_size_A
    if s.target_res_A < nyquist:
        raise InputError(
            f"--target-res-A {s.target_res_A:g} is finer than Nyquist ({nyquist:g} A for {pixel_size_A:g} A/px): "
            f"ask for {nyquist:g} A or more, or use particles with a smaller pixel size"
        )
    if box * pixel_size_A < 2 * s.start_res_A:
        raise InputError(
            f"the box ({box} px x {pixel_size_A:g} A = {box * pixel_size_A:g} A) is too small to start at "
            f"{s.start_res_A:g} A: use a larger box or a finer --start-res-A"
        )
    if n_particles < s.batch_size:
        raise InputError(f"only {n_particles} particles, fewer than one batch of {s.batch_size}: add particles or lower --batch-size")
    if s.n_classes < 1:
        raise InputError("--classes must be 1 or more")


def band_limit_px(res_A: float, box: int, pixel_size_A: float) -> float:
    """Fourier radius in pixels (of a ``box``-pixel image) of resolution ``res_A``."""
    return box * pixel_size_A / res_A


def progress_fraction(visits: int, n_particles: int, s: AbinitioSettings) -> float:
    """How far the SGD phase is, in [0, 1]: image visits over the budget."""
    return min(1.0, visits / max(1.0, s.epochs * n_particles))


def resolution_schedule(fraction: float, s: AbinitioSettings) -> float:
    """Frequency marching: the band's resolution at ``fraction`` of the budget (linear in 1/res)."""
    f = min(1.0, fraction / max(1e-9, s.march_fraction))
    inv = (1 - f) / s.start_res_A + f / s.target_res_A
    return 1.0 / inv


def random_start(L: int, n_maps: int, rng: np.random.Generator, pixel_size_A: float, res_A: float, mask) -> np.ndarray:
    """Seeded random maps: a few Gaussian blobs, low-passed to ``res_A``, inside the mask.

    Blobs (rather than white noise) give a positive, compact start whose projections
    already look particle-like, so the first pose search is not pure chance.
    """
    maps = np.zeros((n_maps, L, L, L), dtype=np.float32)
    grid = np.indices((L, L, L)).astype(np.float32) - L // 2
    radius = 0.3 * L
    sigma = max(res_A / pixel_size_A / 2.5, 1.0)
    for c in range(n_maps):
        for _ in range(12):
            centre = rng.normal(0, radius / 2, size=3)
            d2 = sum((grid[i] - centre[i]) ** 2 for i in range(3))
            maps[c] += rng.uniform(0.5, 1.0) * np.exp(-d2 / (2 * sigma**2))
        maps[c] *= mask
    return maps


@dataclass
class History:
    """Per-iteration log, written as ``history.csv``."""

    rows: list = field(default_factory=list)
    columns = ("iteration", "loss", "grad_norm", "k_max_px", "resolution_A", "batch_size", "seconds")

    def add(self, **row):
        self.rows.append([row[c] for c in self.columns])

    def as_array(self) -> np.ndarray:
        return np.asarray(self.rows, dtype=np.float64).reshape(-1, len(self.columns))

    def write_csv(self, path):
        from ..io.atomic import atomic_open

        with atomic_open(path, "w") as fh:
            fh.write(",".join(self.columns) + "\n")
            for r in self.rows:
                fh.write(",".join(f"{v:.6g}" for v in r) + "\n")


@dataclass
class AbinitioResult:
    maps: np.ndarray  # (K, L, L, L) float32, working box
    pixel_size_A: float  # of the working box
    rotations: np.ndarray  # (N, 3, 3) best pose per particle
    shifts_px: np.ndarray  # (N, 2) best origin offsets, working pixels
    classes: np.ndarray  # (N,) best class
    class_probability: np.ndarray  # (N, K)
    history: History
    settings: AbinitioSettings


class Abinitio:
    """An ab initio run over particles already in memory (working box).

    Parameters
    ----------
    images : (N, L, L) float32
        Particles, normalised, at the working box.
    pixel_size_A : float
    ctf_params : dict of (N,) arrays, or None
        Keys of :func:`cryorecon.forward.ctf.ctf_values`; None when the data have no CTF.
    settings : AbinitioSettings
    checkpoint_path : path, optional
        Where to checkpoint every ``settings.checkpoint_every`` iterations.
    progress : bool
        Show a progress bar.
    initial_map : (L, L, L) array, optional
        Start from this map (low-passed to the start band) instead of random blobs: to
        refine from a reference, or to test whether a solution is a stable fixed point.
    """

    def __init__(self, images, pixel_size_A, ctf_params, settings: AbinitioSettings, checkpoint_path=None, progress=False, xp=None, original_box=None, initial_map=None):
        self.xp = xp or get_xp()
        self.images = np.ascontiguousarray(images, dtype=np.float32)
        self.n, self.L = self.images.shape[0], self.images.shape[-1]
        self.pixel_size_A = float(pixel_size_A)
        self.ctf_params = ctf_params if settings.use_ctf else None
        self.s = settings
        self.checkpoint_path = Path(checkpoint_path) if checkpoint_path else None
        self.progress = progress
        if initial_map is not None and np.shape(initial_map) != (self.L,) * 3:
            raise InputError(f"initial map of shape {np.shape(initial_map)} does not match the {self.L} px working box: resample it to {self.L}^3")
        self.initial_map = initial_map
        scale = self.L / float(original_box or self.L)
        self.grids = SearchGrids.make(
            self.xp,
            coarse_step_deg=settings.coarse_step_deg,
            max_shift_px=settings.max_shift_px * scale,
            shift_step_px=max(settings.shift_step_px * scale, 0.5),
        )
        self.mask = fourier.soft_sphere_mask(self.L, settings.mask_radius_fraction * self.L / 2, max(2.0, self.L / 32), ndim=3)
        self._device_mask = self.xp.asarray(self.mask)
        self._bands = {}
        self._staged = None
        # None: keep the stack on the device when it fits; True: always read it batch by
        # batch, one batch ahead (for a device shared with other work)
        self.stream_particles = None
        self._widest_band = None
        self._band_masks = {}
        # shell of every voxel of the padded transform, for the per-shell priors; the
        # count is taken on the host before the upload, never read back from the device
        shells = fourier.shell_index(projector.padded_size(self.L, settings.pad), 3).ravel()
        self.n_pad_shells = int(shells.max()) + 1
        self._pad_shells = self.xp.asarray(shells)

    # ----------------------------------------------------------------- helpers
    def band(self, k_px: float) -> likelihood.Band:
        """The band ``|k| < k_px``, clamped below Nyquist (the corners of the box are never fitted)."""
        key = round(min(float(k_px), self.L / 2 - 1), 1)
        if key not in self._bands:
            # every band is a prefix of the widest: the marching band needs no new uploads
            if self._widest_band is None:
                self._widest_band = likelihood.Band.make(self.L, self.L / 2 - 1, self.xp)
            self._bands[key] = self._widest_band.truncated(key)
        return self._bands[key]

    def _stage_particles(self):
        """Put the stack and its CTF parameters on the device once, when they fit.

        A stack that takes at most a quarter of the free device memory (50,000 images of
        128 px are 3.3 GB) stays resident, so an iteration copies nothing from the host;
        a larger one is copied batch by batch. On the CPU this is the stack itself.
        """
        xp = self.xp
        if self._staged is not None:
            return self._staged
        images = self.images
        if xp is not np and not self.stream_particles:
            from ..backend import memory

            if self.images.nbytes <= 0.25 * memory.free_bytes(xp):
                images = xp.asarray(self.images)
        params = None if self.ctf_params is None else {k: xp.asarray(np.asarray(v), dtype=xp.float64) for k, v in self.ctf_params.items()}
        self._staged = (images, params)
        return self._staged

    def batch_data(self, idx, band, idx_device=None, loaded=None):
        """Image coefficients and CTF of particles ``idx`` on ``band``, on the device.

        ``idx_device`` is the same indices already on the device (taken from a
        permutation uploaded once per epoch), so that no index array is copied per batch;
        ``loaded`` is their images, already on the device (from a prefetching loader).
        """
        xp = self.xp
        images, params = self._stage_particles()
        if idx_device is None:
            idx_device = xp.asarray(idx)
        if loaded is not None:
            imgs = loaded
        else:
            imgs = images[idx_device] if array_module(images) is xp else xp.asarray(images[idx])
        y = likelihood.image_coefficients(imgs, band)
        params = None if params is None else {k: v[idx_device] for k, v in params.items()}
        ctf = likelihood.ctf_on_band(band, self.pixel_size_A, params, len(idx), xp)
        return y, ctf

    def _prior_lambda(self, f_pad, n_shells_pad):
        """Per-voxel Gaussian prior precision from the map's own power per shell.

        ``lambda = prior_strength / (2 tau^2)`` with ``tau^2`` the spherically averaged
        ``|F|^2`` of the current map, as RELION's regularised likelihood does.
        """
        xp = array_module(f_pad)
        shells = self._pad_shells
        total, count = likelihood.shell_sums(xp, shells, (f_pad.real**2 + f_pad.imag**2).ravel(), n_shells_pad)
        tau2 = total / xp.maximum(count, 1)
        tau2 = xp.maximum(tau2, 1e-3 * xp.max(tau2))
        lam = self.s.prior_strength / (2 * tau2)
        return lam[shells].reshape(f_pad.shape)

    # -------------------------------------------------------------------- run
    def run(self, resume: bool = False) -> AbinitioResult:
        xp, s = self.xp, self.s
        pL = projector.padded_size(self.L, s.pad)
        n_shells_pad = self.n_pad_shells
        n_pad = float(pL) ** 3

        state = self._load_checkpoint() if resume else None
        if state is None:
            state = self._fresh_state()
        rng = np.random.default_rng()
        rng.bit_generator.state = state["rng_state"]
        maps = [xp.asarray(m) for m in state["maps"]]
        curv = [None if c is None else xp.asarray(c) for c in state["curvature"]]
        noise = likelihood.NoiseModel(xp.asarray(state["sigma2"]))
        opt = optim.sgd(s.learning_rate, momentum=s.momentum)
        opt_state = state["opt_state"] if state["opt_state"] is not None else opt.init({f"class{k}": maps[k] for k in range(len(maps))})
        history = state["history"]
        batch_size = state["batch_size"]
        perm, pos = state["perm"], state["pos"]
        perm_device = xp.asarray(perm)
        noise_stats = state["noise_stats"]

        budget = int(np.ceil(s.epochs * self.n))
        visits = int(sum(r[history.columns.index("batch_size")] for r in history.rows))
        bar = _progress(budget, visits, self.progress)
        t0 = time.perf_counter() - (history.rows[-1][-1] if history.rows else 0.0)
        it = state["iteration"]
        while it < s.max_iter and visits < budget:
            fraction = progress_fraction(visits, self.n, s)
            res_A = resolution_schedule(fraction, s)
            k_px = band_limit_px(res_A, self.L, self.pixel_size_A)
            band = self.band(k_px)
            k_coarse = band_limit_px(max(res_A, s.coarse_res_A), self.L, self.pixel_size_A)
            # mini-batch without replacement, epoch by epoch
            if pos + batch_size > self.n:
                perm, pos = rng.permutation(self.n), 0
                perm_device = xp.asarray(perm)  # one upload per epoch
            idx = np.sort(perm[pos : pos + batch_size])
            idx_device = xp.sort(perm_device[pos : pos + batch_size])
            pos += batch_size
            y, ctf = self.batch_data(idx, band, idx_device)
            f_pads = [projector.volume_ft(m, pad=s.pad) for m in maps]
            groups = s.n_groups if s.adaptive_batch else 0
            options = SearchOptions(n_candidates=s.n_candidates, pad=s.pad, n_groups=groups)
            out = evaluate_batch(f_pads, y, ctf, noise, band, self.grids, k_coarse, options)
            noise.update(band, out.residual_power, rate=s.noise_rate)

            scale = self.n / len(idx)
            band_mask = self.band_mask(band.k_max_px, pL)
            updates_in = {}
            grad_sq = 0.0  # a device scalar, read once per iteration with the loss
            for k in range(len(maps)):
                c_batch = out.curvature[k]
                curv[k] = c_batch if curv[k] is None else s.curvature_decay * curv[k] + (1 - s.curvature_decay) * c_batch
                lam = self._prior_lambda(f_pads[k], n_shells_pad)
                g = scale * out.grad[k] + lam * f_pads[k]
                direction = band_mask * g / (scale * curv[k] + lam)
                grad_sq = grad_sq + xp.sum(xp.abs(band_mask * g) ** 2)
                updates_in[f"class{k}"] = projector.volume_ft_adjoint(direction, self.L, pad=s.pad) / n_pad
                if out.group_grads is not None and k == 0:
                    noise_stats = self._gradient_noise(out.group_grads[0], len(idx), scale * curv[k] + lam, band_mask, noise_stats)
            updates, opt_state = opt.update(updates_in, opt_state)
            new = optim.apply_updates({f"class{k}": maps[k] for k in range(len(maps))}, updates)
            maps = [self._apply_priors(new[f"class{k}"]) for k in range(len(maps))]

            # the one deliberate read of device values per iteration: for the log
            nll, grad_sq = (float(v) for v in to_host(xp.stack([xp.asarray(out.nll, dtype=xp.float64), xp.asarray(grad_sq, dtype=xp.float64)])))
            history.add(
                iteration=it + 1,
                loss=nll / len(idx),
                grad_norm=float(np.sqrt(grad_sq)),
                k_max_px=band.k_max_px,
                resolution_A=res_A,
                batch_size=len(idx),
                seconds=time.perf_counter() - t0,
            )
            # The early iterations explore: gradient noise is what lets SGD leave a wrong
            # fold, and the images disagree about a random map anyway. The batch may grow
            # once the band is half-way marched and the fold has settled.
            if s.adaptive_batch and noise_stats is not None and fraction >= s.adapt_after * s.march_fraction:
                batch_size = self._next_batch_size(batch_size, noise_stats)
            it += 1
            visits += len(idx)
            if it % 10 == 0:
                log.info(
                    "iteration %d: %d/%d images, band %.1f A, batch %d, loss %.5g, %.0f s",
                    it, visits, budget, res_A, len(idx), nll / len(idx), history.rows[-1][-1],
                )
            bar.update(len(idx))
            bar.set_postfix(res=f"{res_A:.1f}A", B=len(idx), loss=f"{nll / len(idx):.4g}")
            if self.checkpoint_path and it % s.checkpoint_every == 0 and it < s.max_iter and visits < budget:
                self._save_checkpoint(it, rng, maps, curv, noise, opt_state, history, batch_size, perm, pos, noise_stats)
        bar.close()

        # hand-over: full-data passes with the same engine
        final_band = self.band(band_limit_px(s.target_res_A, self.L, self.pixel_size_A))
        k_coarse = band_limit_px(max(s.target_res_A, s.coarse_res_A), self.L, self.pixel_size_A)
        log.info("hand-over: %d full-data pass(es) at %.1f A", max(s.handover_passes, 1), s.target_res_A)
        # the first pass searches globally; later ones refine locally on finer grids
        maps, poses = self.full_pass(maps, noise, final_band, k_coarse, update_map=s.handover_passes > 0)
        levels = list(range(1, s.handover_passes))
        if s.n_classes > 1:
            maps = self.split_consensus(maps[0], poses, noise)
            # EM over classes at the first fine level, then the finer levels as for K = 1
            levels = [1] * max(s.class_passes - len(levels), 0) + levels
        for p, level in enumerate(levels):
            maps, poses = self.full_pass(maps, noise, final_band, k_coarse, local_from=poses, grids=self._fine_grids(level))
            log.info("hand-over pass %d done", p + 2)
        if s.restart_factor > 0 and s.handover_passes > 0:
            # Iterating against its own map drifts: each pass aligns to noise that the
            # previous one fitted, and the map got worse with every extra pass (FSC0.143
            # 11.9 -> 12.4 A over four passes; the same with independent half-sets). So the
            # last pass aligns against the map with its top octave removed, as RELION starts
            # refinement from a low-passed reference, and reconstructs the full band afresh.
            res_A = s.restart_factor * s.target_res_A
            maps = [self.low_pass(m, res_A) for m in maps]
            maps, poses = self.full_pass(maps, noise, final_band, k_coarse, local_from=poses, grids=self._fine_grids(2))
            log.info("final pass, aligned against the map low-passed to %.1f A, done", res_A)
        return AbinitioResult(
            maps=np.stack([to_host(m) for m in maps]).astype(np.float32),
            pixel_size_A=self.pixel_size_A,
            rotations=poses["rotations"],
            shifts_px=poses["shifts"],
            classes=poses["classes"],
            class_probability=poses["class_probability"],
            history=history,
            settings=s,
        )

    def split_consensus(self, consensus, poses, noise):
        """K class maps from the consensus: k-means along its leading directions of variability."""
        from .heterogeneity import split_classes, variability_subspace

        s = self.s
        res_A = max(s.split_res_A, 2 * s.target_res_A)
        band = self.band(band_limit_px(res_A, self.L, self.pixel_size_A))
        f_pad = projector.volume_ft(consensus, pad=s.pad)
        vectors, coords = variability_subspace(self, f_pad, poses, noise, band, s.n_classes - 1, seed=s.seed)
        labels, centres = split_classes(coords, s.n_classes, seed=s.seed)
        log.info("consensus split at %.1f A into classes of %s particles", res_A, np.bincount(labels, minlength=s.n_classes).tolist())
        dirs = self.xp.asarray(vectors)
        return [self._apply_priors(consensus + self.xp.tensordot(self.xp.asarray(c, dtype=self.xp.float32), dirs, axes=1)) for c in centres]

    def low_pass(self, volume, res_A: float):
        """``volume`` with every frequency finer than ``res_A`` removed (a sharp cut)."""
        k = band_limit_px(res_A, self.L, self.pixel_size_A)
        xp = array_module(volume)
        keep = fourier.shell_index(self.L, 3, xp=xp) < k
        return fourier.ifft3c(fourier.fft3c(volume) * keep).real.astype(np.float32)

    def _fine_grids(self, level):
        """Local grids ``2**level`` times finer than the SGD phase's."""
        g = self.grids
        return SearchGrids.make(
            self.xp,
            coarse_step_deg=g.coarse_step_deg,
            max_shift_px=0.0 if g.shifts.shape[0] == 1 else float(to_host(g.shifts).max()),
            shift_step_px=g.shift_step_px,
            local_fraction=0.5 / 2**level,
            shift_sigma_px=g.shift_sigma_px,
        )

    def full_pass(self, maps, noise, band, k_coarse, update_map=True, fixed_poses=None, batch=256, local_from=None, grids=None):
        """One pass over every particle: poses, and (optionally) a full-data Newton step.

        With ``fixed_poses`` (rotations (N,3,3), shifts (N,2) working px) the search is
        skipped: that is the true-pose oracle through the same engine.
        """
        xp, s = self.xp, self.s
        pL = projector.padded_size(self.L, s.pad)
        f_pads = [projector.volume_ft(m, pad=s.pad) for m in maps]
        grad = [xp.zeros_like(f) for f in f_pads]
        curv = [xp.zeros(f.shape, dtype=f.real.dtype) for f in f_pads]
        found = {"rotations": [], "shifts": [], "classes": [], "class_probability": []}
        index_sets = [np.arange(start, min(start + batch, self.n)) for start in range(0, self.n, batch)]
        # a stack too large to stay on the device is read and copied one batch ahead,
        # through pinned buffers, while the current batch computes
        streamed = self.stream_particles or array_module(self._stage_particles()[0]) is not xp
        loader = PrefetchLoader(lambda i: self.images[i], index_sets, xp=xp) if streamed else None
        try:
            for idx in index_sets:
                loaded = next(loader) if loader is not None else None
                out = self._full_pass_batch(idx, loaded, f_pads, noise, band, k_coarse, fixed_poses, local_from, grids)
                for k in range(len(maps)):
                    grad[k] += out.grad[k]
                    curv[k] += out.curvature[k]
                for key, value in zip(found, (out.best_rotation, out.best_shift, out.best_class, out.class_probability)):
                    found[key].append(value)
        finally:
            if loader is not None:
                loader.close()
        if update_map:
            band_mask = self.band_mask(band.k_max_px, pL)
            n_pad = float(pL) ** 3
            new_maps = []
            for k in range(len(maps)):
                # the same regulariser as the oracle, so that the two differ only in poses
                lam = self.flat_lambda(curv[k])
                direction = band_mask * (grad[k] + lam * f_pads[k]) / (curv[k] + lam)
                step = projector.volume_ft_adjoint(direction, self.L, pad=s.pad) / n_pad
                new_maps.append(self._apply_priors(maps[k] - step))
            maps = new_maps
        # the poses come to the host once per pass
        dtypes = {"rotations": np.float32, "shifts": np.float32, "classes": np.int64, "class_probability": np.float64}
        return maps, {key: to_host(xp.concatenate(found[key])).astype(dtypes[key]) for key in found}

    def _full_pass_batch(self, idx, loaded, f_pads, noise, band, k_coarse, fixed_poses, local_from, grids):
        s = self.s
        y, ctf = self.batch_data(idx, band, self.xp.arange(int(idx[0]), int(idx[-1]) + 1), loaded)
        fixed = None if fixed_poses is None else (fixed_poses[0][idx], fixed_poses[1][idx])
        local = None if local_from is None else (local_from["rotations"][idx], local_from["shifts"][idx])
        options = SearchOptions(n_candidates=s.n_candidates, pad=s.pad)
        return evaluate_batch(f_pads, y, ctf, noise, band, grids or self.grids, k_coarse, options, fixed_poses=fixed, local_poses=local)

    def oracle(self, rotations, shifts_px, passes: int = 3):
        """Reconstruct with the true poses through the same engine (Newton steps from zero)."""
        xp, s = self.xp, self.s
        band = self.band(band_limit_px(s.target_res_A, self.L, self.pixel_size_A))
        sample = self.images[: min(self.n, 500)]
        noise = likelihood.NoiseModel.from_images(xp.asarray(fourier.fft2c(sample)), self.L // 2 + 2)
        maps = [xp.zeros((self.L,) * 3, dtype=xp.float32)]
        fixed = (np.asarray(rotations, np.float32), np.asarray(shifts_px, np.float32))
        for _ in range(passes):
            maps, _ = self.full_pass(maps, noise, band, 0.0, fixed_poses=fixed)
        return to_host(maps[0])

    def flat_lambda(self, curv, fraction: float = 0.01):
        """Tikhonov term for full-data steps: 1% of each shell's mean curvature.

        Relative to each shell, so the regularisation does not depend on the noise
        model's spectral shape: the oracle (noise from raw image power) and the hand-over
        (noise from residuals) then differ only in their poses.
        """
        xp = array_module(curv)
        shells, n = self._pad_shells, self.n_pad_shells
        flat = curv.ravel()
        total, _ = likelihood.shell_sums(xp, shells, flat, n)
        count, _ = likelihood.shell_sums(xp, shells, (flat > 0).astype(flat.dtype), n)
        mean = total / xp.maximum(count, 1)
        floor = xp.max(mean) * 1e-6 + 1e-30
        return (fraction * xp.maximum(mean, floor))[shells].reshape(curv.shape)

    def band_mask(self, k_px, pL):
        """Voxels of the padded grid inside the band (radius ``pad * k``), cached per band."""
        if k_px not in self._band_masks:
            r = self._pad_shells.reshape((pL,) * 3)
            self._band_masks[k_px] = (r < self.s.pad * k_px).astype(self.xp.float32)
        return self._band_masks[k_px]

    def _apply_priors(self, volume):
        v = volume * self._device_mask
        if self.s.nonnegative:
            v = self.xp.maximum(v, 0)
        return v.astype(self.xp.float32)

    def _gradient_noise(self, group_grads, batch, precond, band_mask, stats):
        """Running estimates of ``|mean g|^2`` and ``tr Cov`` in the preconditioned space."""
        xp = self.xp
        j = len(group_grads)
        per_group = batch / j
        means = [band_mask * g / (per_group * precond) for g in group_grads]
        mean = sum(means[1:], means[0]) / j
        # one read of 1 + j sums: the batch size is a host decision
        sums = to_host(xp.stack([xp.sum(xp.abs(mean) ** 2)] + [xp.sum(xp.abs(m - mean) ** 2) for m in means]))
        mean_sq = float(sums[0])
        trace_cov = per_group * float(np.sum(sums[1:])) / (j - 1)
        if stats is None:
            return {"mean_sq": mean_sq, "trace_cov": trace_cov}
        a = 0.7
        return {"mean_sq": a * stats["mean_sq"] + (1 - a) * mean_sq, "trace_cov": a * stats["trace_cov"] + (1 - a) * trace_cov}

    def _next_batch_size(self, batch_size, stats):
        eps_abs = self.s.batch_eps * np.sqrt(max(stats["mean_sq"], 1e-30))
        need = optim.noise.chebyshev_batch_size(stats["trace_cov"], eps_abs, self.s.batch_delta)
        target = int(np.clip(np.ceil(need), batch_size, self.s.max_batch_size))
        # grow gently (at most 10% per iteration) so one noisy estimate cannot jump B
        return int(min(target, max(batch_size + 1, int(1.1 * batch_size)))) if target > batch_size else batch_size

    # ------------------------------------------------------------- state
    def _fresh_state(self):
        s = self.s
        rng = np.random.default_rng(s.seed)
        if self.initial_map is None:
            start = random_start(self.L, 1, rng, self.pixel_size_A, s.start_res_A, self.mask)
        else:
            start = (np.asarray(self.initial_map, dtype=np.float32) * self.mask)[None]
        start = np.stack([self.low_pass(m, s.start_res_A) for m in start])
        sample = self.xp.asarray(self.images[rng.choice(self.n, size=min(self.n, 500), replace=False)])
        sigma2 = likelihood.NoiseModel.from_images(fourier.fft2c(sample), self.L // 2 + 2).sigma2
        return {
            "iteration": 0,
            "rng_state": rng.bit_generator.state,
            "maps": list(start),
            "curvature": [None],
            "sigma2": sigma2,
            "opt_state": None,
            "history": History(),
            "batch_size": s.batch_size,
            "perm": rng.permutation(self.n),
            "pos": 0,
            "noise_stats": None,
        }

    def _save_checkpoint(self, iteration, rng, maps, curv, noise, opt_state, history, batch_size, perm, pos, noise_stats):
        """Write the whole run state so that ``run(resume=True)`` continues bit for bit.

        The optimizer state goes first into a file named after the iteration; the main
        checkpoint, renamed into place last, names that file. A kill at any moment
        leaves the previous pair or the new pair, never a mix.
        """
        from ..io.atomic import atomic_write

        path = self.checkpoint_path
        path.parent.mkdir(parents=True, exist_ok=True)
        optim_file = f"{path.stem}.optim-{iteration:06d}.npz"
        optim.save_state(path.parent / optim_file, opt_state)
        meta = {
            "iteration": iteration,
            "rng_state": rng.bit_generator.state,
            "batch_size": batch_size,
            "pos": pos,
            "noise_stats": noise_stats,
            "settings": asdict(self.s),
            "optim_file": optim_file,
        }
        arrays = {f"map{k}": to_host(m) for k, m in enumerate(maps)}
        arrays.update({f"curv{k}": to_host(c) for k, c in enumerate(curv)})
        arrays["sigma2"] = to_host(noise.sigma2)
        arrays["perm"] = perm
        arrays["history"] = history.as_array()
        arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
        with atomic_write(path) as tmp:
            np.savez(tmp, **arrays)
        for old in path.parent.glob(f"{path.stem}.optim-*.npz"):
            if old.name != optim_file:
                old.unlink(missing_ok=True)

    def _load_checkpoint(self):
        path = self.checkpoint_path
        if path is None or not path.exists():
            return None
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(bytes(z["meta"]).decode())
            saved = meta["settings"]
            if saved != json.loads(json.dumps(asdict(self.s))):
                raise InputError(f"{path}: checkpoint was made with other settings; remove it or rerun without --resume")
            k = 1  # the SGD phase builds one consensus map; classes come at the hand-over
            maps = [z[f"map{i}"] for i in range(k)]
            curv = [z[f"curv{i}"] for i in range(k)]
            history = History(rows=[list(r) for r in z["history"]])
            state = {
                "iteration": meta["iteration"],
                "rng_state": meta["rng_state"],
                "maps": maps,
                "curvature": curv,
                "sigma2": z["sigma2"],
                "history": history,
                "batch_size": meta["batch_size"],
                "perm": z["perm"],
                "pos": meta["pos"],
                "noise_stats": meta["noise_stats"],
            }
        opt = optim.sgd(self.s.learning_rate, momentum=self.s.momentum)
        like = opt.init({f"class{i}": self.xp.asarray(maps[i]) for i in range(k)})
        state["opt_state"] = optim.load_state(path.parent / meta["optim_file"], like=like)
        return state


class _NoBar:
    def update(self, n=1):
        pass

    def set_postfix(self, **kw):
        pass

    def close(self):
        pass


def _progress(total, initial, enabled):
    if not enabled:
        return _NoBar()
    import sys

    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc="ab initio", unit="img", disable=not sys.stderr.isatty())


def write_outputs(result: AbinitioResult, stack, out_dir, original_box: int):
    """``map.mrc`` (and ``map_classNN.mrc``), ``particles.star`` and ``history.csv``.

    Maps are written at the working box with its voxel size; poses go back to the
    particles' own STAR file as RELION 3.1 angles (degrees) and origins (Angstrom).
    """
    from ..geometry.rotations import matrix_to_euler
    from ..io.mrc import write_map

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    counts = np.bincount(result.classes, minlength=result.maps.shape[0])
    main_class = int(np.argmax(counts))
    write_map(out / "map.mrc", result.maps[main_class], result.pixel_size_A)
    if result.maps.shape[0] > 1:
        for k, m in enumerate(result.maps):
            write_map(out / f"map_class{k + 1:02d}.mrc", m, result.pixel_size_A)
    rot, tilt, psi = matrix_to_euler(result.rotations.astype(np.float64))
    shifts_A = result.shifts_px.astype(np.float64) * result.pixel_size_A
    extra = {"rlnClassNumber": result.classes + 1, "rlnMaxValueProbDistribution": result.class_probability.max(axis=1)}
    stack.write_star(out / "particles.star", euler_deg=np.stack([rot, tilt, psi], axis=1), shifts_A=shifts_A, extra_columns=extra)
    result.history.write_csv(out / "history.csv")
    return main_class
