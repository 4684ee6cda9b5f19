"""Regenerate the sample data set: ``particles.mrcs``, ``particles.star``, ``truth.mrc``.

Run from anywhere: ``python sample_data/make_sample.py``. Every random draw comes from
the seeds below, so the files come out the same on every machine (up to the last bits
of the FFT library).
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from cryorecon.io.mrc import write_map
from cryorecon.io.star import read_particle_table, write_particle_star
from cryorecon.simulation.phantom import chiral_phantom
from cryorecon.simulation.simulate import simulate_dataset

_POSE_COLUMNS = ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst", "rlnOriginYAngst",
                 "rlnOriginX", "rlnOriginY")
HERE = Path(__file__).resolve().parent

#: The recipe; ``sample_data/README.md`` states the same numbers.
RECIPE = {
    "box_px": 48,
    "pixel_size_A": 3.0,
    "n_particles": 1200,
    "snr": 0.1,
    "phantom_seed": 7,
    "simulation_seed": 2024,
    "defocus_range_um": (1.0, 2.5),
    "shift_sigma_px": 1.5,
    "max_shift_px": 4.0,
}


def make_sample(out_dir=HERE, recipe=None) -> dict:
    """Write the sample particles and their truth map into ``out_dir``; return the summary."""
    r = {**RECIPE, **(recipe or {})}
    volume = chiral_phantom(r["box_px"], rng=np.random.default_rng(r["phantom_seed"]))
    with tempfile.TemporaryDirectory() as tmp:
        phantom_path = Path(tmp) / "phantom.mrc"
        write_map(phantom_path, volume, r["pixel_size_A"])
        summary = simulate_dataset(
            phantom_path, out_dir, n=r["n_particles"], snr=r["snr"], seed=r["simulation_seed"],
            pixel_size_A=r["pixel_size_A"], defocus_range_um=r["defocus_range_um"],
            shift_sigma_px=r["shift_sigma_px"], max_shift_px=r["max_shift_px"], ctf=True,
        )
    # The simulator's STAR file holds the truth. Keep it as truth_particles.star and give
    # the pipeline what an extraction job would: the same particles with CTF but without
    # poses or origins (the images stay off-centre by the drawn shifts).
    out = Path(out_dir)
    truth_star = out / "truth_particles.star"
    Path(summary["star"]).replace(truth_star)
    table = read_particle_table(truth_star)
    hidden = [c for c in _POSE_COLUMNS if c in table.particles.columns]
    write_particle_star(out / "particles.star", table.particles.drop(columns=hidden),
                        pixel_size_A=r["pixel_size_A"], image_size=r["box_px"])
    return {**summary, "truth_star": truth_star}


if __name__ == "__main__":
    summary = make_sample()
    print(f"wrote {summary['n']} particles of {summary['box']} px at {summary['pixel_size_A']:g} A/px, "
          f"SNR {summary['snr']:g}: {summary['stack']}, {summary['star']}, truth.mrc")
