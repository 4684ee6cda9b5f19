"""Settings of an ab initio run, the defaults derived from the data, and the band schedule.

The SGD phase is budgeted in image visits (``epochs`` passes over the data), and the
band widens with the visits, not the iterations: a batch that grows adaptively makes
fewer, more accurate steps within the same schedule.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy as np

from ...errors import InputError


# The batch gradient's SNR at which the SGD phase hands over (see AbinitioSettings).
HANDOVER_SNR = 20.0


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
    n_groups: int = 4  # disjoint groups of the batch whose gradients measure its noise
    noise_decay: float = 0.7  # running average of the gradient-noise estimates
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
    # Hand over to the full-data passes before the budget once the batch gradient's SNR
    # (debiased, over the running noise estimates) is at least handover_snr on
    # handover_patience consecutive iterations at the target band; 0: the budget only.
    handover_snr: float = HANDOVER_SNR
    handover_patience: int = 3
    # The last hand-over pass aligns against the map low-passed to this many times the
    # target resolution (0: no such pass); see :mod:`.handover`.
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
    if s.handover_snr < 0 or s.handover_patience < 1:
        raise InputError(f"handover_snr {s.handover_snr:g} / handover_patience {s.handover_patience}: "
                         "the threshold must be 0 (budget only) or more, and the patience 1 or more")
    if not (0 <= s.noise_decay < 1 and 0 <= s.curvature_decay < 1):
        raise InputError(f"noise_decay {s.noise_decay:g} / curvature_decay {s.curvature_decay:g}: "
                         "running-average weights must lie in [0, 1)")


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
