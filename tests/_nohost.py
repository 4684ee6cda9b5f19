"""numpy standing in for cupy, refusing every operation that would need the host.

cupy needs the host (a synchronisation, or a device-to-host copy) for ``bool``/``float``
of an array, boolean-mask indexing and anything whose output size depends on device
values (``nonzero``, ``unique``, ``bincount`` without a length). These stand-ins make
the same operations fail on the CPU, so the device branches of the code can be checked
for host round-trips without a GPU. cupy's ``argpartition`` and ``partition`` are refused
too: they read a value back (``unravel_index`` checks for negative indices), as the
first run on a GPU showed.
"""
import numpy as np


class _HostValue(AssertionError):
    """An operation that needs a value on the host (a device sync on cupy)."""


class _DeviceLike(np.ndarray):
    """A numpy array that refuses what cupy could only do through the host."""

    def __getitem__(self, key):
        for k in key if isinstance(key, tuple) else (key,):
            if isinstance(k, np.ndarray) and k.dtype == bool:
                raise _HostValue("boolean-mask indexing (data-dependent size)")
        return super().__getitem__(key)

    def __bool__(self):
        raise _HostValue("bool() of an array")

    def __float__(self):
        raise _HostValue("float() of an array")

    def __int__(self):
        raise _HostValue("int() of an array")

    def item(self, *args):
        raise _HostValue(".item()")

    def tolist(self):
        raise _HostValue(".tolist()")


class _NoHostXP:
    """numpy standing in for cupy: not ``np`` itself, so the device branches run, and
    its arrays are :class:`_DeviceLike`, so a host round-trip fails the test.

    ``xp.fft`` and ``xp.linalg`` are wrapped too: numpy's FFTs return plain arrays,
    which would quietly leave the device branch.
    """

    _refused = ("nonzero", "flatnonzero", "argwhere", "unique", "bincount", "asnumpy")
    _syncing = ("argpartition", "partition")

    def __init__(self, namespace=np):
        self._namespace = namespace

    def __getattr__(self, name):
        if name in self._refused:
            raise _HostValue(f"xp.{name} has a data-dependent size")
        if name in self._syncing:
            raise _HostValue(f"cupy's {name} reads a value back to the host")
        attr = getattr(self._namespace, name)
        if name in ("fft", "linalg"):
            return _NoHostXP(attr)
        if callable(attr) and not isinstance(attr, (type, np.ufunc)):
            def wrapped(*args, **kwargs):
                out = attr(*args, **kwargs)
                if isinstance(out, tuple):
                    return tuple(_on_device(o) for o in out)
                return _on_device(out)

            return wrapped
        return attr


def _on_device(value):
    """Arrays, and the scalars of full reductions (cupy gives 0-d arrays), as device-like."""
    if isinstance(value, (np.ndarray, np.generic)):
        return np.asarray(value).view(_DeviceLike)
    return value
