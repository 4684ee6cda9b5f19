"""Ab initio reconstruction by preconditioned mini-batch SGD with marginalised poses.

The recipe follows cryoSPARC's (Punjani et al. 2017, Nature Methods 14:290):

1. a seeded random start, low-passed to the first band;
2. each iteration draws a mini-batch (without replacement, epoch by epoch), searches
   its poses (:mod:`cryorecon.reconstruct.engine`) in the current Fourier band and
   backprojects the posterior-weighted gradient;
3. the gradient is preconditioned in Fourier space by a running estimate of the
   diagonal of the Hessian (the backprojected ``2 w C^2``), plus a Wiener-like
   Gaussian prior per shell, and carried to the voxels by the FFT's pseudo-inverse;
4. the step goes through :mod:`cryorecon.optim`: ``scale_by_diagonal`` holds the
   running curvature in its state, then SGD (optionally with momentum);
5. the band widens from ``start_res_A`` toward ``target_res_A`` (frequency marching).

With ``K > 1`` classes the SGD phase builds one consensus map; after the first
hand-over pass it is split along the leading directions of variability of the
residuals (:mod:`cryorecon.reconstruct.heterogeneity`), and expectation-maximisation
passes marginalise over classes and local poses in the consensus frame.

On top of that, two things of our own:

- the **adaptive batch size**: the gradient of several disjoint groups of the batch
  gives the trace of the per-image gradient covariance (:mod:`cryorecon.optim.noise`);
  Chebyshev's bound (:func:`cryorecon.optim.noise.chebyshev_batch_size`) then says how
  large a batch makes the batch gradient accurate to a relative ``eps`` with
  probability ``1 - delta``, and the batch grows toward it;
- the **hand-over**: after the SGD phase, a few full-data passes (every particle, the
  same engine) take Newton-like steps from the SGD map, which is what turns a correct
  low-resolution fold into a map close to the true-pose oracle. The SGD phase hands
  over when its budget of image visits is spent, or earlier, once the band has reached
  the target, when the batch gradient's SNR says the full-data steps will do better
  (:func:`cryorecon.optim.noise.switch_when_snr_high`). The last pass aligns against
  the map low-passed to twice the target resolution (``restart_factor``), so that the
  final poses do not lock onto noise that earlier passes fitted.

The package, one idea a module: :mod:`.settings` (settings, defaults, band schedule),
:mod:`.workspace` (particles, bands, priors), :mod:`.state` (the run state and its
checkpoint), :mod:`.sgd` (the SGD loop), :mod:`.handover` (full-data passes, class
split, oracle) and :mod:`.outputs` (history, result, files); :class:`Abinitio` here
wires them.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ...backend import to_host
from ...errors import InputError
from ..engine import SearchGrids
from .handover import Handover
from .observe import IterationReport, RunStopped, watching
from .outputs import AbinitioResult, HandoverRecord, History, write_outputs
from .settings import (
    HANDOVER_SNR,
    LOW_SNR,
    MAX_LOW_SNR_FACTOR,
    AbinitioSettings,
    band_limit_px,
    check_settings,
    default_settings,
    progress_fraction,
    resolution_schedule,
)
from .sgd import SgdPhase
from .state import RunState, random_start
from .workspace import Workspace

__all__ = [
    "Abinitio", "AbinitioResult", "AbinitioSettings", "HANDOVER_SNR", "Handover", "HandoverRecord", "History",
    "IterationReport", "LOW_SNR", "MAX_LOW_SNR_FACTOR", "RunState", "SgdPhase", "Workspace", "band_limit_px", "check_settings",
    "default_settings", "progress_fraction", "random_start", "resolution_schedule", "RunStopped", "watching", "write_outputs",
]


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
    xp : module, optional
        numpy or cupy; the backend's by default.
    original_box : int, optional
        Edge of the particles before downsampling (the shift settings are in its pixels).
    initial_map : (L, L, L) array, optional
        Start from this map (low-passed to the start band) instead of random blobs: to
        refine from a reference, or to test whether a solution is a stable fixed point.
    observer : callable, optional
        Told of each SGD iteration and may stop the run (see :mod:`.observe`).

    Attributes
    ----------
    ws : Workspace
        The particles and the box.
    handover : Handover
        The full-data passes (and the oracle).
    state : RunState or None
        After :meth:`run`, the SGD phase's final state.
    """

    def __init__(self, images, pixel_size_A, ctf_params, settings: AbinitioSettings, checkpoint_path=None, progress=False, xp=None, original_box=None, initial_map=None, observer=None):
        self.observer = observer
        self.ws = Workspace(images, pixel_size_A, ctf_params if settings.use_ctf else None, settings, xp=xp)
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
        self.handover = Handover(self.ws, settings, self.grids)
        self.state = None

    # ------------------------------------------------- the box and the data
    xp = property(lambda self: self.ws.xp)
    images = property(lambda self: self.ws.images)
    n = property(lambda self: self.ws.n)
    L = property(lambda self: self.ws.L)
    pixel_size_A = property(lambda self: self.ws.pixel_size_A)
    mask = property(lambda self: self.ws.mask)

    @property
    def stream_particles(self):
        """None: keep the stack on the device when it fits; True: read it batch by batch, one batch ahead."""
        return self.ws.stream_particles

    @stream_particles.setter
    def stream_particles(self, value):
        self.ws.stream_particles = value

    def band(self, k_px: float):
        """The band ``|k| < k_px`` (see :meth:`Workspace.band`)."""
        return self.ws.band(k_px)

    def batch_data(self, idx, band, idx_device=None, loaded=None):
        """Image coefficients and CTF of particles ``idx`` on ``band`` (see :meth:`Workspace.batch_data`)."""
        return self.ws.batch_data(idx, band, idx_device, loaded)

    def low_pass(self, volume, res_A: float):
        """``volume`` with every frequency finer than ``res_A`` removed."""
        return self.ws.low_pass(volume, res_A)

    # ------------------------------------------------------------------- run
    def fresh_state(self) -> RunState:
        """The state a run starts from (seeded random blobs, or the initial map)."""
        phase = SgdPhase(self.ws, self.s, self.grids)
        return RunState.fresh(self.ws, self.s, phase.optimizer, phase.switch, self.initial_map)

    def run(self, resume: bool = False) -> AbinitioResult:
        """SGD from the start (or the checkpoint, with ``resume``), then the hand-over passes."""
        phase = SgdPhase(self.ws, self.s, self.grids, checkpoint_path=self.checkpoint_path, progress=self.progress, observer=self.observer)
        state = RunState.load(self.checkpoint_path, self.ws, self.s, phase.optimizer, phase.switch) if resume else None
        if state is None:
            state = RunState.fresh(self.ws, self.s, phase.optimizer, phase.switch, self.initial_map)
        record = phase.run(state)
        self.state = state
        maps, poses = self.handover.run(state.maps, state.noise)
        return AbinitioResult(
            maps=np.stack([to_host(m) for m in maps]).astype(np.float32),
            pixel_size_A=self.pixel_size_A,
            rotations=poses["rotations"],
            shifts_px=poses["shifts"],
            classes=poses["classes"],
            class_probability=poses["class_probability"],
            history=state.history,
            settings=self.s,
            handover=record,
        )

    def full_pass(self, maps, noise, band, k_coarse, **kwargs):
        """One pass over every particle (see :meth:`Handover.full_pass`)."""
        return self.handover.full_pass(maps, noise, band, k_coarse, **kwargs)

    def oracle(self, rotations, shifts_px, passes: int = 3):
        """Reconstruct with the true poses through the same engine (see :meth:`Handover.oracle`)."""
        return self.handover.oracle(rotations, shifts_px, passes)
