"""Post-processing of two half-maps, like ``relion_postprocess`` (issue 14).

:func:`postprocess` takes two independent half-maps and returns a
:class:`PostprocessResult`: a soft solvent mask (given, or made from the combined map),
the FSC corrected for that mask by phase randomisation (Chen et al. 2013) with RELION's
warnings, the resolution at 0.143, and the average sharpened by a B-factor from a
Guinier fit with FSC weighting (Rosenthal & Henderson 2003). It reads and writes no
files; :func:`write_postprocess` writes ``postprocess.mrc``, ``mask.mrc``, ``fsc.csv``,
``fsc.png``, ``guinier.png`` and a RELION-style ``postprocess.star``.

One idea per module:

- :mod:`~cryorecon.reconstruct.postprocess.filters`: radial filters and shell averages
  on the centred spectrum;
- :mod:`~cryorecon.reconstruct.postprocess.mask`: the automatic soft mask, mask checks;
- :mod:`~cryorecon.reconstruct.postprocess.fsc_correction`: phase randomisation and the
  corrected FSC;
- :mod:`~cryorecon.reconstruct.postprocess.bfactor`: Guinier fit and sharpening;
- :mod:`~cryorecon.reconstruct.postprocess.core`: :func:`postprocess`;
- :mod:`~cryorecon.reconstruct.postprocess.inputs` and
  :mod:`~cryorecon.reconstruct.postprocess.outputs`: the files in and out.

Warnings are :class:`PostprocessWarning` (``warnings`` module), kept in
``PostprocessResult.warnings`` and logged to this package's logger.

Examples
--------
>>> import numpy as np
>>> from cryorecon.simulation.phantom import chiral_phantom
>>> rng = np.random.default_rng(0)
>>> v = chiral_phantom(32)
>>> h1, h2 = (v + rng.normal(scale=0.05, size=v.shape) for _ in range(2))
>>> result = postprocess(h1, h2, 3.0, auto_mask=AutoMaskSettings(lowpass_A=12.0), b_factor=0.0)
>>> result.mask_source, result.resolution_A < 10.0
('auto', True)
"""
import logging

from .bfactor import GuinierFit, GuinierPlot, SharpenSettings, fit_guinier, sharpen
from .core import PostprocessResult, check_half_maps, parse_b_factor, postprocess
from .fsc_correction import MaskedFsc, PostprocessWarning, corrected_fsc, mask_corrected_fsc, randomise_phases_beyond
from .inputs import PostprocessInputs, read_inputs
from .mask import AutoMaskSettings, auto_mask, check_mask
from .outputs import FILES, star_blocks, write_postprocess

# A library's logger stays silent unless the application configures logging (the
# pipeline's run.log does); warnings reach a terminal through the warnings module.
logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = [
    "postprocess", "PostprocessResult", "read_inputs", "PostprocessInputs", "write_postprocess", "star_blocks", "FILES",
    "AutoMaskSettings", "auto_mask", "check_mask", "check_half_maps", "parse_b_factor",
    "SharpenSettings", "sharpen", "fit_guinier", "GuinierFit", "GuinierPlot",
    "MaskedFsc", "mask_corrected_fsc", "corrected_fsc", "randomise_phases_beyond", "PostprocessWarning",
]
