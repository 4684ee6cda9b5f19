"""Choose the array library once: numpy on the CPU, cupy on a CUDA GPU.

Array code asks :func:`get_xp` for the module, or :func:`array_module` for the
module that owns a given array, so one code path serves both. Moves between host
and device are explicit (:func:`to_device`, :func:`to_host`): nothing converts
silently, which is the mistake ASPIRE's users kept hitting (its issues 992, 1197).

The device comes from ``set_device`` (the CLI's ``--device``) or else from the
``CRYORECON_DEVICE`` environment variable, default ``auto``. CuPy is imported
lazily, so a machine without it never pays for or trips over the import.
"""
from __future__ import annotations

import os

import numpy

from ..errors import InputError

DEVICES = ("auto", "cpu", "gpu")
_state = {"xp": None, "device": None}


def _import_cupy_with_device():
    """Return cupy if it imports and a CUDA device answers, else None.

    ``cupy.zeros`` raises ``CUDARuntimeError`` on a machine with cupy but no driver,
    so a real allocation is the only trustworthy probe.
    """
    try:
        import cupy

        cupy.zeros(1, dtype=cupy.float32)
        return cupy
    except Exception:
        return None


def gpu_available() -> bool:
    """True when CuPy is installed and a CUDA device can allocate memory."""
    return _import_cupy_with_device() is not None


def set_device(device: str | None = None):
    """Select the array library for the rest of the process and return it.

    Parameters
    ----------
    device : {"auto", "cpu", "gpu"} or None
        ``None`` reads ``CRYORECON_DEVICE`` (default ``auto``). ``auto`` takes the GPU
        when one answers and falls back to the CPU otherwise; ``gpu`` without one is
        an :class:`~cryorecon.errors.InputError`.
    """
    device = (device or os.environ.get("CRYORECON_DEVICE") or "auto").lower()
    if device not in DEVICES:
        raise InputError(f"--device {device!r} is not one of {', '.join(DEVICES)}")
    if device == "cpu":
        xp, chosen = numpy, "cpu"
    else:
        cupy = _import_cupy_with_device()
        if cupy is None and device == "gpu":
            raise InputError(
                "--device gpu: no CUDA device answered (install cupy-cuda12x via "
                "`pip install cryorecon[gpu]` on a GPU machine, or use --device cpu)"
            )
        xp, chosen = (cupy, "gpu") if cupy is not None else (numpy, "cpu")
    _state["xp"], _state["device"] = xp, chosen
    return xp


def get_xp():
    """The array module chosen by :func:`set_device` (chosen on first use if never set)."""
    if _state["xp"] is None:
        set_device(None)
    return _state["xp"]


def current_device() -> str:
    """``"cpu"`` or ``"gpu"``: what :func:`get_xp` serves."""
    get_xp()
    return _state["device"]


def array_module(*arrays):
    """numpy or cupy: the module owning ``arrays`` (numpy for plain Python values)."""
    for a in arrays:
        mod = type(a).__module__
        if mod.startswith("cupy"):
            import cupy

            return cupy
    return numpy


def to_device(a, xp=None, dtype=None):
    """Move ``a`` onto the chosen device (a no-op for numpy)."""
    xp = xp or get_xp()
    return xp.asarray(a, dtype=dtype)


def to_host(a):
    """Return ``a`` as a numpy array, copying from the GPU where needed."""
    if type(a).__module__.startswith("cupy"):
        return a.get()
    return numpy.asarray(a)
