"""The files of post-processing, as ``relion_postprocess`` writes them.

``postprocess.mrc`` (sharpened, unmasked) and ``postprocess_masked.mrc``, ``mask.mrc``,
``fsc.csv`` and ``fsc.png`` (the four FSC curves), ``guinier.png`` and
``postprocess.star`` with RELION's blocks and labels: ``data_general``
(``rlnFinalResolution``, ``rlnBfactorUsedForSharpening`` ...), the ``data_fsc`` loop and
the ``data_guinier`` loop. Every file is written atomically.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import starfile

from ...io.atomic import atomic_write
from ...io.figures import save_png
from ...io.mrc import write_map
from ...validate.curves import plot_fsc, write_fsc_csv
from .core import THRESHOLD, PostprocessResult

__all__ = ["write_postprocess", "star_blocks", "plot_guinier", "FILES"]

#: Output names inside the output folder.
FILES = {
    "map": "postprocess.mrc", "masked_map": "postprocess_masked.mrc", "mask": "mask.mrc",
    "fsc_csv": "fsc.csv", "fsc_png": "fsc.png", "guinier_png": "guinier.png", "star": "postprocess.star",
}

#: RELION writes this where a Guinier point has no amplitude (readers skip values <= -90).
_NO_AMPLITUDE = -99.0


def _resolution_columns(result: PostprocessResult):
    shells = result.shell_index_px
    with np.errstate(divide="ignore"):
        # RELION's convention for shell 0 (the mean): 999 A.
        res_A = np.where(shells > 0, result.box * result.pixel_size_A / np.maximum(shells, 1), 999.0)
    return shells, 1.0 / res_A, res_A


def _fsc_curves(result: PostprocessResult) -> dict:
    """``{label: curve}`` in the order of RELION's ``data_fsc`` columns (and fsc.csv)."""
    if result.curves is None:
        return {"unmasked": result.unmasked_fsc, "corrected": result.final_fsc}
    return {"corrected": result.final_fsc, "unmasked": result.unmasked_fsc, "masked": result.curves.masked,
            "phase_randomised_masked": result.curves.randomised}


def star_blocks(result: PostprocessResult, half_map_names=("half1.mrc", "half2.mrc")) -> dict:
    """``{"general": dict, "fsc": DataFrame, "guinier": DataFrame}`` as RELION labels them."""
    general = {
        "rlnFinalResolution": float(result.resolution_A),
        "rlnBfactorUsedForSharpening": float(result.b_factor_A2),
        "rlnUnfilteredMapHalf1": str(half_map_names[0]),
        "rlnUnfilteredMapHalf2": str(half_map_names[1]),
    }
    if result.mask is not None:
        general["rlnMaskName"] = FILES["mask"]
        general["rlnRandomiseFrom"] = float(result.randomise_from_A)
    if result.fit is not None:
        general["rlnFittedSlopeGuinierPlot"] = result.fit.slope
        general["rlnFittedInterceptGuinierPlot"] = result.fit.intercept
        general["rlnCorrelationFitGuinierPlot"] = result.fit.correlation
    shells, inv_A, res_A = _resolution_columns(result)
    fsc = pd.DataFrame({"rlnSpectralIndex": shells.astype(int), "rlnResolution": inv_A, "rlnAngstromResolution": res_A})
    labels = {"corrected": "rlnFourierShellCorrelationCorrected", "unmasked": "rlnFourierShellCorrelationUnmaskedMaps",
              "masked": "rlnFourierShellCorrelationMaskedMaps",
              "phase_randomised_masked": "rlnCorrectedFourierShellCorrelationPhaseRandomizedMaskedMaps"}
    curves = _fsc_curves(result)
    if result.curves is None:
        # RELION's unmasked output holds one FSC column, the unmasked one.
        curves = {"unmasked": curves["unmasked"]}
    for key, curve in curves.items():
        fsc[labels[key]] = np.asarray(curve, dtype=np.float64)
    g = result.guinier

    def log_column(values):
        return np.where(np.isfinite(values), values, _NO_AMPLITUDE)

    guinier = pd.DataFrame({"rlnResolutionSquared": g.resolution_squared, "rlnLogAmplitudesOriginal": log_column(g.original)})
    if g.weighted is not None:
        guinier["rlnLogAmplitudesWeighted"] = log_column(g.weighted)
    if result.b_factor_A2 != 0:
        guinier["rlnLogAmplitudesSharpened"] = log_column(g.sharpened)
    if result.fit is not None:
        guinier["rlnLogAmplitudesIntercept"] = result.fit.intercept
    return {"general": general, "fsc": fsc, "guinier": guinier}


def plot_guinier(path, result: PostprocessResult):
    """``ln |F|`` against ``1/d^2``: original, FSC-weighted, sharpened, and the fitted line."""
    # A bare Figure: no pyplot, no global backend switch (save_png renders with Agg).
    from matplotlib.figure import Figure

    g = result.guinier
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    ax.plot(g.resolution_squared, g.original, label="original")
    if g.weighted is not None:
        ax.plot(g.resolution_squared, g.weighted, label="FSC-weighted")
    if result.b_factor_A2 != 0:
        ax.plot(g.resolution_squared, g.sharpened, label=f"sharpened (B = {result.b_factor_A2:.1f} A^2)")
    if result.fit is not None:
        f = result.fit
        x = np.array([1.0 / f.low_res_A**2, 1.0 / f.high_res_A**2])
        ax.plot(x, f.slope * x + f.intercept, "k--", lw=1,
                label=f"fit {f.low_res_A:.1f}-{f.high_res_A:.1f} A (r = {f.correlation:.3f})")
    ax.set_xlabel("resolution^2 (1/A^2)")
    ax.set_ylabel("ln(amplitude)")
    ax.legend(fontsize=8)
    ax.set_title("Guinier plot")
    save_png(fig, path, dpi=120)
    return Path(path)


def write_postprocess(result: PostprocessResult, out_dir, half_map_names=("half1.mrc", "half2.mrc")) -> dict:
    """Write every output of :func:`~cryorecon.reconstruct.postprocess.postprocess` into ``out_dir``.

    Parameters
    ----------
    result : PostprocessResult
    out_dir : str or Path
        Created if missing. Files already there are replaced one by one, atomically.
    half_map_names : pair of str
        Recorded as ``rlnUnfilteredMapHalf1/2`` in ``postprocess.star``.

    Returns
    -------
    dict
        ``{key: Path}`` of the files written (keys of :data:`FILES`; no mask files
        without a mask).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {key: out / name for key, name in FILES.items()}
    if result.mask is None:
        del paths["mask"], paths["masked_map"]
    else:
        write_map(paths["mask"], result.mask, result.pixel_size_A)
        write_map(paths["masked_map"], result.masked_map, result.pixel_size_A)
    write_map(paths["map"], result.map, result.pixel_size_A)
    curves = _fsc_curves(result)
    write_fsc_csv(paths["fsc_csv"], result.shell_index_px, curves, box=result.box, pixel_size_A=result.pixel_size_A)
    plot_fsc(paths["fsc_png"], {k.replace("_", " "): (result.shell_index_px, v) for k, v in curves.items()},
             thresholds=(THRESHOLD,), box=result.box, pixel_size_A=result.pixel_size_A,
             title=f"final resolution {result.resolution_A:.2f} A")
    plot_guinier(paths["guinier_png"], result)
    with atomic_write(paths["star"]) as tmp:
        # No float format: pandas writes the shortest repr that round-trips float64
        # (starfile's default %.6f would flatten the small 1/A^2 values to 0).
        starfile.write(star_blocks(result, half_map_names), tmp, float_format=None)
    return paths
