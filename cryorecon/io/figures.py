"""Matplotlib figures written as PNG files, atomically.

The one place where figures are saved: run reports, validation plots and the demos all
call :func:`save_png`. PNG output renders with matplotlib's Agg, so it works without a
display and never switches pyplot's backend; and it imports nothing of
cryo-EM (the demos use it), only :mod:`cryorecon.io.atomic`.
"""
from __future__ import annotations

import sys
from pathlib import Path

from .atomic import atomic_write

__all__ = ["save_png"]


def save_png(fig, path, dpi=120, *, bbox_inches=None) -> Path:
    """Write ``fig`` to ``path`` as a PNG, atomically, and close the figure.

    Parameters
    ----------
    fig : matplotlib.figure.Figure
        Made by pyplot or directly as ``Figure()``.
    path : str or os.PathLike
        Destination; its folder must exist. A crash half-way leaves any old file as it
        was (:func:`~cryorecon.io.atomic.atomic_write`).
    dpi : float
        Resolution in dots per inch.
    bbox_inches : str, optional
        ``"tight"`` crops the canvas to what is drawn (matplotlib's ``savefig``
        option); None keeps the figure's size.

    Returns
    -------
    pathlib.Path
        ``path``.

    Examples
    --------
    >>> import os, tempfile
    >>> from matplotlib.figure import Figure
    >>> fig = Figure(figsize=(2, 2)); _ = fig.subplots().plot([0, 1], [1, 0])
    >>> out = save_png(fig, os.path.join(tempfile.mkdtemp(), "line.png"), dpi=50)
    >>> out.read_bytes()[:4] == b"\\x89PNG"
    True
    """
    path = Path(path)
    try:
        with atomic_write(path) as tmp:
            # format="png" makes matplotlib render with Agg for this call, whatever
            # backend pyplot is set to, so nothing global is switched.
            fig.savefig(tmp, dpi=dpi, format="png", bbox_inches=bbox_inches)
    finally:
        # A pyplot figure stays in pyplot's registry (and memory) until closed; a
        # Figure() made without pyplot is not in it, and pyplot need not be imported.
        plt = sys.modules.get("matplotlib.pyplot")
        if plt is not None:
            plt.close(fig)
    return path
