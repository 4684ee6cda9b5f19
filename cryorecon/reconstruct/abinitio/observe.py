"""Watching an ab initio run as it goes: a callback per SGD iteration, which may stop it.

An *observer* is any callable ``observer(report) -> bool | None``. The SGD phase calls
it after each iteration (after the iteration's own checkpoint, if one is due) with an
:class:`IterationReport`. Returning True asks the run to stop: the phase checkpoints
the state it has just reached and raises :class:`RunStopped`, so a run resumed from that
checkpoint continues bit for bit and ends with the same map as one never stopped.

An observer reaches the engine either explicitly (``Abinitio(..., observer=f)``) or
through :func:`watching`, a context manager that installs it for the runs started
inside it in the same thread or task. The second way exists because the pipeline sits
between a face (the napari widget) and the engine: like a logging handler, a watcher
should not need every layer in between to pass it along.

The hand-over passes after the SGD phase are not observed: they keep no checkpoint to
stop at.
"""
from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ...backend import to_host

__all__ = ["IterationReport", "RunStopped", "current_observer", "watching"]


@dataclass(frozen=True)
class IterationReport:
    """What an observer is told after an SGD iteration.

    Attributes
    ----------
    iteration : int
        SGD iterations done.
    fraction : float
        Share of the SGD phase's budget of image visits spent, in [0, 1].
    row : dict
        The iteration's ``history.csv`` row (``loss``, ``resolution_A``, ...).
    pixel_size_A : float
        Voxel size of the working box the maps live on.
    """

    iteration: int
    fraction: float
    row: dict
    pixel_size_A: float
    _maps: tuple

    def maps(self) -> np.ndarray:
        """The current maps, ``(K, L, L, L)`` float32 on the host (a copy: costs a device read)."""
        return np.stack([np.asarray(to_host(m), dtype=np.float32) for m in self._maps])


class RunStopped(Exception):
    """An observer stopped the run; ``checkpoint`` (None if none was kept) resumes it.

    Attributes
    ----------
    iteration : int
        SGD iterations done when it stopped.
    checkpoint : pathlib.Path or None
    """

    def __init__(self, iteration: int, checkpoint=None):
        self.iteration = int(iteration)
        self.checkpoint = checkpoint
        where = f"checkpoint {checkpoint}" if checkpoint else "no checkpoint: it cannot be resumed"
        super().__init__(f"ab initio stopped at SGD iteration {self.iteration} ({where})")


Observer = Callable[[IterationReport], "bool | None"]

_OBSERVER: contextvars.ContextVar = contextvars.ContextVar("cryorecon_abinitio_observer", default=None)


def current_observer() -> Observer | None:
    """The observer installed by the innermost :func:`watching`, or None."""
    return _OBSERVER.get()


@contextlib.contextmanager
def watching(observer: Observer):
    """Install ``observer`` for the ab initio runs started inside the block.

    Examples
    --------
    >>> seen = []
    >>> with watching(lambda report: seen.append(report.iteration)):
    ...     current_observer() is not None
    True
    >>> current_observer() is None
    True
    """
    token = _OBSERVER.set(observer)
    try:
        yield observer
    finally:
        _OBSERVER.reset(token)
