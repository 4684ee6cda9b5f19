"""FSC curves to files: ``fsc.csv`` (one column per curve) and ``fsc.png``."""
from __future__ import annotations

import csv

import numpy as np

from ..io.atomic import atomic_open
from ..io.figures import save_png
from .fsc import fsc_resolution_A


def write_fsc_csv(path, shell_index_px, curves, *, box, pixel_size_A=None):
    """Write FSC curves as CSV: shell, frequency (1/A), resolution (A), one column per curve.

    ``curves`` is an (n,) array or a ``{label: (n,) array}`` dict over the same shells.
    Without ``pixel_size_A`` the frequency and resolution columns are in pixels.
    """
    if not isinstance(curves, dict):
        curves = {"fsc": curves}
    shells = np.asarray(shell_index_px, dtype=np.float64)
    px = pixel_size_A or 1.0
    freq = shells / (box * px)
    with np.errstate(divide="ignore"):
        res = np.where(shells > 0, 1.0 / np.where(freq > 0, freq, 1), np.inf)
    unit = "A" if pixel_size_A else "px"
    header = ["shell", f"frequency_1/{unit}", f"resolution_{unit}", *curves]
    with atomic_open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        for i in range(len(shells)):
            w.writerow([int(shells[i]), f"{freq[i]:.6f}", f"{res[i]:.4f}", *(f"{float(c[i]):.6f}" for c in curves.values())])
    return path


def plot_fsc(path, curves, thresholds=(0.143, 0.5), *, box=None, pixel_size_A=None, title=None):
    """Plot FSC curves to a PNG, written atomically.

    Parameters
    ----------
    path : str or Path
        Output PNG.
    curves : dict
        ``{label: (shell_index_px, fsc)}``.
    thresholds : tuple of float
        Horizontal lines, each labelled with every curve's resolution when the pixel size
        is known.
    box, pixel_size_A : optional
        With both, the x axis is spatial frequency (1/A) and resolutions are reported.
    """
    # A bare Figure: no pyplot, no global backend switch (save_png renders with Agg).
    from matplotlib.figure import Figure

    in_A = box is not None and pixel_size_A is not None
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    for label, (shells, values) in curves.items():
        shells = np.asarray(shells, dtype=np.float64)
        x = shells / (box * pixel_size_A) if in_A else shells
        text = label
        if in_A:
            text += " (" + ", ".join(f"{t:g}: {fsc_resolution_A(values, box, pixel_size_A, t):.1f} A" for t in thresholds) + ")"
        ax.plot(x, values, label=text)
    for t in thresholds:
        ax.axhline(t, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("spatial frequency (1/A)" if in_A else "shell (px)")
    ax.set_ylabel("FSC")
    ax.set_ylim(-0.1, 1.05)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    save_png(fig, path, dpi=120)
    return path


__all__ = ["write_fsc_csv", "plot_fsc"]
