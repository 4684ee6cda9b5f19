"""backend.memory: chunk sizing and halving on out-of-memory.

The numpy paths run everywhere; the ``gpu`` tests use a real device and a memory-pool
limit for a real ``OutOfMemoryError``. The loader's tests are in ``test_prefetch.py``.
"""
import gc

import numpy as np
import pytest

from cryorecon.errors import InputError
from cryorecon.backend.memory import (
    free_bytes,
    map_chunks,
    oom_errors,
    pose_chunk_size,
    retry_halving,
    scoring_bytes_per_rotation,
)

class FakeOOM(Exception):
    """Stands for cupy.cuda.memory.OutOfMemoryError."""


# ------------------------------------------------------------------ chunk sizes
def test_bytes_per_rotation_by_hand():
    # 10 images x 4 shifts: 40 errors x (5 float32 copies + 8-byte index) = 1120;
    # 100 coefficients x 4 bytes x (complex 2 + [Re, Im] 2 + |P|^2 1) = 2000; 10 x 4 norm.
    assert scoring_bytes_per_rotation(10, 4, 100) == 1120 + 2000 + 40


@pytest.mark.parametrize("free", [10**6, 3 * 10**8, 7 * 10**9, 80 * 2**30])
@pytest.mark.parametrize("fraction", [0.25, 0.5, 1.0])
def test_chunk_is_the_largest_that_fits(free, fraction):
    per = scoring_bytes_per_rotation(256, 25, 2000)
    chunk = pose_chunk_size(free, 256, 25, 2000, fraction=fraction)
    budget = fraction * free
    if chunk > 1:
        assert chunk * per <= budget < (chunk + 1) * per
    else:
        assert 2 * per > budget


def test_chunk_grows_with_memory_and_respects_limits():
    sizes = [pose_chunk_size(f, 128, 49, 3000) for f in (1e8, 1e9, 1e10, 1e11)]
    assert sizes == sorted(sizes) and sizes[0] < sizes[-1]
    assert pose_chunk_size(0, 128, 49, 3000) == 1
    assert pose_chunk_size(1e12, 128, 49, 3000, n_rotations=4608) == 4608
    with pytest.raises(ValueError):
        pose_chunk_size(1e9, 1, 1, 1, fraction=0)


def test_free_bytes_on_the_host_is_positive():
    assert free_bytes(np) > 0


# ------------------------------------------------------------------ OOM retries
def _limited(limit, calls):
    def fn(size):
        calls.append(size)
        if size > limit:
            raise FakeOOM(size)
        return size * 10

    return fn


def test_retry_halving_halves_until_it_fits():
    calls, retries = [], []
    result, size = retry_halving(_limited(100, calls), 1000, errors=(FakeOOM,), on_retry=lambda a, b: retries.append((a, b)))
    assert calls == [1000, 500, 250, 125, 62]
    assert (result, size) == (620, 62)
    assert retries == [(1000, 500), (500, 250), (250, 125), (125, 62)]


def test_retry_halving_first_try_and_other_errors():
    calls = []
    assert retry_halving(_limited(100, calls), 80, errors=(FakeOOM,)) == (800, 80)
    assert calls == [80]

    def broken(size):
        calls.append(size)
        raise KeyError("not memory")

    calls.clear()
    with pytest.raises(KeyError):
        retry_halving(broken, 64, errors=(FakeOOM,))
    assert calls == [64]  # other errors are not retried


def test_retry_halving_gives_up_with_an_input_error():
    calls = []
    with pytest.raises(InputError, match="--batch-size"):
        retry_halving(_limited(0, calls), 8, errors=(FakeOOM,))
    assert calls == [8, 4, 2, 1]
    calls.clear()
    with pytest.raises(InputError):
        retry_halving(_limited(3, calls), 64, min_size=16, errors=(FakeOOM,))
    assert calls == [64, 32, 16]


def test_host_memory_error_counts_as_oom_by_default():
    assert MemoryError in oom_errors()
    state = {"n": 0}

    def fn(size):
        state["n"] += 1
        if size > 4:
            raise MemoryError
        return size

    assert retry_halving(fn, 16) == (4, 4)


def test_map_chunks_covers_every_item_once_and_keeps_the_smaller_chunk():
    data = np.arange(1000, dtype=np.float64)
    tried = []

    def fn(start, stop):
        tried.append(stop - start)
        # the middle of the range needs smaller chunks (say, a larger band there)
        if start >= 300 and stop - start > 64:
            raise FakeOOM
        return data[start:stop] ** 2

    pieces = list(map_chunks(fn, len(data), 256, errors=(FakeOOM,)))
    starts = [a for a, _, _ in pieces]
    stops = [b for _, b, _ in pieces]
    assert starts[0] == 0 and stops[-1] == len(data)
    assert starts[1:] == stops[:-1]
    np.testing.assert_array_equal(np.concatenate([r for _, _, r in pieces]), data**2)
    # after the first failure every later chunk uses the halved size
    first_small = next(i for i, (a, b, _) in enumerate(pieces) if b - a == 64)
    assert all(b - a <= 64 for a, b, _ in pieces[first_small:])
    assert 256 in tried and 128 in tried and 64 in tried


def test_map_chunks_of_nothing():
    assert list(map_chunks(lambda a, b: 1 / 0, 0, 10)) == []


# -------------------------------------------------------------------- on the GPU
@pytest.mark.gpu
def test_gpu_free_bytes_and_a_chunk_that_fits():
    import cupy as cp

    free = free_bytes(cp)
    assert 0 < free <= cp.cuda.runtime.memGetInfo()[1] + cp.get_default_memory_pool().total_bytes()
    b, t, m = 256, 25, 1500
    chunk = pose_chunk_size(free, b, t, m, n_rotations=20000)
    # scoring that chunk allocates without an error
    lhs = cp.ones((b * t, 2 * m), cp.float32)
    p = cp.ones((chunk, 2 * m), cp.float32)
    err = lhs @ p.T
    assert err.shape == (b * t, chunk)


@pytest.mark.gpu
def test_gpu_out_of_memory_halves_and_retries():
    import cupy as cp

    gc.collect()  # arrays of earlier tests still alive would leave the limit's room uncertain
    pool = cp.get_default_memory_pool()
    pool.free_all_blocks()
    mb = 2**20
    limit = pool.used_bytes() + 200 * mb
    pool.set_limit(size=limit)
    tried = []
    try:
        def alloc(n_mb):
            tried.append(n_mb)
            a = cp.empty(n_mb * mb, dtype=cp.uint8)
            a.fill(1)
            return int(a.size)

        size_bytes, n_mb = retry_halving(alloc, 4096)
    finally:
        pool.set_limit(size=0)
    # 4096 -> 2048 -> ... halving after each out-of-memory error, until one fits the limit
    assert tried == [4096 >> i for i in range(len(tried))] and len(tried) >= 5
    assert tried[-1] == n_mb and size_bytes == n_mb * mb <= limit
    assert cp.cuda.memory.OutOfMemoryError in oom_errors()
