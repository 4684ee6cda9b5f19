"""GPU kernel benchmark: pose scoring against the card's own GEMM rate, and the projector.

Prints, measured in the same run:

- **pose scoring** (:func:`cryorecon.scoring.pose_search.errors_shared`, and the whole
  :func:`cryorecon.scoring.pose_search.global_search` with slice extraction, log-sum-exp and
  top-k) as a fraction of the rate of the bare cuBLAS GEMMs it is made of, for the same
  shapes (``(images x shifts, 2M) @ (2M, rotations)`` and ``(images, M) @ (M, rotations)``),
  in float32 (TF32 was measured and dropped: see cryorecon.backend.kernels);
- **extraction and backprojection** throughput in slices per second (full L x L
  slices, 2x padding) for 64 and 128 px maps.

    python benchmarks/bench_gpu.py [--device gpu|cpu] [--images 256] [--quick]

``--device cpu`` runs the same code on numpy (BLAS instead of cuBLAS), to check the
script anywhere.
"""
from __future__ import annotations

import argparse

import numpy as np

from _timing import best_time

from cryorecon.scoring import pose_search
from cryorecon.backend import set_device
from cryorecon.forward.fourier import band_coords
from cryorecon.geometry.rotations import random_rotations
from cryorecon.backend.memory import free_bytes, pose_chunk_size
from cryorecon.forward.projector import backproject, extract, full_coords, volume_ft


def scoring_case(xp, rng, n_images, n_shifts, L, k_px, n_rot, repeats):
    """Times of the bare GEMMs, of ``errors_shared`` and of ``global_search`` for one shape."""
    coords = band_coords(L, k_px, half=True)[0]
    m = len(coords)
    vol = xp.asarray(rng.standard_normal((L, L, L)), dtype=xp.float32)
    F = volume_ft(vol)
    rot = xp.asarray(random_rotations(n_rot, rng), dtype=xp.float32)
    coords_d = xp.asarray(coords)
    y = xp.asarray(rng.standard_normal((n_images, m)) + 1j * rng.standard_normal((n_images, m)), dtype=xp.complex64)
    ctf = xp.asarray(rng.uniform(-1, 1, (n_images, m)), dtype=xp.float32)
    w = xp.ones(m, xp.float32)
    phases = xp.exp(1j * xp.asarray(rng.uniform(0, 2 * np.pi, (n_shifts, m)), dtype=xp.float32)).astype(xp.complex64)
    terms = pose_search.batch_terms(y, ctf, w, phases)
    slices = extract(F, rot, coords_d)
    p_cat, p_abs2 = pose_search.slice_matrices(slices)
    lhs = terms.cross_lhs.reshape(n_images * n_shifts, 2 * m)
    p_cat_t, p_abs2_t = p_cat.T, p_abs2.T

    def gemms():
        lhs @ p_cat_t
        terms.norm_lhs @ p_abs2_t

    chunk = pose_chunk_size(free_bytes(xp), n_images, n_shifts, m, n_rotations=n_rot)

    def search():
        pose_search.global_search(terms, lambda a, b: extract(F, rot[a:b], coords_d), n_rot, 3, chunk=chunk)

    t_gemm = best_time(gemms, xp, repeats)
    t_score = best_time(lambda: pose_search.errors_shared(terms, slices), xp, repeats)
    t_search = best_time(search, xp, repeats)
    flops = 2.0 * n_images * n_shifts * 2 * m * n_rot + 2.0 * n_images * m * n_rot
    return m, chunk, flops, t_gemm, t_score, t_search


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="gpu")
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--shifts", type=int, default=25)
    ap.add_argument("--rotations", type=int, default=4608, help="a 15-degree grid: 192 directions x 24 in-plane angles")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="small shapes (a smoke test)")
    args = ap.parse_args(argv)
    xp = set_device(args.device)
    rng = np.random.default_rng(0)
    on_gpu = xp is not np
    if on_gpu:
        props = xp.cuda.runtime.getDeviceProperties(xp.cuda.Device().id)
        name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
        print(f"device: {name}, cupy {xp.__version__}, free {free_bytes(xp) / 2**30:.1f} GiB")
    else:
        print("device: cpu (numpy)")
    n_img, n_rot = (32, 384) if args.quick else (args.images, args.rotations)
    # Coarse search at 128 px (band to ~20 A at 1.5 A/px) and a finer band of the local stage.
    shapes = [(128, 10.0), (128, 24.0)] if not args.quick else [(32, 6.0)]

    print("\npose scoring: images x shifts x rotations; fraction = bare-GEMM time / scoring time")
    print(f"{'M':>5} {'B x T x R':>17} {'chunk':>6} {'GEMM TF/s':>10} {'score TF/s':>11} {'frac':>6} {'search TF/s':>12} {'frac':>6}")
    for L, k in shapes:
        m, chunk, flops, t_g, t_s, t_all = scoring_case(xp, rng, n_img, args.shifts, L, k, n_rot, args.repeats)
        shape = f"{n_img}x{args.shifts}x{n_rot}"
        print(
            f"{m:>5} {shape:>17} {chunk:>6} {flops / t_g / 1e12:>10.2f} {flops / t_s / 1e12:>11.2f} "
            f"{t_g / t_s:>6.2f} {flops / t_all / 1e12:>12.2f} {t_g / t_all:>6.2f}"
        )

    print("\nprojector: full L x L slices, pad 2")
    print(f"{'L':>4} {'rotations':>9} {'extract slices/s':>17} {'backproject slices/s':>21}")
    n_slices = 64 if args.quick else 1024
    for L in ((32,) if args.quick else (64, 128)):
        F = volume_ft(xp.asarray(rng.standard_normal((L, L, L)), dtype=xp.float32))
        R = xp.asarray(random_rotations(n_slices, rng), dtype=xp.float32)
        coords = xp.asarray(full_coords(L))
        slices = extract(F, R, coords)
        t_ext = best_time(lambda: extract(F, R, coords), xp, args.repeats)
        t_bp = best_time(lambda: backproject(slices, R, coords, F.shape), xp, args.repeats)
        print(f"{L:>4} {n_slices:>9} {n_slices / t_ext:>17.0f} {n_slices / t_bp:>21.0f}")


if __name__ == "__main__":
    main()
