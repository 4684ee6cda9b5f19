"""The FSC corrected for the mask by phase randomisation (Chen et al. 2013).

A mask multiplies both half-maps by the same function, so its own Fourier components
and the signal near its edge come out alike in both halves and correlate: the masked FSC
reads too high. Chen et al. (Ultramicroscopy 135, 2013) measure that bias directly.
Beyond the shell where the unmasked FSC first drops below 0.8 (RELION's
``--randomize_at_fsc``), the phases of both half-maps are replaced by independent
random ones, so any true correlation there is gone; the masked FSC of those maps,
``FSC_rand``, is then the mask's contribution alone, and

    FSC_true = (FSC_masked - FSC_rand) / (1 - FSC_rand)

beyond the randomisation shell, ``FSC_masked`` before it. As RELION does (since 2015),
the formula starts two shells past the randomisation shell, where the sharp step in the
randomised spectra has stopped leaving artefacts.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from ...forward.fourier import fft3c, ifft3c
from ...forward.masks import radial_distance
from ...validate.fsc import fsc

__all__ = [
    "PostprocessWarning", "MaskedFsc", "randomise_phases_beyond", "randomisation_shell",
    "corrected_fsc", "mask_corrected_fsc", "last_shell_above",
]

#: Shells between the randomisation shell and the first one that is corrected (RELION).
CORRECTION_OFFSET_SHELLS = 2


class PostprocessWarning(UserWarning):
    """A result to look at twice: RELION prints the same warnings."""


def warn(message: str, sink: list) -> None:
    """Issue ``message`` as a :class:`PostprocessWarning` and keep it in ``sink``."""
    sink.append(message)
    warnings.warn(message, PostprocessWarning, stacklevel=3)


@dataclass(frozen=True)
class MaskedFsc:
    """The four FSC curves of post-processing, over the 1-pixel shells ``0 .. L//2``.

    Attributes
    ----------
    shell_index_px : (n,) int
    unmasked, masked : (n,) float
        FSC of the half-maps as they are, and after multiplying both by the mask.
    randomised : (n,) float
        Masked FSC of the half-maps whose phases were randomised from
        ``randomise_from_shell`` on.
    corrected : (n,) float
        ``masked`` up to ``randomise_from_shell + 2``, then Chen's correction.
    randomise_from_shell : int
        First shell randomised (``|k| >= shell``).
    """

    shell_index_px: np.ndarray
    unmasked: np.ndarray
    masked: np.ndarray
    randomised: np.ndarray
    corrected: np.ndarray
    randomise_from_shell: int


def randomise_phases_beyond(volume, shell_px: float, rng: np.random.Generator):
    """The map with every Fourier phase at ``|k| >= shell_px`` replaced by a random one.

    Amplitudes are kept. The random phases are those of the transform of white Gaussian
    noise, uniform on the circle and Hermitian-symmetric like a real map's, so the result
    is real without any symmetrisation.

    Parameters
    ----------
    volume : (L, L, L) array
    shell_px : float
        Pixel frequency from which phases are random (RELION's ``randomize_at``).
    rng : numpy.random.Generator
        Source of the noise; one ``standard_normal`` draw of the box.

    Returns
    -------
    (L, L, L) float32
    """
    v = np.asarray(volume, dtype=np.float32)
    spectrum = fft3c(v)
    noise = fft3c(rng.standard_normal(v.shape, dtype=np.float32))
    phase = noise / np.where(noise == 0, 1, np.abs(noise))
    beyond = radial_distance(v.shape[0], 3, dtype=np.float64) >= shell_px
    spectrum = np.where(beyond, np.abs(spectrum) * phase, spectrum)
    return ifft3c(spectrum).real.astype(np.float32)


def randomisation_shell(unmasked, randomize_at_fsc: float = 0.8):
    """First shell (from 1) whose unmasked FSC is below ``randomize_at_fsc``, or None."""
    below = np.nonzero(np.asarray(unmasked)[1:] < randomize_at_fsc)[0]
    return int(below[0]) + 1 if below.size else None


def corrected_fsc(masked, randomised, randomise_from_shell: int):
    """Chen's ``(FSC_masked - FSC_rand) / (1 - FSC_rand)`` from two shells past the randomisation.

    Examples
    --------
    >>> corrected_fsc([1.0, 0.9, 0.8, 0.6, 0.5], [1.0, 0.9, 0.7, 0.2, 0.5], 1).round(3).tolist()
    [1.0, 0.9, 0.8, 0.5, 0.0]
    """
    m = np.array(masked, dtype=np.float64)
    r = np.array(randomised, dtype=np.float64)
    # The mean (shell 0) of masked maps can come out <= 0; RELION sets it to 1 then.
    m[0] = m[0] if m[0] > 0 else 1.0
    r[0] = r[0] if r[0] > 0 else 1.0
    out = m.copy()
    start = randomise_from_shell + CORRECTION_OFFSET_SHELLS
    tail = slice(start, None)
    denom = 1.0 - r[tail]
    out[tail] = np.divide(m[tail] - r[tail], denom, out=np.zeros_like(denom), where=np.abs(denom) > 1e-12)
    return out


def last_shell_above(curve, threshold: float = 0.143) -> int:
    """Last shell before the curve first drops below ``threshold`` (0 if shell 0 does).

    RELION judges masks by this whole-shell index; the reported resolution interpolates.
    """
    below = np.nonzero(np.asarray(curve) < threshold)[0]
    if below.size == 0:
        return len(curve) - 1
    return max(int(below[0]) - 1, 0)


def mask_corrected_fsc(half1, half2, mask, rng: np.random.Generator, *, randomize_at_fsc: float = 0.8,
                       sink: list | None = None) -> MaskedFsc:
    """Unmasked, masked, phase-randomised and corrected FSC of two half-maps.

    Parameters
    ----------
    half1, half2 : (L, L, L) array
        The half-maps, unmasked.
    mask : (L, L, L) array
        Values in [0, 1].
    rng : numpy.random.Generator
        Phase randomisation draws (half1's, then half2's): same seed, same curves.
    randomize_at_fsc : float
        Randomise from the first shell where the unmasked FSC drops below this (0.8).
    sink : list, optional
        Receives the warning text when the unmasked FSC never drops that low; the
        randomisation then starts at Nyquist and the corrected FSC is the masked one.

    Returns
    -------
    MaskedFsc
    """
    shells, unmasked = fsc(half1, half2)
    _, masked = fsc(half1, half2, mask)
    start = randomisation_shell(unmasked, randomize_at_fsc)
    if start is None:
        start = len(unmasked) - 1
        warn(f"the unmasked FSC never drops below {randomize_at_fsc:g}: phases randomised only from Nyquist, "
             "so the corrected FSC is the masked one; are the half-maps independent?",
             sink if sink is not None else [])
    r1 = randomise_phases_beyond(half1, start, rng)
    r2 = randomise_phases_beyond(half2, start, rng)
    _, randomised = fsc(r1, r2, mask)
    return MaskedFsc(shells, unmasked, masked, randomised, corrected_fsc(masked, randomised, start), start)
