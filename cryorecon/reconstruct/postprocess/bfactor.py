"""B-factor sharpening: Guinier plot, its straight-line fit, FSC weighting and low-pass.

A map's amplitudes fall off at high resolution as ``exp(-B s^2 / 4)`` (``s = 1/d``, in
1/A) from motion, radiation damage and pose errors; beyond about 10 A a protein's
spectrum is otherwise nearly flat. So ``ln |F|`` against ``s^2`` is a straight line of
slope ``-B/4`` there (Rosenthal & Henderson, J. Mol. Biol. 333, 2003), and multiplying by
``exp(+B s^2 / 4)`` restores the amplitudes.

What this takes from ``relion_postprocess``, so that the numbers compare:

- the line is fitted to the FSC-weighted amplitudes (``sqrt(2 FSC / (1 + FSC))``), not
  to the raw ones. For a map whose FSC describes its own noise the weighted power is
  the signal power (``(S^2 + N^2) * S^2 / (S^2 + N^2)``): noise lifts the raw amplitudes
  near the resolution limit by exactly what the weight takes away;
- the fit runs from 10 A to the final resolution (RELION's ``--autob_lowres``; its upper
  end defaults to the resolution here, where RELION's runs to the last nonzero shell);
- ``B`` is reported as RELION's ``rlnBfactorUsedForSharpening``: ``4 * slope``, negative
  for a sharpening, and applied as ``exp(-B s^2 / 4)``;
- the sharpened map is the unmasked average, FSC-weighted, B-corrected and low-passed
  at the final resolution with a 2-shell raised-cosine edge.

Where it differs: RELION measures the amplitudes on the unmasked average but weights
them with the mask-corrected FSC, which describes the masked map's (lower) noise; the
solvent noise is then under-weighted and the fall-off looks shallower. Here the
amplitudes come from the map the weighting FSC describes: the masked average when the
corrected FSC is used. Measured on a random-atom map blurred by B = 150 A^2 with noise
in two halves (64 px, 1.5 A/px, soft spherical mask, resolution 3.6 A;
``tests/test_postprocess.py``): RELION's pairing gives -116 A^2, the masked average
-145 A^2 (raw, unweighted amplitudes of the unmasked map: -81 A^2).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...forward.fourier import fft3c
from .filters import RadialGrid, apply_filter, bfactor_filter, fsc_weights, low_pass_filter, shell_mean_amplitude

__all__ = ["SharpenSettings", "GuinierPlot", "GuinierFit", "Sharpening", "guinier_values", "fit_guinier", "sharpen"]


@dataclass(frozen=True)
class SharpenSettings:
    """How to sharpen (the B-factor itself is :func:`~cryorecon.reconstruct.postprocess.postprocess`'s ``b_factor``).

    Attributes
    ----------
    fit_low_res_A : float
        Lowest resolution in the Guinier fit (RELION's ``--autob_lowres``, 10 A).
    fit_high_res_A : float or None
        Highest resolution in the fit; None: the final resolution.
    fsc_weighting : bool
        Weight by ``sqrt(2 FSC / (1 + FSC))`` before fitting and sharpening (RELION's
        default; ``--skip_fsc_weighting`` turns it off).
    low_pass_A : float or None
        Low-pass the sharpened map here; None: at the final resolution; 0: not at all.
    filter_edge_shells : float
        Width of the low-pass edge in shells (RELION's ``--filter_edge_width``, 2).
    """

    fit_low_res_A: float = 10.0
    fit_high_res_A: float | None = None
    fsc_weighting: bool = True
    low_pass_A: float | None = None
    filter_edge_shells: float = 2.0


@dataclass(frozen=True)
class GuinierPlot:
    """``ln`` of the shell-averaged amplitude against ``1/d^2`` (shells ``0 .. L//2``).

    ``nan`` where a shell has no amplitude left (RELION writes -99 there). ``weighted``
    is None without FSC weighting.
    """

    resolution_squared: np.ndarray  # 1/A^2
    original: np.ndarray
    weighted: np.ndarray | None
    sharpened: np.ndarray


@dataclass(frozen=True)
class GuinierFit:
    """Least-squares line ``ln|F| = slope * s^2 + intercept`` over the fitted shells."""

    slope: float
    intercept: float
    correlation: float
    low_res_A: float
    high_res_A: float
    n_shells: int

    @property
    def b_factor_A2(self) -> float:
        """``4 * slope``: RELION's ``rlnBfactorUsedForSharpening`` (negative sharpens)."""
        return 4.0 * self.slope


@dataclass(frozen=True)
class Sharpening:
    """A sharpened map and how it was made."""

    map: np.ndarray
    b_factor_A2: float
    fit: GuinierFit | None
    guinier: GuinierPlot
    low_pass_A: float | None


def guinier_values(spectrum, grid: RadialGrid):
    """``(s^2, ln mean|F|)`` per shell ``0 .. L//2``; ``nan`` where the mean is 0."""
    amplitude = shell_mean_amplitude(spectrum, grid)
    with np.errstate(divide="ignore"):
        log_amp = np.where(amplitude > 0, np.log(np.where(amplitude > 0, amplitude, 1.0)), np.nan)
    s = np.arange(grid.n_shells) / grid.box_A
    return s * s, log_amp


def fit_guinier(resolution_squared, log_amplitude, low_res_A: float, high_res_A: float, min_shells: int = 3):
    """Straight line through the Guinier plot between ``low_res_A`` and ``high_res_A``.

    Returns
    -------
    GuinierFit, or None when fewer than ``min_shells`` shells with an amplitude lie in
    the range (e.g. a map whose resolution is worse than ``low_res_A``).

    Examples
    --------
    >>> s2 = (np.arange(20) / 60.0) ** 2
    >>> fit = fit_guinier(s2, 2.0 - 150.0 / 4 * s2, 10.0, 3.5)
    >>> round(fit.b_factor_A2, 6), fit.n_shells
    (-150.0, 12)
    """
    x = np.asarray(resolution_squared, dtype=np.float64)
    y = np.asarray(log_amplitude, dtype=np.float64)
    with np.errstate(divide="ignore"):
        d = np.where(x > 0, 1.0 / np.sqrt(np.where(x > 0, x, 1.0)), np.inf)
    use = (d <= low_res_A) & (d >= high_res_A) & np.isfinite(y)
    if use.sum() < min_shells:
        return None
    slope, intercept = np.polyfit(x[use], y[use], 1)
    correlation = float(np.corrcoef(x[use], y[use])[0, 1])
    return GuinierFit(float(slope), float(intercept), correlation, float(low_res_A), float(high_res_A), int(use.sum()))


def sharpen(combined_map, pixel_size_A: float, fsc_curve, resolution_A: float, b_factor="auto",
            settings: SharpenSettings = SharpenSettings(), *, amplitude_map=None) -> Sharpening:
    """FSC-weight, B-factor-sharpen and low-pass a map, as ``relion_postprocess`` does.

    Parameters
    ----------
    combined_map : (L, L, L) array
        Average of the half-maps (unmasked): the map that is sharpened.
    pixel_size_A : float
    fsc_curve : (L//2 + 1,) array
        The FSC that weights the shells (the mask-corrected one where there is a mask).
    resolution_A : float
        Final resolution: top of the Guinier fit and the low-pass by default.
    b_factor : "auto" or float
        "auto": from the Guinier fit (0 when there are too few shells to fit; the caller
        warns). A number: applied as given, RELION's sign (negative sharpens).
    settings : SharpenSettings
    amplitude_map : (L, L, L) array, optional
        The map whose amplitudes make the Guinier plot: the one ``fsc_curve`` describes
        (the masked average for a mask-corrected FSC). Default ``combined_map``.

    Returns
    -------
    Sharpening
    """
    grid = RadialGrid(np.shape(combined_map)[0], pixel_size_A)
    # FSC weighting also zeroes the corners past Nyquist (as RELION's); without it the
    # filter starts as the identity.
    weights = grid.per_voxel(fsc_weights(fsc_curve)) if settings.fsc_weighting else np.ones(grid.k_px.shape)
    measured = fft3c(np.asarray(combined_map if amplitude_map is None else amplitude_map, dtype=np.float32))
    s2, original = guinier_values(measured, grid)
    weighted = guinier_values(measured * weights, grid)[1] if settings.fsc_weighting else None
    fit = None
    if b_factor == "auto":
        high = settings.fit_high_res_A if settings.fit_high_res_A is not None else resolution_A
        fit = fit_guinier(s2, original if weighted is None else weighted, settings.fit_low_res_A, high)
        b = fit.b_factor_A2 if fit is not None else 0.0
    else:
        b = float(b_factor)
    if b != 0.0:
        weights = weights * bfactor_filter(grid, b)
    sharpened = guinier_values(measured * weights, grid)[1]
    low_pass = resolution_A if settings.low_pass_A is None else (settings.low_pass_A or None)
    if low_pass is not None:
        weights = weights * low_pass_filter(grid, low_pass, settings.filter_edge_shells)
    volume = apply_filter(combined_map, weights)
    return Sharpening(volume, b, fit, GuinierPlot(s2, original, weighted, sharpened), low_pass)
