"""Grids of in-plane translations for the pose search."""
from __future__ import annotations

import numpy as np


def shift_grid(max_shift_px, step_px, disc=True):
    """Translations ``(x, y)`` in pixels on a square lattice, always including (0, 0).

    Parameters
    ----------
    max_shift_px : float
        Largest offset; 0 gives only the origin.
    step_px : float
        Lattice spacing.
    disc : bool
        Keep points with ``x^2 + y^2 <= max_shift_px^2`` (else the full square).

    Returns
    -------
    numpy float64 array (T, 2)
        Row-major over (y, x); columns are ``(x, y)`` origin offsets, the same sign
        convention as ``rlnOriginX/Y`` and :func:`cryorecon.forward.fourier.shift_phase`.

    Examples
    --------
    >>> shift_grid(1, 1).tolist()
    [[0.0, -1.0], [-1.0, 0.0], [0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]
    """
    if step_px <= 0:
        raise ValueError(f"step_px must be positive, got {step_px}")
    n = int(np.floor(max_shift_px / step_px + 1e-9)) if max_shift_px > 0 else 0
    k = np.arange(-n, n + 1) * float(step_px)
    y, x = np.meshgrid(k, k, indexing="ij")
    pts = np.stack([x.ravel(), y.ravel()], axis=1)
    if disc:
        pts = pts[(pts ** 2).sum(axis=1) <= max_shift_px ** 2 * (1 + 1e-9) + 1e-12]
    return pts
