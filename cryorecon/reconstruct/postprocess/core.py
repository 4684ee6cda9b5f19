"""``postprocess``: two half-maps in, a mask, the corrected FSC and a sharpened map out (no I/O)."""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from ...errors import InputError
from ...validate.fsc import cubic_pair, fsc, fsc_resolution_A
from .bfactor import GuinierFit, GuinierPlot, SharpenSettings, sharpen
from .fsc_correction import MaskedFsc, last_shell_above, mask_corrected_fsc, warn
from .mask import AutoMaskSettings, check_mask
from .mask import auto_mask as make_auto_mask

__all__ = ["PostprocessResult", "postprocess", "check_half_maps", "parse_b_factor"]

log = logging.getLogger(__name__)

#: The half-map FSC threshold of the final resolution (Rosenthal & Henderson 2003).
THRESHOLD = 0.143


@dataclass(frozen=True)
class PostprocessResult:
    """Everything ``relion_postprocess`` reports, as arrays and numbers.

    Attributes
    ----------
    map : (L, L, L) float32
        The sharpened, FSC-weighted, low-passed average of the half-maps, unmasked.
    mask : (L, L, L) float32 or None
        The solvent mask used (given or automatic); None when unmasked.
    mask_source : {"given", "auto", None}
    pixel_size_A : float
    curves : MaskedFsc or None
        Unmasked, masked, phase-randomised and corrected FSC; None without a mask.
    unmasked_fsc : (L//2 + 1,) float
        FSC of the half-maps as they are.
    final_fsc : (L//2 + 1,) float
        The FSC behind ``resolution_A``: the corrected one, or the unmasked one without
        a mask or when the mask made things worse (RELION's fallback).
    resolution_A : float
        Where ``final_fsc`` drops below 0.143 (interpolated between shells).
    b_factor_A2 : float
        As ``rlnBfactorUsedForSharpening``: negative for a sharpening, 0 for none.
    fit : GuinierFit or None
        The Guinier fit, when the B-factor was fitted.
    guinier : GuinierPlot
    low_pass_A : float or None
        Where the map was low-passed.
    warnings : tuple of str
        RELION's warnings that applied, also issued as
        :class:`~cryorecon.reconstruct.postprocess.PostprocessWarning` and logged.
    """

    map: np.ndarray
    mask: np.ndarray | None
    mask_source: str | None
    pixel_size_A: float
    curves: MaskedFsc | None
    unmasked_fsc: np.ndarray
    final_fsc: np.ndarray
    resolution_A: float
    b_factor_A2: float
    fit: GuinierFit | None
    guinier: GuinierPlot
    low_pass_A: float | None
    warnings: tuple

    @property
    def box(self) -> int:
        return int(self.map.shape[0])

    @property
    def shell_index_px(self) -> np.ndarray:
        return np.arange(len(self.unmasked_fsc))

    @property
    def masked_map(self) -> np.ndarray | None:
        """The sharpened map times the mask (RELION's ``postprocess_masked.mrc``)."""
        return None if self.mask is None else self.map * self.mask

    @property
    def randomise_from_A(self) -> float | None:
        """Resolution of the first phase-randomised shell (``rlnRandomiseFrom``)."""
        if self.curves is None:
            return None
        return self.box * self.pixel_size_A / self.curves.randomise_from_shell


def check_half_maps(half1, half2, names=("half1", "half2")):
    """Both half-maps as float32, or an InputError naming them unless they share a cubic box."""
    a, b = cubic_pair(half1, half2, f"{names[0]} and {names[1]}")
    for arr, name in ((a, names[0]), (b, names[1])):
        if not np.isfinite(arr).all():
            raise InputError(f"{name}: the map holds NaN or infinite values: re-export it")
    return a.astype(np.float32), b.astype(np.float32)


def parse_b_factor(value):
    """``"auto"`` or a finite float (A^2, RELION's sign), or an InputError naming ``--b-factor``."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    try:
        b = float(value)
    except (TypeError, ValueError):
        b = float("nan")
    if not np.isfinite(b):
        raise InputError(f"--b-factor {value}: give auto or a B-factor in A^2 (negative sharpens, e.g. -100)")
    return b


def _judge_mask(curves: MaskedFsc, box, pixel_size_A, force_mask, sink):
    """RELION's two checks on the corrected FSC; returns the FSC to report."""
    corrected_i = last_shell_above(curves.corrected, THRESHOLD)
    unmasked_i = last_shell_above(curves.unmasked, THRESHOLD)
    # Randomised only from Nyquist (already warned about), FSC_rand measures nothing.
    randomised = curves.randomise_from_shell < len(curves.unmasked) - 1
    if unmasked_i > corrected_i:
        if force_mask:
            warn("the unmasked FSC extends beyond the solvent-corrected FSC (mask kept: force_mask)", sink)
        else:
            warn("the unmasked FSC extends beyond the solvent-corrected FSC: the unmasked FSC is reported; "
                 "adjust the mask, or force it", sink)
            return curves.unmasked
    elif randomised and curves.randomised[corrected_i] > 0.1:
        warn(f"the phase-randomised FSC is {curves.randomised[corrected_i]:.3f} (> 0.10) at the estimated "
             f"resolution ({box * pixel_size_A / max(corrected_i, 1):.2f} A): the resolution may be wrong; "
             "use a softer mask with fewer features", sink)
    return curves.corrected


def postprocess(half1, half2, pixel_size_A: float, *, mask=None, auto_mask: AutoMaskSettings | None = AutoMaskSettings(),
                b_factor="auto", sharpening: SharpenSettings = SharpenSettings(), randomize_at_fsc: float = 0.8,
                force_mask: bool = False, rng=0, names=("half1", "half2", "mask")) -> PostprocessResult:
    """Post-process two half-maps like ``relion_postprocess`` (no files read or written).

    1. Mask: ``mask`` if given, else an automatic soft mask of the average
       (:func:`~cryorecon.reconstruct.postprocess.auto_mask`), or none when
       ``auto_mask`` is None too.
    2. FSC: unmasked, masked, phase-randomised and corrected (Chen et al. 2013; see
       :mod:`~cryorecon.reconstruct.postprocess.fsc_correction`); the resolution where
       the corrected FSC drops below 0.143.
    3. Sharpening of the average: FSC weighting, B-factor (Guinier fit from 10 A to the
       resolution, or the one given), low-pass at the resolution
       (:mod:`~cryorecon.reconstruct.postprocess.bfactor`).

    Parameters
    ----------
    half1, half2 : (L, L, L) array
        Independent half-maps, unmasked and unfiltered.
    pixel_size_A : float
        Pixel size in Angstrom.
    mask : (L, L, L) array, optional
        Solvent mask in [0, 1] on the maps' grid.
    auto_mask : AutoMaskSettings or None
        Used when ``mask`` is None; None for no mask (then the FSC is the unmasked one).
    b_factor : "auto" or float
        "auto" fits it; a number (A^2, negative sharpens) is applied as given; 0: none.
    sharpening : SharpenSettings
        Fit range, FSC weighting, low-pass.
    randomize_at_fsc : float
        Randomise phases from where the unmasked FSC drops below this (RELION's 0.8).
    force_mask : bool
        Keep the corrected FSC even when the unmasked one reaches further.
    rng : int or numpy.random.Generator
        Seed of the phase randomisation: same seed, same result.
    names : tuple of 3 str
        What to call the two maps and the mask in error messages (file names in the CLI).

    Returns
    -------
    PostprocessResult

    Raises
    ------
    InputError
        Maps of different boxes, non-cubic or non-finite maps, a non-positive pixel size,
        a mask of another box or outside [0, 1], a bad B-factor, or half-maps that do not
        correlate even at the lowest resolution.
    """
    h1, h2 = check_half_maps(half1, half2, names[:2])
    px = float(pixel_size_A)
    if not (np.isfinite(px) and px > 0):
        raise InputError(f"pixel size {pixel_size_A}: give a positive pixel size in A (--pixel-size)")
    b_factor = parse_b_factor(b_factor)
    L = h1.shape[0]
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    sink: list = []
    combined = 0.5 * (h1 + h2)
    source = None
    if mask is not None:
        mask, source = check_mask(mask, L, names[2]), "given"
    elif auto_mask is not None:
        mask, source = make_auto_mask(combined, px, auto_mask), "auto"
    curves = None
    if mask is not None:
        curves = mask_corrected_fsc(h1, h2, mask, rng, randomize_at_fsc=randomize_at_fsc, sink=sink)
        unmasked = curves.unmasked
        final = _judge_mask(curves, L, px, force_mask, sink)
    else:
        unmasked = final = fsc(h1, h2)[1]
    resolution = fsc_resolution_A(final, L, px, THRESHOLD)
    if not np.isfinite(resolution):
        raise InputError(f"{names[0]} and {names[1]}: their FSC is below {THRESHOLD} from the first shell on: "
                         "give two half-maps of the same particle, aligned")
    # The Guinier plot is read from the map whose noise the weighting FSC describes.
    measured = combined * mask if curves is not None and final is curves.corrected else combined
    sharp = sharpen(combined, px, final, resolution, b_factor, sharpening, amplitude_map=measured)
    if b_factor == "auto" and sharp.fit is None:
        warn(f"no B-factor fitted: fewer than 3 shells between {sharpening.fit_low_res_A:g} A and the "
             f"resolution {resolution:.2f} A; the map is not sharpened (give a B-factor to sharpen)", sink)
    elif b_factor != "auto" and b_factor > 0:
        warn(f"a positive B-factor ({b_factor:g} A^2) blurs the map; a negative one sharpens it", sink)
    for message in sink:
        log.warning(message)
    return PostprocessResult(sharp.map, mask, source, px, curves, np.asarray(unmasked), np.asarray(final), resolution,
                             sharp.b_factor_A2, sharp.fit, sharp.guinier, sharp.low_pass_A, tuple(sink))
