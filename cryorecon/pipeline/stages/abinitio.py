"""The ``abinitio`` stage: a map from the preprocessed particles, checkpointed and resumable."""
from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict
from pathlib import Path

from ...errors import InputError
from ..config import take
from ..record import json_normal, sha256_file

log = logging.getLogger("cryorecon.pipeline")


class AbinitioStage:
    """Ab initio map from the preprocessed particles (SGD with marginalised poses).

    Any :class:`~cryorecon.reconstruct.abinitio.AbinitioSettings` field may be set in the
    ``[abinitio]`` table; the seed is the pipeline's. Writes ``map.mrc`` (+
    ``map_classNN.mrc``), ``particles.star`` (estimated poses, RELION 3.1) and
    ``history.csv``; checkpoints to ``checkpoint.npz`` and resumes from it.
    """

    name = "abinitio"

    def __init__(self, table):
        from ...reconstruct.abinitio import AbinitioSettings

        allowed = {k: None for k in asdict(AbinitioSettings())}
        allowed.pop("seed")
        self.params = take(table, allowed, self.name)
        self.params = {k: v for k, v in self.params.items() if v is not None}

    def check(self, ctx):
        for key in ("n_particles", "working_box", "working_pixel_size_A"):
            if key not in ctx.facts:
                raise InputError("[pipeline] stages: abinitio needs a preprocess stage before it")
        self.settings(ctx)

    def settings(self, ctx, snr=None):
        """The run's settings; ``snr`` (estimated from the particles) sets the SGD budget."""
        from ...reconstruct.abinitio import default_settings

        f = ctx.facts
        overrides = {**self.params, "seed": ctx.seed}
        overrides.setdefault("use_ctf", f.get("use_ctf", True))
        try:
            return default_settings(f["n_particles"], f["working_box"], f["working_pixel_size_A"], snr=snr, **overrides)
        except TypeError as err:
            raise InputError(f"[abinitio]: a setting has the wrong type ({err})") from err

    def inputs(self, ctx):
        return [ctx.path("preprocessed.mrcs"), Path(ctx.facts["particles"])]

    def outputs(self, ctx):
        return [ctx.path("map.mrc"), ctx.path("particles.star"), ctx.path("history.csv")]

    def _checkpoint(self, ctx):
        return ctx.path("checkpoint.npz")

    def _checkpoint_files(self, ctx):
        cp = self._checkpoint(ctx)
        return [cp, *cp.parent.glob(f"{cp.stem}.optim-*.npz"), ctx.path("checkpoint.json")]

    def forget(self, ctx):
        """A forced rerun starts afresh: drop the checkpoint."""
        for p in self._checkpoint_files(ctx):
            p.unlink(missing_ok=True)

    def _resume(self, ctx, settings) -> bool:
        """Whether the checkpoint was made by this stage on these settings and inputs.

        A checkpoint from anything else is dropped. The marker ``checkpoint.json`` is
        (re)written for the run about to start.
        """
        from ...io.atomic import atomic_open

        key = json_normal({"settings": asdict(settings), "inputs": {str(p): sha256_file(p) for p in self.inputs(ctx)}})
        marker = ctx.path("checkpoint.json")
        resume = False
        if self._checkpoint(ctx).exists():
            try:
                resume = json.loads(marker.read_text()) == key
            except (OSError, json.JSONDecodeError):
                resume = False
            if not resume:
                log.info("abinitio: checkpoint from other settings or inputs; starting afresh")
                self.forget(ctx)
        with atomic_open(marker, "w") as fh:
            json.dump(key, fh)
        if resume:
            log.info("abinitio: resuming from %s", self._checkpoint(ctx))
        return resume

    def run(self, ctx):
        from ...backend import set_device
        from ...io.mrc import read_map
        from ...io.particles import ParticleStack
        from ...reconstruct.abinitio import Abinitio, write_outputs
        from ...reconstruct.preprocess import estimate_snr

        set_device(ctx.device)
        f = ctx.facts
        images, px = read_map(ctx.path("preprocessed.mrcs"))
        snr = estimate_snr(images)
        settings = self.settings(ctx, snr=snr)
        stack = ParticleStack.from_star(f["particles"], require_ctf=settings.use_ctf)
        ctf = stack.ctf_params() if settings.use_ctf else None
        resume = self._resume(ctx, settings)
        log.info("abinitio: %d particles, %d px at %.3f A/px, SNR %.3g; SGD for %.3g passes over the data, batch %d, target %.1f A, %d class(es)",
                 len(images), images.shape[-1], px, snr, settings.epochs, settings.batch_size, settings.target_res_A, settings.n_classes)
        engine = Abinitio(images, px, ctf, settings, checkpoint_path=self._checkpoint(ctx),
                          progress=ctx.progress, original_box=f["original_box"])
        result = engine.run(resume=resume)
        main_class = write_outputs(result, stack, ctx.run_dir, f["original_box"])
        hist = result.history.as_array()
        last = dict(zip(result.history.columns, hist[-1])) if len(hist) else {}
        log.info("abinitio: finished; final loss %.5g at %.1f A", last.get("loss", float("nan")), last.get("resolution_A", float("nan")))
        return {"resumed": resume, "settings": asdict(settings), "snr_estimate": snr if math.isfinite(snr) else None,
                "main_class": main_class, "pixel_size_A": result.pixel_size_A,
                "box": int(result.maps.shape[-1]), "iterations": int(len(hist)), "final": last}
