"""io.prefetch.PrefetchLoader: every batch in order, read one ahead, errors at their batch.

The numpy paths run everywhere; the ``gpu`` test uses pinned buffers and a side stream
on a real device.
"""
import threading

import numpy as np
import pytest

from cryorecon.io.prefetch import PrefetchLoader

WAIT_S = 10  # deadlock guard only; nothing here measures time


def test_loader_delivers_every_batch_in_order():
    rng = np.random.default_rng(0)
    images = rng.standard_normal((50, 4, 4)).astype(np.float32)
    defocus = rng.uniform(1e4, 2e4, 50)
    batches = [np.sort(rng.choice(50, 8, replace=False)) for _ in range(7)]
    with PrefetchLoader(lambda idx: (images[idx], defocus[idx]), batches) as loader:
        got = list(loader)
    assert len(got) == len(batches)
    for (im, df), idx in zip(got, batches):
        np.testing.assert_array_equal(im, images[idx])
        np.testing.assert_array_equal(df, defocus[idx])


def test_loader_reads_the_next_batch_while_the_current_one_is_in_use():
    started = {i: threading.Event() for i in range(6)}

    def fetch(i):
        started[i].set()
        return np.full(3, i)

    with PrefetchLoader(fetch, range(6)) as loader:
        first = next(loader)
        assert first.tolist() == [0, 0, 0]
        # Without asking for more, the loader is already reading batch 1: a serial
        # loader would wait here forever (the timeout only guards against that).
        assert started[1].wait(WAIT_S)
        rest = [b[0] for b in loader]
    assert rest == [1, 2, 3, 4, 5]


def test_loader_bounds_its_read_ahead():
    count = {"n": 0}
    release = threading.Event()

    def fetch(i):
        count["n"] += 1
        return np.array([i])

    def items():
        for i in range(100):
            yield i

    loader = PrefetchLoader(fetch, items())
    try:
        next(loader)
        # one batch in hand, one queued, one being read into the freed buffer
        for _ in range(50):
            release.wait(0.02)
        assert count["n"] <= 3
    finally:
        loader.close()
    assert not loader._thread.is_alive()


def test_loader_raises_the_fetch_error_at_that_batch():
    def fetch(i):
        if i == 2:
            raise OSError("particles.mrcs: truncated")
        return np.array([i])

    loader = PrefetchLoader(fetch, range(5))
    assert next(loader)[0] == 0 and next(loader)[0] == 1
    with pytest.raises(OSError, match="truncated"):
        next(loader)
    with pytest.raises(StopIteration):
        next(loader)
    assert not loader._thread.is_alive()


@pytest.mark.gpu
def test_gpu_loader_copies_batches_on_a_side_stream_correctly():
    import cupy as cp

    rng = np.random.default_rng(1)
    images = rng.standard_normal((400, 32, 32)).astype(np.float32)
    params = rng.standard_normal(400)
    batches = [rng.choice(400, size, replace=False) for size in (64, 64, 96, 32, 128, 64)]
    big = cp.ones((2048, 2048), cp.float32)
    sums = []
    with PrefetchLoader(lambda idx: (images[idx], params[idx]), batches, xp=cp) as loader:
        for (im, pr), idx in zip(loader, batches):
            assert isinstance(im, cp.ndarray) and im.shape == (len(idx), 32, 32)
            for _ in range(20):  # keep the compute stream busy while the next copy runs
                big = big @ big * (1.0 / 2048)
            sums.append((cp.fft.fft2(im).real.sum(axis=(1, 2)), pr * 2))
        ref = [(np.fft.fft2(images[idx]).real.sum(axis=(1, 2)), params[idx] * 2) for idx in batches]
    # a batch stays valid until the one after next is asked for; the results were made
    # before that, so each must match its own batch
    for (s, p), (rs, rp) in zip(sums, ref):
        np.testing.assert_allclose(cp.asnumpy(s), rs, rtol=1e-4, atol=1e-2)
        np.testing.assert_allclose(cp.asnumpy(p), rp)
