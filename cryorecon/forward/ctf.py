"""The contrast transfer function, in RELION's convention.

``CTF(k) = sqrt(1 - Q^2) sin(chi) + Q cos(chi)`` with
``chi = pi lam df(angle) k^2 - (pi/2) Cs lam^3 k^4 + phase_shift``,
astigmatic defocus ``df(angle) = (dfU + dfV)/2 + (dfU - dfV)/2 cos(2 (angle - angle_ast))``
(positive = underfocus) and an envelope ``exp(-B k^2 / 4)``. ``CTF(0) = +Q``: the
images are not phase-flipped. Angstrom, degrees, kV and mm at the interface; the
evaluation runs on numpy or cupy, whichever holds the frequency arrays.
"""
from __future__ import annotations

import numpy as np

from ..backend import array_module
from .fourier import freq_grid_2d


def electron_wavelength_A(voltage_kV):
    """Relativistic electron wavelength in A: ``12.2643247 / sqrt(V (1 + 0.978466e-6 V))``.

    Parameters
    ----------
    voltage_kV : float or array
        Acceleration voltage in kV (V in the formula is in volts).

    Examples
    --------
    >>> round(float(electron_wavelength_A(300.0)), 5)
    0.01969
    """
    xp = array_module(voltage_kV)
    v = xp.asarray(voltage_kV, dtype=xp.float64) * 1e3
    return 12.2643247 / xp.sqrt(v * (1.0 + 0.978466e-6 * v))


def _per_particle(a, xp, dtype):
    # a Python number becomes a device array by a fill kernel, not by a host copy
    if np.isscalar(a):
        return xp.full(1, a, dtype=dtype)
    return xp.atleast_1d(xp.asarray(a, dtype=dtype)).ravel()


def ctf_values(kx_invA, ky_invA, defocus_u_A, defocus_v_A, defocus_angle_deg, voltage_kV,
               cs_mm, amplitude_contrast, phase_shift_deg=0.0, bfactor_A2=0.0):
    """Evaluate the CTF at spatial frequencies for a batch of particles.

    Parameters
    ----------
    kx_invA, ky_invA : array, any shape (same for both)
        Spatial frequency in 1/A. Their dtype (float32 or float64) sets the result's.
    defocus_u_A, defocus_v_A, defocus_angle_deg : float or array (N,)
        RELION ``rlnDefocusU``, ``rlnDefocusV``, ``rlnDefocusAngle``.
    voltage_kV, cs_mm, amplitude_contrast : float or array (N,)
        ``rlnVoltage``, ``rlnSphericalAberration``, ``rlnAmplitudeContrast``.
    phase_shift_deg : float or array (N,)
        ``rlnPhaseShift`` (phase plate), added to chi.
    bfactor_A2 : float or array (N,)
        ``rlnCtfBfactor``: envelope ``exp(-B k^2 / 4)``.

    Returns
    -------
    array (N, *kx_invA.shape)
        N is the broadcast length of the per-particle parameters (1 for scalars).
    """
    xp = array_module(kx_invA, ky_invA)
    kx = xp.asarray(kx_invA)
    ky = xp.asarray(ky_invA)
    dtype = xp.float64 if kx.dtype == xp.float64 else xp.float32
    kx = kx.astype(dtype, copy=False)
    ky = ky.astype(dtype, copy=False)
    # Per-particle constants are formed in float64 (they are few), then cast.
    params = [_per_particle(a, xp, xp.float64) for a in (
        defocus_u_A, defocus_v_A, defocus_angle_deg, voltage_kV, cs_mm,
        amplitude_contrast, phase_shift_deg, bfactor_A2)]
    du, dv, ang, kv, cs, q, ps, bf = xp.broadcast_arrays(*params)
    lam = electron_wavelength_A(kv)
    expand = (slice(None),) + (None,) * kx.ndim

    def col(a):
        return a.astype(dtype)[expand]

    k2 = kx * kx + ky * ky
    theta = xp.arctan2(ky, kx)
    df = col((du + dv) / 2) + col((du - dv) / 2) * xp.cos(2 * (theta - col(xp.deg2rad(ang))))
    chi = (col(np.pi * lam) * df * k2
           - col(0.5 * np.pi * (cs * 1e7) * lam ** 3) * (k2 * k2)
           + col(xp.deg2rad(ps)))
    ctf = col(xp.sqrt(1.0 - q * q)) * xp.sin(chi) + col(q) * xp.cos(chi)
    # skip the envelope only when B is known on the host to be zero: testing device
    # values would need the host; exp(-0) is exactly 1, so applying it is harmless
    if not (np.isscalar(bfactor_A2) and bfactor_A2 == 0):
        ctf = ctf * xp.exp(col(-bf / 4.0) * k2)
    return ctf


def ctf_image(L, pixel_size_A, xp=np, dtype=np.float32, **params):
    """CTF on the centred L x L Fourier grid of images with ``pixel_size_A``.

    Parameters
    ----------
    L : int
    pixel_size_A : float
    xp : module
        numpy or cupy, for the result.
    dtype : float dtype
    **params
        The keyword arguments of :func:`ctf_values` after the frequencies.

    Returns
    -------
    array (N, L, L)
    """
    kx, ky = freq_grid_2d(L, xp)
    scale = 1.0 / (L * pixel_size_A)
    return ctf_values(kx.astype(dtype) * scale, ky.astype(dtype) * scale, **params)


def ctf_at_coords(coords, L, pixel_size_A, dtype=np.float32, **params):
    """CTF at integer frequencies ``coords`` (M, 2) of the L-grid: (N, M).

    ``coords`` holds ``(kx, ky)`` pixel frequencies as from
    :func:`cryorecon.forward.fourier.band_coords`; the result is on its device.
    """
    xp = array_module(coords)
    c = xp.asarray(coords).astype(dtype) * (1.0 / (L * pixel_size_A))
    return ctf_values(c[:, 0], c[:, 1], **params)
