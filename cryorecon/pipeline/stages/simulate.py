"""The ``simulate`` stage: particles from a map (or the chiral phantom) with CTF, shifts and noise."""
from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np

from ...errors import InputError
from ..config import take

log = logging.getLogger("cryorecon.pipeline")


class SimulateStage:
    """Particles simulated from a map (or the chiral phantom) with CTF, shifts and noise.

    Writes ``simulated/particles.star``, ``simulated/particles.mrcs`` and
    ``simulated/truth.mrc`` in the run folder; later stages take them by default.
    """

    name = "simulate"
    DEFAULTS = {
        "map": "phantom", "box": 32, "pixel_size_A": 4.0, "n": 1000, "snr": 0.1,
        "defocus_range_um": [1.0, 2.5], "shift_sigma_px": 1.5, "max_shift_px": 4.0, "ctf": True,
    }

    def __init__(self, table):
        self.params = take(table, self.DEFAULTS, self.name)

    def check(self, ctx):
        p = self.params
        if p["map"] != "phantom":
            path = ctx.config_path(p["map"])
            if not path.is_file():
                raise InputError(f"[simulate] map = {p['map']!r}: {path} does not exist: fix the path or use \"phantom\"")
            from ...io.mrc import read_header_info

            box = read_header_info(path)["shape"][-1]
        else:
            box = int(p["box"])
            if box < 16 or box % 2:
                raise InputError(f"[simulate] box = {p['box']}: must be even and at least 16")
        if int(p["n"]) < 1:
            raise InputError(f"[simulate] n = {p['n']}: must be at least 1")
        ctx.facts.update(n_particles=int(p["n"]), box=box, pixel_size_A=float(p["pixel_size_A"]),
                         particles=self._dir(ctx) / "particles.star", truth_map=self._dir(ctx) / "truth.mrc")

    def _dir(self, ctx):
        return ctx.path("simulated")

    def inputs(self, ctx):
        return [] if self.params["map"] == "phantom" else [ctx.config_path(self.params["map"])]

    def outputs(self, ctx):
        d = self._dir(ctx)
        return [d / "particles.star", d / "particles.mrcs", d / "truth.mrc"]

    def run(self, ctx):
        from ...io.mrc import write_map
        from ...simulation.phantom import chiral_phantom
        from ...simulation.simulate import simulate_dataset

        p = self.params
        with tempfile.TemporaryDirectory() as tmp:
            if p["map"] == "phantom":
                src = Path(tmp) / "phantom.mrc"
                write_map(src, chiral_phantom(int(p["box"]), rng=np.random.default_rng([ctx.seed, 7])), float(p["pixel_size_A"]))
            else:
                src = ctx.config_path(p["map"])
            summary = simulate_dataset(
                src, self._dir(ctx), n=int(p["n"]), snr=float(p["snr"]), seed=ctx.seed,
                pixel_size_A=float(p["pixel_size_A"]), defocus_range_um=tuple(p["defocus_range_um"]),
                shift_sigma_px=float(p["shift_sigma_px"]), max_shift_px=float(p["max_shift_px"]), ctf=bool(p["ctf"]),
            )
        log.info("simulated %d particles of %d px at %g A/px, SNR %g", summary["n"], summary["box"], summary["pixel_size_A"], summary["snr"])
        return {"n": summary["n"], "box": summary["box"], "pixel_size_A": summary["pixel_size_A"], "snr": summary["snr"]}
