"""Projector throughput: full-grid slices per second, extraction and backprojection.

Prints, for 64- and 128-px maps and a batch of rotations, the slices per second of
:func:`cryorecon.forward.projector.extract` and :func:`cryorecon.forward.projector.backproject`, and
their time relative to one batched ``fft2`` over the same number of L x L images,
measured in the same run (so the ratio, not the absolute rate, is what to compare
across machines). Runs on the device chosen by ``--device`` (cupy on a GPU).

    python benchmarks/bench_projector.py [--device cpu|gpu|auto] [--batch 256]
"""
from __future__ import annotations

import argparse

import numpy as np

from _timing import best_time

from cryorecon.backend import set_device
from cryorecon.geometry.rotations import random_rotations
from cryorecon.forward.projector import backproject, extract, full_coords, volume_ft


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    xp = set_device(args.device)
    rng = np.random.default_rng(0)
    print(f"device: {'gpu (cupy)' if xp is not np else 'cpu (numpy)'}; batch {args.batch} rotations, pad 2, float32")
    print(f"{'L':>4} {'op':>12} {'slices/s':>12} {'time/fft2':>10}")
    for L in (64, 128):
        vol = xp.asarray(rng.standard_normal((L, L, L)), dtype=xp.float32)
        F = volume_ft(vol)
        R = random_rotations(args.batch, rng)
        coords = xp.asarray(full_coords(L))
        images = xp.asarray(rng.standard_normal((args.batch, L, L)), dtype=xp.float32)
        t_fft = best_time(lambda: xp.fft.fft2(images), xp, args.repeats)
        slices = extract(F, R, coords)
        t_ext = best_time(lambda: extract(F, R, coords), xp, args.repeats)
        t_bp = best_time(lambda: backproject(slices, R, coords, F.shape), xp, args.repeats)
        for name, t in (("fft2", t_fft), ("extract", t_ext), ("backproject", t_bp)):
            print(f"{L:>4} {name:>12} {args.batch / t:>12.0f} {t / t_fft:>10.1f}")


if __name__ == "__main__":
    main()
