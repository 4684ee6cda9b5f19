"""The ``plots`` stage: ``loss.png``, ``slices.png`` and ``projections.png`` of a run."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ...errors import InputError
from ..config import take


class PlotsStage:
    """``loss.png``, ``slices.png`` and ``projections.png`` from the ab initio outputs."""

    name = "plots"
    DEFAULTS = {"n_views": 6, "view_tolerance_deg": 15.0}

    def __init__(self, table):
        self.params = take(table, self.DEFAULTS, self.name)

    def check(self, ctx):
        if not 1 <= int(self.params["n_views"]) <= 12:
            raise InputError(f"[plots] n_views = {self.params['n_views']}: choose 1 to 12")

    def _compared(self, ctx) -> list[Path]:
        """The aligned map and its reference, where a compare stage of this run made them."""
        ref = ctx.results.get("compare", {}).get("reference")
        return [ctx.path("map_aligned.mrc"), Path(ref)] if ref else []

    def inputs(self, ctx):
        base = [ctx.path("history.csv"), ctx.path("map.mrc"), ctx.path("particles.star"), ctx.path("preprocessed.mrcs")]
        return base + self._compared(ctx)

    def outputs(self, ctx):
        return [ctx.path("loss.png"), ctx.path("slices.png"), ctx.path("projections.png")]

    def _maps_shown(self, ctx, vol, px) -> dict:
        """The map, and beside it the aligned map and the reference on the map's grid."""
        from ...io.mrc import read_map
        from ...validate import on_map_grid

        shown = {"ab initio map": vol}
        compared = self._compared(ctx)
        if compared:
            aligned, _ = read_map(compared[0])
            ref, ref_px = read_map(compared[1])
            # the same regridding the compare stage used, so the panels match its FSC
            ref = on_map_grid(ref, vol.shape[0], px, ref_px or px, label=str(compared[1]))
            shown.update({"aligned to reference": aligned, "reference": ref})
        return shown

    def run(self, ctx):
        from ...io.mrc import read_map
        from ...io.particles import ParticleStack
        from ...report import plots

        plots.plot_history(ctx.path("loss.png"), plots.read_history_csv(ctx.path("history.csv")))
        vol, px = read_map(ctx.path("map.mrc"))
        plots.plot_slices(ctx.path("slices.png"), self._maps_shown(ctx, vol, px), px)
        images, img_px = read_map(ctx.path("preprocessed.mrcs"))
        est = ParticleStack.from_star(ctx.path("particles.star"), require_ctf=False)
        ctf = est.ctf_params() if est.has_ctf else None
        views = plots.plot_projections(
            ctx.path("projections.png"), vol, est.rotations, est.shifts_A / img_px, images, img_px, ctf_params=ctf,
            n_views=int(self.params["n_views"]), tolerance_deg=float(self.params["view_tolerance_deg"]),
            rng=np.random.default_rng([ctx.seed, 11]),
        )
        return {"views": views}
