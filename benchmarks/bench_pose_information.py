"""How much a particle says about its own pose, band by band, when the map is right.

Ab initio can only find the fold at a band where the images pin their poses. This
benchmark measures that directly: it simulates the ``bench_abinitio.py`` data set (same
recipe and seed), reconstructs the true-pose oracle map, low-passes it to each band, and
scores a sample of particles against it over the whole coarse grid that ab initio
searches (every rotation of the 15 degree grid, every shift). For each band it prints:

- the posterior mass within one grid step (15 deg) of the true rotation, median over
  particles (1: the pose is pinned; about 0.003 for a flat posterior);
- the fraction of particles whose most probable rotation is within that step;
- the effective number of rotations, ``exp(entropy)`` of the posterior, median.

These are the best case: no search method can do better than the posterior of the
right map. A band where the mass stays low even then is one where ab initio cannot
bootstrap, whatever its optimiser does.

    python benchmarks/bench_pose_information.py [--snr 0.1 0.02] [--res 70 50 40 30 25]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from scipy.special import entr

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_abinitio import MAP, simulate  # noqa: E402

from cryorecon.forward import fourier, projector  # noqa: E402
from cryorecon.scoring import likelihood, pose_search  # noqa: E402
from cryorecon.geometry.rotations import angular_distance_deg  # noqa: E402
from cryorecon.io.mrc import read_map  # noqa: E402
from cryorecon.reconstruct.abinitio import Abinitio, band_limit_px, default_settings  # noqa: E402


def rotation_posterior(run: Abinitio, f_pad, idx, band, noise):
    """Posterior over the coarse grid's rotations (shifts marginalised), (B, R)."""
    grids = run.grids
    y, ctf = run.batch_data(idx, band)
    phases = fourier.shift_phase(band.coords, band.L, grids.shifts, dtype=y.dtype)
    terms = pose_search.batch_terms(y, ctf, noise.weights(band), phases)
    slices = projector.extract(f_pad, grids.rotations, band.coords, pad=run.s.pad)
    score = pose_search.errors_shared(terms, slices) - grids.log_prior_shift(grids.shifts)[None, :, None]
    log_evidence = -pose_search.logsumexp_neg(np.swapaxes(score, 1, 2))  # (B, R): -log sum_t
    return pose_search.posterior(log_evidence.astype(np.float64), min_weight=0.0)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=3000, help="particles simulated (the oracle uses all of them)")
    parser.add_argument("--sample", type=int, default=200, help="particles whose posteriors are measured")
    parser.add_argument("--snr", type=float, nargs="+", default=[0.1, 0.02])
    parser.add_argument("--res", type=float, nargs="+", default=[70.0, 50.0, 40.0, 30.0, 25.0])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    volume, pixel_size_A = read_map(MAP)
    L = volume.shape[-1]
    settings = default_settings(args.n, L, pixel_size_A, seed=args.seed)
    step = settings.coarse_step_deg
    print(f"{args.n} particles, {L} px, {pixel_size_A} A/px; ab initio starts at {settings.start_res_A:.1f} A; "
          f"grid {step:g} deg, {args.sample} particles measured")
    rows = []
    for snr in args.snr:
        images, rotations, shifts, ctf = simulate(args.n, snr, args.seed + 1, volume, pixel_size_A)
        run = Abinitio(images, pixel_size_A, ctf, settings)
        oracle = run.oracle(rotations, shifts)
        noise = likelihood.NoiseModel.from_images(fourier.fft2c(images[:500]), L // 2 + 2)
        idx = np.arange(min(args.sample, args.n))
        grid = run.grids.rotations
        near = np.stack([angular_distance_deg(grid, np.broadcast_to(rotations[i], grid.shape)) <= step for i in idx])
        for res_A in args.res:
            band = run.band(band_limit_px(res_A, L, pixel_size_A))
            f_pad = projector.volume_ft(run.low_pass(oracle, res_A), pad=settings.pad)
            p = rotation_posterior(run, f_pad, idx, band, noise)
            mass = np.sum(p * near, axis=1)
            best_near = near[np.arange(len(idx)), np.argmax(p, axis=1)]
            entropy = np.sum(entr(p), axis=1)
            rows.append((snr, res_A, float(np.median(mass)), float(np.mean(best_near)), float(np.median(np.exp(entropy)))))
            print(f"SNR {snr:g}, band {res_A:g} A: posterior mass within {step:g} deg of the truth {rows[-1][2]:.3f} (median); "
                  f"best rotation within {step:g} deg for {rows[-1][3]:.2f} of particles; "
                  f"effective rotations {rows[-1][4]:.0f} of {grid.shape[0]}", flush=True)
    return rows


if __name__ == "__main__":
    main()
