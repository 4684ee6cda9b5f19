"""The RELION STAR vocabulary: the angle and optics columns, and how CTF columns map to ours.

One home for the mapping between RELION's labels and :mod:`cryorecon.forward.ctf`'s
keyword names, used to read CTF parameters out of a particle table and to write them
back. :mod:`cryorecon.io.star` re-exports every name, so ``from cryorecon.io.star import
CTF_COLUMNS`` is the usual spelling.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = [
    "ANGLE_COLUMNS",
    "OPTICS_COLUMNS",
    "CTF_COLUMNS",
    "CTF_REQUIRED_COLUMNS",
    "has_ctf_columns",
    "ctf_params_from_table",
    "ctf_columns_from_params",
]

#: RELION's Euler angles ``(rot, tilt, psi)`` in degrees, in that order (ZYZ).
ANGLE_COLUMNS = ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")

#: CTF parameters as :mod:`cryorecon.forward.ctf` names them, each with its RELION column
#: and the default used when the column is absent (None: no default).
CTF_COLUMNS = {
    "defocus_u_A": ("rlnDefocusU", None),
    "defocus_v_A": ("rlnDefocusV", None),  # absent: equal to defocus_u_A (no astigmatism)
    "defocus_angle_deg": ("rlnDefocusAngle", 0.0),
    "voltage_kV": ("rlnVoltage", None),
    "cs_mm": ("rlnSphericalAberration", None),
    "amplitude_contrast": ("rlnAmplitudeContrast", None),
    "phase_shift_deg": ("rlnPhaseShift", 0.0),
    "bfactor_A2": ("rlnCtfBfactor", 0.0),
}

#: Columns without which a table has no usable CTF.
CTF_REQUIRED_COLUMNS = ("rlnDefocusU", "rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast")

#: Labels that RELION 3.1+ keeps per optics group rather than per particle.
OPTICS_COLUMNS = (
    "rlnOpticsGroupName",
    "rlnVoltage",
    "rlnSphericalAberration",
    "rlnAmplitudeContrast",
    "rlnImagePixelSize",
    "rlnImageSize",
    "rlnImageDimensionality",
    "rlnMicrographOriginalPixelSize",
    "rlnCtfDataAreCtfPremultiplied",
    "rlnBeamTiltX",
    "rlnBeamTiltY",
    "rlnMtfFileName",
    "rlnOddZernike",
    "rlnEvenZernike",
    "rlnMagMat00",
    "rlnMagMat01",
    "rlnMagMat10",
    "rlnMagMat11",
)


def has_ctf_columns(df: pd.DataFrame) -> bool:
    """Whether a (normalised, per-particle) table has every column a CTF needs."""
    return all(c in df.columns for c in CTF_REQUIRED_COLUMNS)


def ctf_params_from_table(df: pd.DataFrame, indices=None) -> dict | None:
    """Per-particle CTF parameters of a normalised particle table, as float64 arrays.

    Kept in float64 because the CTF phase reaches hundreds of radians at high frequency,
    where float32 rounding of defocus would show.

    Parameters
    ----------
    df : pandas.DataFrame
        One row per particle, optics merged (:attr:`ParticleTable.particles`).
    indices : array_like of int, optional
        Rows to return; all when omitted.

    Returns
    -------
    dict or None
        Every key of :data:`CTF_COLUMNS` (the keyword arguments of
        :func:`cryorecon.forward.ctf.ctf_values`), each an (n,) array; absent optional
        columns take their default and ``defocus_v_A`` that of ``defocus_u_A``. None
        when the table lacks a column of :data:`CTF_REQUIRED_COLUMNS`.
    """
    if not has_ctf_columns(df):
        return None
    rows = slice(None) if indices is None else np.asarray(indices)
    out = {}
    for key, (column, default) in CTF_COLUMNS.items():
        if column in df.columns:
            out[key] = df[column].to_numpy(np.float64)[rows]
        elif key == "defocus_v_A":
            out[key] = out["defocus_u_A"].copy()
        else:  # the required columns are present, so only columns with a default miss
            out[key] = np.full(len(df), default, dtype=np.float64)[rows]
    return out


def ctf_columns_from_params(params: dict) -> dict:
    """RELION columns for writing CTF parameters: ``{column: values}``.

    Parameters
    ----------
    params : dict
        Keys of :data:`CTF_COLUMNS` (any subset) to arrays or scalars.

    Returns
    -------
    dict
        In :data:`CTF_COLUMNS` order, so that the STAR file's columns come out in
        RELION's usual order; keys not in :data:`CTF_COLUMNS` are an error.
    """
    unknown = sorted(set(params) - set(CTF_COLUMNS))
    if unknown:
        raise ValueError(f"not CTF parameters: {', '.join(unknown)} (known: {', '.join(CTF_COLUMNS)})")
    return {column: params[key] for key, (column, _default) in CTF_COLUMNS.items() if key in params}
