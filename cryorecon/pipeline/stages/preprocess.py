"""The ``preprocess`` stage: the particles of a STAR file, normalised and downsampled."""
from __future__ import annotations

import logging
from pathlib import Path

from ...errors import InputError
from ..config import take

log = logging.getLogger("cryorecon.pipeline")

#: Relative pixel-size mismatch tolerated between the config and the STAR file.
PIXEL_SIZE_RTOL = 1e-3


class PreprocessStage:
    """Load the particles of a STAR file; normalise, whiten, invert and downsample them.

    Writes ``preprocessed.mrcs`` (working box, working pixel size) in the run folder.
    """

    name = "preprocess"
    DEFAULTS = {
        "particles": None, "pixel_size_A": None, "pixel_size_override_A": None, "working_box": "auto", "particle_diameter_A": None,
        "invert_contrast": False, "whiten_noise": False, "phase_flip": False, "ctf": True,
    }

    def __init__(self, table):
        self.params = take(table, self.DEFAULTS, self.name)

    def star_path(self, ctx) -> Path:
        if self.params["particles"] is not None:
            return ctx.config_path(self.params["particles"])
        if "particles" in ctx.facts:
            return Path(ctx.facts["particles"])
        raise InputError("[preprocess] particles: name the particle STAR file, e.g. particles = \"data/particles.star\"")

    def open_stack(self, ctx):
        from ...io.particles import ParticleStack

        p = self.params
        px = p["pixel_size_override_A"] if p["pixel_size_override_A"] is not None else p["pixel_size_A"]
        return ParticleStack.from_star(self.star_path(ctx), pixel_size_A=px, require_ctf=bool(p["ctf"]))

    def _particles_facts(self, ctx):
        """(count, box, STAR pixel size) of the particles, read now or promised by an earlier stage."""
        p = self.params
        star = self.star_path(ctx)
        if star.exists() or "particles" not in ctx.facts or p["particles"] is not None:
            if not star.is_file():
                raise InputError(f"[preprocess] particles = {str(p['particles'] or star)!r}: {star} does not exist: fix the path")
            stack = self.open_stack(ctx)
            return stack.n, stack.box, self._star_pixel_size(star, stack)
        return ctx.facts["n_particles"], ctx.facts["box"], ctx.facts["pixel_size_A"]

    def check(self, ctx):
        p = self.params
        star = self.star_path(ctx)
        n, box, star_px = self._particles_facts(ctx)
        if p["pixel_size_A"] is not None and star_px and abs(p["pixel_size_A"] - star_px) > PIXEL_SIZE_RTOL * star_px:
            raise InputError(
                f"[preprocess] pixel_size_A = {p['pixel_size_A']:g} disagrees with {star} ({star_px:g} A): "
                "remove pixel_size_A to use the STAR file's, or fix rlnImagePixelSize in the STAR file"
            )
        px = float(p["pixel_size_override_A"] or p["pixel_size_A"] or star_px or 0)
        if not px > 0:
            raise InputError(f"{star}: no pixel size in the STAR file or the stack header: set [preprocess] pixel_size_A")
        working = self.working_box(box)
        if working % 2 or working < 16 or working > box:
            raise InputError(f"[preprocess] working_box = {working}: must be even, at least 16 and at most the particle box ({box} px)")
        diameter = p["particle_diameter_A"]
        if diameter is not None and not 0 < diameter / px < box:
            raise InputError(f"[preprocess] particle_diameter_A = {diameter:g}: must be positive and smaller than the box ({box * px:g} A)")
        if p["phase_flip"] and not p["ctf"]:
            raise InputError("[preprocess] phase_flip = true needs CTF parameters: set ctf = true or phase_flip = false")
        ctx.facts.update(n_particles=n, original_box=box, working_box=working,
                         working_pixel_size_A=px * box / working, particles=star,
                         # phase-flipped data follow |CTF| F, which the engine does not model;
                         # it then treats them as CTF-free
                         use_ctf=bool(p["ctf"]) and not p["phase_flip"])

    @staticmethod
    def _star_pixel_size(star, stack) -> float | None:
        """The STAR file's own pixel size (else the stack header's), ignoring any override."""
        from ...io.star import read_particle_table

        df = read_particle_table(star).particles
        if "rlnImagePixelSize" in df.columns:
            return float(df["rlnImagePixelSize"].iloc[0])
        return stack.header_pixel_size_A or None

    def working_box(self, box) -> int:
        """The configured working box; ``"auto"``: min(box, 64) on a CPU, min(box, 128) on a GPU."""
        from ...backend import current_device

        wb = self.params["working_box"]
        if wb == "auto":
            return min(box, 128 if current_device() == "gpu" else 64)
        if not isinstance(wb, int) or isinstance(wb, bool):
            raise InputError(f"[preprocess] working_box = {wb!r}: must be an even integer or \"auto\"")
        return wb

    def inputs(self, ctx):
        star = self.star_path(ctx)
        if not star.exists():
            return [star]
        stack = self.open_stack(ctx)
        return [star, *sorted({Path(p) for p in stack.stack_paths})]

    def outputs(self, ctx):
        return [ctx.path("preprocessed.mrcs")]

    def run(self, ctx):
        from ...io.mrc import write_stack
        from ...progress import progress_bar
        from ...reconstruct.preprocess import phase_flip, prepare_particles

        p = self.params
        stack = self.open_stack(ctx)
        box = self.working_box(stack.box)
        with progress_bar(stack.n, desc="preprocess", unit="img", enabled=ctx.progress) as bar:
            images, px = prepare_particles(
                stack, box, particle_diameter_A=p["particle_diameter_A"], invert_contrast=bool(p["invert_contrast"]),
                whiten_noise=bool(p["whiten_noise"]), progress=bar,
            )
        if p["phase_flip"]:
            images = phase_flip(images, stack.ctf_params(), px)
        write_stack(ctx.path("preprocessed.mrcs"), images, px)
        log.info("preprocessed %d particles: %d px -> %d px, %.3f A/px%s%s%s", stack.n, stack.box, box, px,
                 ", whitened" if p["whiten_noise"] else "", ", inverted" if p["invert_contrast"] else "",
                 ", phase-flipped" if p["phase_flip"] else "")
        return {"n": stack.n, "original_box": stack.box, "working_box": box, "pixel_size_A": px,
                "original_pixel_size_A": stack.pixel_size_A, "star": str(self.star_path(ctx))}
