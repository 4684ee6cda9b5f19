"""Read-ahead for the lazy particle source: the next mini-batch loads while this one computes.

:class:`PrefetchLoader` reads the next mini-batch in a background thread into one of
two host buffers (pinned under cupy) and copies it to the device on a side stream while
the current batch computes (double buffering). It works on numpy as well, where it only
reads ahead; CuPy is used only when ``xp`` is cupy.
"""
from __future__ import annotations

import queue
import threading

import numpy as np

__all__ = ["PrefetchLoader"]

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
