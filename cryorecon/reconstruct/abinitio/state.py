"""The state of the SGD phase: what one iteration hands to the next, and its checkpoint.

A :class:`RunState` holds the maps, the random generator, the noise model, the step's
optimizer state (with the running curvature), the gradient-noise estimate, the
hand-over switch, the batch size, the epoch's permutation and the history. Saved and
loaded whole, a run resumed from it continues bit for bit.

A checkpoint is two files: ``NAME.optim-ITER.npz`` (the optimizer-library states,
through :func:`cryorecon.optim.save_state`) and ``NAME.npz`` (maps, noise, permutation,
history, and a JSON record naming the first). Both are written atomically, the main
one last, so that a kill at any moment leaves the previous pair or the new one, never a
mix. Nothing is pickled.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ... import optim
from ...backend import to_host
from ...errors import InputError
from ...forward import fourier
from ...io.atomic import atomic_write
from ...scoring import likelihood
from .outputs import History
from .settings import AbinitioSettings

# No noise measured yet: the running average starts from the first measurement.
NO_NOISE_ESTIMATE = optim.noise.NoiseEstimate(0, 0.0, 0.0)


def class_tree(values) -> dict:
    """Per-class values as the optimizer's parameter tree, ``{"class0": ..., ...}``."""
    return {f"class{k}": v for k, v in enumerate(values)}


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
class RunState:
    """Everything the SGD phase carries from one iteration to the next.

    Attributes
    ----------
    iteration : int
        SGD iterations done.
    rng : numpy.random.Generator
        The run's generator (seeded once from ``settings.seed``).
    maps : list of (L, L, L) float32 device arrays
        One per class; the SGD phase builds one consensus map.
    noise : likelihood.NoiseModel
        The per-shell noise model (on the device).
    opt_state : tuple
        The step optimizer's state; its preconditioner holds the running curvature.
    grad_noise : optim.noise.NoiseEstimate
        Running estimate of the batch gradient's noise (count 0: none yet).
    switch : optim.noise.SnrSwitchState
        The hand-over switch's state.
    batch_size : int
        The next batch's size.
    perm : (N,) int array
        The current epoch's order of the particles; ``pos`` is how far it is used.
    history : History
    """

    iteration: int
    rng: np.random.Generator
    maps: list
    noise: likelihood.NoiseModel
    opt_state: tuple
    grad_noise: optim.noise.NoiseEstimate
    switch: optim.noise.SnrSwitchState
    batch_size: int
    perm: np.ndarray
    pos: int
    history: History
    perm_device: object = field(default=None, repr=False)  # ``perm`` on the device, uploaded once per epoch

    @property
    def visits(self) -> int:
        """Image visits so far (the sum of the batch sizes)."""
        column = self.history.columns.index("batch_size")
        return int(sum(r[column] for r in self.history.rows))

    @classmethod
    def fresh(cls, ws, s: AbinitioSettings, optimizer, switch, initial_map=None) -> "RunState":
        """The start of a run: seeded random blobs (or ``initial_map``) low-passed to the start band.

        The noise model starts from the power of 500 randomly chosen particles.
        """
        xp = ws.xp
        rng = np.random.default_rng(s.seed)
        if initial_map is None:
            start = random_start(ws.L, 1, rng, ws.pixel_size_A, s.start_res_A, ws.mask)
        else:
            start = (np.asarray(initial_map, dtype=np.float32) * ws.mask)[None]
        start = np.stack([ws.low_pass(m, s.start_res_A) for m in start])
        sample = xp.asarray(ws.images[rng.choice(ws.n, size=min(ws.n, 500), replace=False)])
        sigma2 = likelihood.NoiseModel.from_images(fourier.fft2c(sample), ws.L // 2 + 2).sigma2
        maps = [xp.asarray(m) for m in start]
        perm = rng.permutation(ws.n)
        return cls(
            iteration=0,
            rng=rng,
            maps=maps,
            noise=likelihood.NoiseModel(sigma2),
            opt_state=optimizer.init(class_tree([ws.fourier(m) for m in maps])),
            grad_noise=NO_NOISE_ESTIMATE,
            switch=switch.init(),
            batch_size=s.batch_size,
            perm=perm,
            pos=0,
            history=History(),
            perm_device=xp.asarray(perm),
        )

    def _optim_tree(self) -> dict:
        return {"step": self.opt_state, "grad_noise": self.grad_noise, "switch": self.switch}

    def save(self, path, s: AbinitioSettings):
        """Write the whole state so that :meth:`load` continues bit for bit (see the module docstring)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        optim_file = f"{path.stem}.optim-{self.iteration:06d}.npz"
        optim.save_state(path.parent / optim_file, self._optim_tree())
        meta = {
            "iteration": self.iteration,
            "rng_state": self.rng.bit_generator.state,
            "batch_size": self.batch_size,
            "pos": self.pos,
            "settings": asdict(s),
            "optim_file": optim_file,
        }
        arrays = {f"map{k}": to_host(m) for k, m in enumerate(self.maps)}
        arrays["sigma2"] = to_host(self.noise.sigma2)
        arrays["perm"] = self.perm
        arrays["history"] = self.history.as_array()
        arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
        with atomic_write(path) as tmp:
            np.savez(tmp, **arrays)
        for old in path.parent.glob(f"{path.stem}.optim-*.npz"):
            if old.name != optim_file:
                old.unlink(missing_ok=True)

    @classmethod
    def load(cls, path, ws, s: AbinitioSettings, optimizer, switch) -> "RunState | None":
        """The state saved at ``path``, or None when there is none.

        Raises
        ------
        InputError
            When the checkpoint was made with other settings.
        """
        if path is None or not Path(path).exists():
            return None
        path = Path(path)
        xp = ws.xp
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(bytes(z["meta"]).decode())
            if meta["settings"] != json.loads(json.dumps(asdict(s))):
                raise InputError(f"{path}: checkpoint was made with other settings; remove it or rerun without --resume")
            # the SGD phase builds one consensus map; classes come at the hand-over
            maps = [xp.asarray(z["map0"])]
            sigma2, perm = xp.asarray(z["sigma2"]), z["perm"]
            history = History(rows=[list(r) for r in z["history"]])
        rng = np.random.default_rng()
        rng.bit_generator.state = meta["rng_state"]
        like = {"step": optimizer.init(class_tree([ws.fourier(m) for m in maps])), "grad_noise": NO_NOISE_ESTIMATE, "switch": switch.init()}
        try:
            saved = optim.load_state(path.parent / meta["optim_file"], like=like)
        except optim.StateFileError as err:
            raise InputError(f"{err}; remove {path} or rerun without --resume") from err
        return cls(
            iteration=meta["iteration"],
            rng=rng,
            maps=maps,
            noise=likelihood.NoiseModel(sigma2),
            opt_state=saved["step"],
            grad_noise=saved["grad_noise"],
            switch=saved["switch"],
            batch_size=meta["batch_size"],
            perm=perm,
            pos=meta["pos"],
            history=history,
            perm_device=xp.asarray(perm),
        )
