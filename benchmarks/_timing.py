"""Timing shared by the benchmarks: best of several calls, synchronising a GPU."""
from __future__ import annotations

import time

import numpy as np


def _sync(xp):
    if xp is not np:
        xp.cuda.Device().synchronize()


def best_time(fn, xp=np, repeats=3):
    """Fastest of ``repeats`` timed calls after one warm-up (plans, kernels, allocator)."""
    fn()
    _sync(xp)
    best = np.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(xp)
        best = min(best, time.perf_counter() - t0)
    return best
