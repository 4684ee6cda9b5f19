"""Fitting the work to the device's memory: chunk sizes, OOM retries, batch prefetch.

Three tools, each also usable on numpy (where they are tested without a GPU):

- :func:`pose_chunk_size` turns a number of free bytes into the number of rotations
  scored per chunk (images x shifts x rotations errors plus their temporaries);
  :func:`free_bytes` reads that number from the device (or the host).
- :func:`retry_halving` and :func:`map_chunks` catch an out-of-memory error, release
  the allocator's cached blocks, halve the chunk and try the same work again, so that a
  model that underestimates memory costs a retry, never the run.
- :class:`PrefetchLoader` reads the next mini-batch in a background thread into one of
  two pinned host buffers and copies it to the device on a side stream while the
  current batch computes (double buffering).

CuPy is imported only when an array or the caller asks for it.
"""
from __future__ import annotations

import os
import queue
import sys
import threading

import numpy as np

from ..errors import InputError

# Float32 copies of the (images x shifts) block that scoring one rotation keeps alive at
# its peak: the cross GEMM's output, the assembled errors, the score with the log prior,
# the exp of log-sum-exp and the top-k selection's working copy. The int64 indices of
# the partial sort come on top (_INDEX_BYTES).
_ERROR_COPIES = 5
_INDEX_BYTES = 8


def scoring_bytes_per_rotation(n_images: int, n_shifts: int, n_coeffs: int, itemsize: int = 4) -> int:
    """Device bytes that one more rotation adds to a pose-scoring chunk.

    Parameters
    ----------
    n_images, n_shifts : int
        The batch and the shift grid; errors are (images x shifts) per rotation.
    n_coeffs : int
        Fourier coefficients per slice (``M``; the GEMM's inner size is ``2M``).
    itemsize : int
        Bytes of the real dtype (4 for float32).

    Returns
    -------
    int
        The errors block and its temporaries, plus the slice (complex), its
        ``[Re, Im]`` copy and ``|P|^2``.
    """
    block = n_images * n_shifts
    errors = block * (_ERROR_COPIES * itemsize + _INDEX_BYTES)
    slices = n_coeffs * itemsize * (2 + 2 + 1) + n_images * itemsize
    return int(errors + slices)


def pose_chunk_size(free_bytes, n_images: int, n_shifts: int, n_coeffs: int, n_rotations: int | None = None, itemsize: int = 4, fraction: float = 0.5) -> int:
    """Rotations per pose-scoring chunk that fit in ``fraction`` of ``free_bytes``.

    Parameters
    ----------
    free_bytes : int
        Memory that can be allocated now (:func:`free_bytes`).
    n_images, n_shifts, n_coeffs, itemsize
        As for :func:`scoring_bytes_per_rotation`.
    n_rotations : int, optional
        Never return more than this (the whole grid).
    fraction : float
        Share of the free memory to plan for; the rest absorbs what the model misses
        (cuBLAS workspace, allocator rounding). :func:`retry_halving` catches the rest.

    Returns
    -------
    int
        At least 1.

    Examples
    --------
    >>> pose_chunk_size(2 * 1024**3, n_images=128, n_shifts=25, n_coeffs=500)
    10725
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction {fraction} is not in (0, 1]")
    per = scoring_bytes_per_rotation(n_images, n_shifts, n_coeffs, itemsize)
    chunk = max(1, int(fraction * float(free_bytes)) // per)
    if n_rotations is not None:
        chunk = min(chunk, max(1, int(n_rotations)))
    return int(chunk)


def free_bytes(xp=None) -> int:
    """Bytes that can be allocated now on the device of ``xp`` (numpy: host RAM).

    On cupy this is the driver's free memory plus the blocks cupy's pool holds cached,
    which it hands out again before asking the driver.
    """
    if xp is None or xp is np:
        try:
            return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError, AttributeError):
            return 1 << 30
    free, _total = xp.cuda.runtime.memGetInfo()
    return int(free + xp.get_default_memory_pool().free_bytes())


def oom_errors() -> tuple:
    """The exception types that mean "out of memory": host ``MemoryError`` and, where
    cupy is loaded, ``cupy.cuda.memory.OutOfMemoryError`` (cuBLAS and cuFFT report
    their failed allocations through it as well)."""
    types = [MemoryError]
    cupy = sys.modules.get("cupy")
    if cupy is not None:
        types.append(cupy.cuda.memory.OutOfMemoryError)
    return tuple(types)


def release_cached_memory():
    """Return cupy's cached device and pinned blocks to the driver (no-op without cupy)."""
    cupy = sys.modules.get("cupy")
    if cupy is None:
        return
    try:
        cupy.get_default_memory_pool().free_all_blocks()
        cupy.get_default_pinned_memory_pool().free_all_blocks()
    except Exception:  # cupy without a working driver holds no device memory to free
        pass


def retry_halving(fn, size: int, *, min_size: int = 1, errors=None, on_retry=None):
    """Call ``fn(size)``; on an out-of-memory error halve ``size`` and call again.

    Parameters
    ----------
    fn : callable
        ``fn(size) -> result``; it must be safe to call again after it failed.
    size : int
        The first size to try.
    min_size : int
        Below this, give up.
    errors : tuple of exception types, optional
        What counts as out of memory; default :func:`oom_errors`.
    on_retry : callable, optional
        ``on_retry(failed_size, next_size)``, e.g. to log.

    Returns
    -------
    result, size
        ``fn``'s result and the size that worked; keep using that size.

    Raises
    ------
    InputError
        When even ``min_size`` does not fit (the user must shrink the problem).

    Examples
    --------
    >>> def need_at_most_100(n):
    ...     if n > 100:
    ...         raise MemoryError
    ...     return n
    >>> retry_halving(need_at_most_100, 1000)
    (62, 62)
    """
    errors = oom_errors() if errors is None else tuple(errors)
    size = int(size)
    while True:
        try:
            return fn(size), size
        except errors:
            # The failed attempt's arrays are gone once the exception is handled; give
            # their blocks back so that the smaller try can use them.
            release_cached_memory()
            if size <= min_size:
                raise InputError(
                    f"out of memory even at {size} item(s) per chunk: lower --batch-size, use a smaller box, or use --device cpu"
                ) from None
            nxt = max(min_size, size // 2)
            if on_retry is not None:
                on_retry(size, nxt)
            size = nxt


def map_chunks(fn, n_items: int, chunk: int, *, min_size: int = 1, errors=None, on_retry=None):
    """Yield ``(start, stop, fn(start, stop))`` over ``[0, n_items)``, halving on OOM.

    The range that failed is redone with the smaller chunk, and later chunks keep it, so
    every item is covered exactly once whatever fails.

    Examples
    --------
    >>> [(a, b) for a, b, _ in map_chunks(lambda a, b: None, 10, 4)]
    [(0, 4), (4, 8), (8, 10)]
    """
    start = 0
    while start < n_items:
        def attempt(size, start=start):
            stop = min(n_items, start + size)
            return stop, fn(start, stop)

        (stop, result), chunk = retry_halving(attempt, chunk, min_size=min_size, errors=errors, on_retry=on_retry)
        yield start, stop, result
        start = stop


_DONE = object()


class PrefetchLoader:
    """Iterate over mini-batches while the next one is read and copied in the background.

    A worker thread calls ``fetch(item)`` for the items ahead of the current one and
    writes each result into one of two host buffers. With cupy those are pinned, and
    the copy into one of two device buffers goes on a side stream as soon as the batch
    is read: reading, copying and computing overlap (double buffering). The compute
    stream waits for a batch's copy with an event, and a device buffer is overwritten
    only after the kernels queued on the batch it held have run.

    On cupy a batch is a view of a device buffer: it stays valid until the batch after
    the next one is requested; copy it to keep it longer. On numpy the arrays are the
    ones ``fetch`` made, read one batch ahead.

    Parameters
    ----------
    fetch : callable
        ``fetch(item) -> array or tuple of arrays`` on the host (e.g. particle images
        read from a memory-mapped stack, and their CTF parameters).
    items : iterable
        What to fetch, in order (e.g. the index arrays of the mini-batches).
    xp : module, optional
        numpy or cupy: where the batches are delivered. Default numpy.

    Examples
    --------
    >>> import numpy as np
    >>> data = np.arange(10.0)
    >>> with PrefetchLoader(lambda idx: data[idx], [[0, 1], [2, 3]]) as batches:
    ...     [b.tolist() for b in batches]
    [[0.0, 1.0], [2.0, 3.0]]
    """

    def __init__(self, fetch, items, xp=None):
        self.fetch = fetch
        self.xp = np if xp is None else xp
        self.on_device = self.xp is not np
        self._items = iter(items)
        self._ready = queue.Queue(maxsize=1)
        self._free = queue.Queue()
        self._stop = threading.Event()
        self._finished = False
        self._pinned = [[], []]  # per slot, one pinned host buffer per array of a batch
        self._device_buf = [[], []]  # per slot, the matching device buffers
        self._copied = [None, None]  # per slot: event, its last host-to-device copy done
        self._released = [None, None]  # per slot: event, kernels on its last batch queued
        self._issued = None  # the batch whose copy is under way, not yet handed out
        self._current = None  # slot of the batch handed out last
        for slot in (0, 1):
            self._free.put(slot)
        if self.on_device:
            self._copy_stream = self.xp.cuda.Stream(non_blocking=True)
            self._device = self.xp.cuda.Device()
        self._thread = threading.Thread(target=self._work, name="cryorecon-prefetch", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------ worker side
    def _work(self):
        try:
            if self.on_device:
                self._device.use()
            for item in self._items:
                slot = self._take_slot()
                if slot is None:
                    return
                host = self.fetch(item)
                single = not isinstance(host, tuple)
                arrays = [np.asarray(a) for a in ((host,) if single else host)]
                if self.on_device:
                    arrays = self._to_pinned(slot, arrays)
                if not self._put((slot, single, arrays)):
                    return
            self._put(_DONE)
        except BaseException as exc:  # handed to the consumer, raised there
            self._put(exc)

    def _take_slot(self):
        while not self._stop.is_set():
            try:
                return self._free.get(timeout=0.1)
            except queue.Empty:
                continue
        return None

    def _put(self, entry) -> bool:
        while not self._stop.is_set():
            try:
                self._ready.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _to_pinned(self, slot, arrays):
        import cupyx

        # The last copy out of this slot's host buffer must be over before it is reused.
        if self._copied[slot] is not None:
            self._copied[slot].synchronize()
        buffers = self._pinned[slot]
        out = []
        for j, a in enumerate(arrays):
            if j >= len(buffers):
                buffers.append(None)
            if buffers[j] is None or buffers[j].nbytes < a.nbytes:
                buffers[j] = cupyx.empty_pinned((max(a.nbytes, 1),), dtype=np.uint8)
            view = buffers[j][: a.nbytes].view(a.dtype).reshape(a.shape)
            np.copyto(view, a)
            out.append(view)
        return out

    # ---------------------------------------------------------- consumer side
    def __iter__(self):
        return self

    def _next_entry(self, block: bool):
        """The worker's next batch, None if none is ready (non-blocking), or StopIteration."""
        if self._finished:
            raise StopIteration
        try:
            entry = self._ready.get(block=block)
        except queue.Empty:
            return None
        if entry is _DONE:
            self._finished = True
            raise StopIteration
        if isinstance(entry, BaseException):
            self.close()
            raise entry
        return entry

    def __next__(self):
        if not self.on_device:
            slot, single, arrays = self._next_entry(block=True)
            self._free.put(slot)
            return arrays[0] if single else tuple(arrays)
        compute = self.xp.cuda.get_current_stream()
        if self._current is not None:
            # Everything the caller did with the last batch is queued by now.
            self._released[self._current] = compute.record()
        if self._issued is None:
            self._issued = self._issue_copy(self._next_entry(block=True))
        slot, single, arrays = self._issued
        self._issued = None
        compute.wait_event(self._copied[slot])
        self._current = slot
        # Start the next batch's copy now if it has been read, so it overlaps this one's
        # compute; otherwise it starts when it is asked for.
        try:
            ahead = self._next_entry(block=False)
        except StopIteration:
            ahead = None
        if ahead is not None:
            self._issued = self._issue_copy(ahead)
        return arrays[0] if single else tuple(arrays)

    def _issue_copy(self, entry):
        xp = self.xp
        slot, single, host = entry
        stream = self._copy_stream
        if self._released[slot] is not None:
            stream.wait_event(self._released[slot])
        buffers = self._device_buf[slot]
        out = []
        with stream:
            for j, a in enumerate(host):
                if j >= len(buffers):
                    buffers.append(None)
                if buffers[j] is None or buffers[j].nbytes < a.nbytes:
                    buffers[j] = xp.empty(max(a.nbytes, 1), dtype=xp.uint8)
                d = buffers[j][: a.nbytes].view(a.dtype).reshape(a.shape)
                d.set(a, stream=stream)
                out.append(d)
        self._copied[slot] = stream.record()
        self._free.put(slot)  # its host buffer may be refilled once that copy is done
        return slot, single, out

    def close(self):
        """Stop the worker and release its thread (also done on leaving a ``with``)."""
        self._stop.set()
        while True:
            try:
                self._ready.get_nowait()
            except queue.Empty:
                break
        self._thread.join(timeout=5)
        self._finished = True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False
