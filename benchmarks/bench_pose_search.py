"""Pose-scoring throughput as a fraction of this machine's own float32 GEMM rate.

The hot loop of ab initio scores every (image x shift, rotation) pair with two real
matrix products (see :mod:`cryorecon.scoring.pose_search`). This benchmark times

- ``errors_shared``: the two products plus the elementwise assembly of ``E``;
- ``global_search``: the whole chunked search, with slice look-up, top-k and
  log-sum-exp;

for the shapes of a typical coarse search, and divides their GFLOP/s (counting only the
GEMM flops, ``2 (B T)(2M) R + 2 B M R``) by the GFLOP/s numpy's own ``matmul`` reaches on
exactly the same two products in the same run. A ratio of 1 means scoring costs no more
than its GEMMs.

    python benchmarks/bench_pose_search.py [--images 100] [--repeat 3]
"""
from __future__ import annotations

import argparse

import numpy as np

from _timing import best_time

from cryorecon.scoring import likelihood, pose_search
from cryorecon.forward import projector
from cryorecon.geometry.so3_grid import so3_grid
from cryorecon.geometry.shifts import shift_grid


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    L = 64
    rotations = so3_grid(15.0).astype(np.float32)
    shifts = shift_grid(6.0, 2.0)
    vol = rng.standard_normal((L, L, L)).astype(np.float32)
    f_pad = projector.volume_ft(vol)
    print(f"{args.images} images, {len(shifts)} shifts, {len(rotations)} rotations (15 deg grid), float32")
    print(f"{'k_max px':>8} {'M':>5} {'GEMM GF/s':>10} {'E GF/s':>8} {'E/GEMM':>7} {'search GF/s':>12} {'search/GEMM':>12}")
    for k_max in (8, 12, 16):
        band = likelihood.Band.make(L, k_max)
        m = band.size
        y = (rng.standard_normal((args.images, m)) + 1j * rng.standard_normal((args.images, m))).astype(np.complex64)
        ctf = rng.standard_normal((args.images, m)).astype(np.float32)
        w = np.ones(m, np.float32)
        from cryorecon.forward.fourier import shift_phase

        phases = shift_phase(band.coords, L, shifts)
        terms = pose_search.batch_terms(y, ctf, w, phases)
        chunk = pose_search.rotation_chunk(args.images, len(shifts), m)
        slices = projector.extract_nearest(f_pad, rotations[:chunk], band.coords)
        p_cat, p_abs2 = pose_search.slice_matrices(slices)
        lhs = terms.cross_lhs.reshape(-1, 2 * m)
        r = slices.shape[0]
        flops = 2.0 * lhs.shape[0] * (2 * m) * r + 2.0 * args.images * m * r

        def gemms():
            lhs @ p_cat.T
            terms.norm_lhs @ p_abs2.T

        t_gemm = best_time(gemms, repeats=args.repeat)
        t_err = best_time(lambda: pose_search.errors_shared(terms, slices), repeats=args.repeat)
        n_rot = len(rotations)
        flops_all = flops * n_rot / r
        t_search = best_time(
            lambda: pose_search.global_search(
                terms, lambda a, b: projector.extract_nearest(f_pad, rotations[a:b], band.coords), n_rot, 3, chunk=chunk
            ),
            repeats=1,
        )
        g_gemm, g_err, g_search = flops / t_gemm / 1e9, flops / t_err / 1e9, flops_all / t_search / 1e9
        print(f"{k_max:8d} {m:5d} {g_gemm:10.1f} {g_err:8.1f} {g_err / g_gemm:7.2f} {g_search:12.1f} {g_search / g_gemm:12.2f}")


if __name__ == "__main__":
    main()
