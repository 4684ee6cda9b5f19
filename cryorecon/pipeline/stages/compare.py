"""The ``compare`` stage: the map against a reference, through :func:`cryorecon.validate.compare_maps`."""
from __future__ import annotations

import logging
from pathlib import Path

from ...errors import InputError
from ..config import take

log = logging.getLogger("cryorecon.pipeline")


class CompareStage:
    """Align the map to a reference (rotation, mirror, shift) and compute the FSC.

    Writes ``map_aligned.mrc``, ``fsc.csv`` and ``fsc.png``; with ``truth_star`` (the
    true poses) also the mean/median pose error after the alignment. The comparison
    itself is :func:`cryorecon.validate.compare_maps`.
    """

    name = "compare"
    DEFAULTS = {"reference": None, "truth_star": None, "mask_radius_A": None}

    def __init__(self, table):
        self.params = take(table, self.DEFAULTS, self.name)

    def reference(self, ctx) -> Path:
        if self.params["reference"] is not None:
            return ctx.config_path(self.params["reference"])
        if "truth_map" in ctx.facts:
            return Path(ctx.facts["truth_map"])
        raise InputError("[compare] reference: name the reference map, e.g. reference = \"truth.mrc\"")

    def truth_star(self, ctx):
        if self.params["truth_star"] is not None:
            return ctx.config_path(self.params["truth_star"])
        if "truth_map" in ctx.facts:  # a simulate stage: its STAR file holds the true poses
            return Path(ctx.facts["particles"])
        return None

    def check(self, ctx):
        ref = self.reference(ctx)
        if self.params["reference"] is not None and not ref.is_file():
            raise InputError(f"[compare] reference = {self.params['reference']!r}: {ref} does not exist: fix the path")
        ts = self.truth_star(ctx)
        if self.params["truth_star"] is not None and not ts.is_file():
            raise InputError(f"[compare] truth_star = {self.params['truth_star']!r}: {ts} does not exist: fix the path")
        radius = self.params["mask_radius_A"]
        is_number = isinstance(radius, (int, float)) and not isinstance(radius, bool)
        if radius is not None and not (is_number and radius > 0):
            raise InputError(f"[compare] mask_radius_A = {radius!r}: must be a positive number of Angstrom")
        if ref.is_file():
            from ...io.mrc import read_header_info

            shape = read_header_info(ref)["shape"]
            if len(shape) != 3 or len(set(shape)) != 1:
                raise InputError(f"[compare] reference {ref}: need a cubic 3D map, got shape {shape}")

    def inputs(self, ctx):
        ts = self.truth_star(ctx)
        return [ctx.path("map.mrc"), self.reference(ctx)] + ([ctx.path("particles.star"), ts] if ts else [])

    def outputs(self, ctx):
        return [ctx.path("map_aligned.mrc"), ctx.path("fsc.csv"), ctx.path("fsc.png")]

    def _poses(self, ctx):
        """(estimated, true) rotations where a truth STAR file is known, else (None, None)."""
        from ...io.particles import ParticleStack

        ts = self.truth_star(ctx)
        if ts is None:
            return None, None
        est = ParticleStack.from_star(ctx.path("particles.star"), require_ctf=False).rotations
        return est, ParticleStack.from_star(ts, require_ctf=False).rotations

    def run(self, ctx):
        from ...forward.masks import soft_sphere
        from ...io.mrc import read_map, write_map
        from ...validate import compare_maps

        vol, px = read_map(ctx.path("map.mrc"))
        ref, ref_px = read_map(self.reference(ctx))
        mask = None
        if self.params["mask_radius_A"] is not None:
            mask = soft_sphere(vol.shape[0], self.params["mask_radius_A"] / px)
        est, true = self._poses(ctx)
        result = compare_maps(vol, ref, px, reference_pixel_size_A=ref_px or px, mask=mask,
                              est_rotations=est, true_rotations=true, reference_label=str(self.reference(ctx)))
        write_map(ctx.path("map_aligned.mrc"), result.aligned_map, px)
        result.write_fsc(ctx.path("fsc.csv"), ctx.path("fsc.png"), label="ab initio map vs reference",
                         column="fsc_vs_reference", title="FSC against the reference (after alignment)")
        out = {"reference": str(self.reference(ctx)), **result.summary()}
        log.info("compare: %s; FSC 0.5 %.2f A, 0.143 %.2f A%s", "mirrored" if out["mirrored"] else "same hand",
                 out["fsc_0.5_A"], out["fsc_0.143_A"],
                 f"; median pose error {out['pose_error_median_deg']:.1f} deg" if "pose_error_median_deg" in out else "")
        return out
