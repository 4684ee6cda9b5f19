"""Fitting the work to the device's memory: chunk sizes and OOM retries.

Two tools, each also usable on numpy (where they are tested without a GPU):

- :func:`pose_chunk_size` turns a number of free bytes into the number of rotations
  scored per chunk (images x shifts x rotations errors plus their temporaries);
  :func:`free_bytes` reads that number from the device (or the host).
- :func:`retry_halving` and :func:`map_chunks` catch an out-of-memory error, release
  the allocator's cached blocks, halve the chunk and try the same work again, so that a
  model that underestimates memory costs a retry, never the run.

The particle loader that reads ahead onto the device is
:class:`cryorecon.io.prefetch.PrefetchLoader`.

CuPy is imported only when an array or the caller asks for it.
"""
from __future__ import annotations

import os
import sys

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
