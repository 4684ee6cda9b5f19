"""Per-step overhead of ``chain(clip_by_global_norm, adam)`` against hand-written Adam.

All run in the same process on the same float32 arrays (64^3 and 256^3 voxels). The
references are the textbook numpy Adam step, updating parameters and moments in place,
and a lean variant that allocates nothing at all. The library step is pure (new moments
and new parameters each step) and also computes the global norm for clipping. Printed:
seconds per step (best of three medians) and the ratios library / reference. The goal
is a ratio of 1.5 or less.

Run: ``python benchmarks/bench_optim.py [--sizes 64 256] [--repeats 15]``.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from cryorecon import optim

LR, B1, B2, EPS = 1e-3, 0.9, 0.999, 1e-8


def reference_adam_step(p, g, m, v, t):
    """Textbook Adam (Kingma & Ba 2015, algorithm 1), in place on p, m, v."""
    m *= B1
    m += (1 - B1) * g
    v *= B2
    v += (1 - B2) * g * g
    m_hat = m / (1 - B1**t)
    v_hat = v / (1 - B2**t)
    p -= LR * m_hat / (np.sqrt(v_hat) + EPS)


def lean_adam_step(p, g, m, v, t, tmp):
    """Adam with every operation in place on preallocated buffers: no allocation at all.

    A harder yardstick than the textbook step: what a careful hand-tuned loop reaches.
    """
    m *= B1
    np.multiply(g, 1 - B1, out=tmp)
    m += tmp
    v *= B2
    np.multiply(g, g, out=tmp)
    tmp *= 1 - B2
    v += tmp
    np.sqrt(v, out=tmp)
    tmp += EPS * np.sqrt(1 - B2**t)
    np.divide(m, tmp, out=tmp)
    tmp *= LR * np.sqrt(1 - B2**t) / (1 - B1**t)
    p -= tmp


def _median_time(step, repeats):
    step()  # warm-up: first-touch page faults and caches
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def bench(n, repeats, rng):
    shape = (n, n, n)
    g = rng.standard_normal(shape, dtype=np.float32)
    p0 = rng.standard_normal(shape, dtype=np.float32)

    ref = {"p": p0.copy(), "m": np.zeros_like(p0), "v": np.zeros_like(p0), "t": 0}

    def ref_step():
        ref["t"] += 1
        reference_adam_step(ref["p"], g, ref["m"], ref["v"], ref["t"])

    lean = {"p": p0.copy(), "m": np.zeros_like(p0), "v": np.zeros_like(p0), "t": 0,
            "tmp": np.empty_like(p0)}

    def lean_step():
        lean["t"] += 1
        lean_adam_step(lean["p"], g, lean["m"], lean["v"], lean["t"], lean["tmp"])

    opt = optim.chain(optim.clip_by_global_norm(1e9), optim.adam(LR, B1, B2, EPS))
    lib = {"p": p0.copy()}
    lib["s"] = opt.init(lib["p"])

    def lib_step():
        u, lib["s"] = opt.update(g, lib["s"], lib["p"])
        lib["p"] = optim.apply_updates(lib["p"], u)

    # Interleave the two so that drifts in machine load hit both alike.
    t_ref, t_lean, t_lib = [], [], []
    for _ in range(3):
        t_ref.append(_median_time(ref_step, repeats))
        t_lean.append(_median_time(lean_step, repeats))
        t_lib.append(_median_time(lib_step, repeats))
    same = np.allclose(ref["p"], lib["p"], rtol=0, atol=1e-5) and np.allclose(
        lean["p"], lib["p"], rtol=0, atol=1e-5)
    return min(t_ref), min(t_lean), min(t_lib), same


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 256])
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    print(f"{'size':>6} {'textbook s':>11} {'in-place s':>11} {'chain s':>9} "
          f"{'ratio/textbook':>15} {'ratio/in-place':>15}  same-result")
    for n in args.sizes:
        t_ref, t_lean, t_lib, same = bench(n, args.repeats, rng)
        print(f"{n:>4}^3 {t_ref:11.5f} {t_lean:11.5f} {t_lib:9.5f} {t_lib / t_ref:15.2f} "
              f"{t_lib / t_lean:15.2f}  {same}")


if __name__ == "__main__":
    main()
