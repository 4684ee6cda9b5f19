"""Simulated particles: a map projected along known poses, with CTF, shifts and white noise.

The forward model is the reconstruction's own (``../shared/data/README.md``):
``image_k = CTF_k * exp(+2 pi i k.o / L) * F(A^T k)``, with ``o`` the RELION origin
offset in pixels, then white Gaussian noise in real space. The poses and CTF written to
``particles.star`` are the truth the images were made with.

SNR
---
Signal power is the mean of the squared CTF-modulated clean images over the pixels of
the disc ``r < L/2`` (all images together); the noise variance is that power divided
by the SNR. ``snr = inf`` adds no noise. This is ASPIRE's definition, so stacks made
here and by ASPIRE at the same SNR are alike.

Pixel size
----------
It comes from ``pixel_size_A`` where given, else from the STAR file, else from the map
header. Angles and pixel origins do not depend on it; a CTF and Angstrom origins do.
Where the STAR file and the map header disagree the first case warns and goes on, the
second stops with an :class:`~cryorecon.errors.InputError` asking for ``--pixel-size``.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from ..backend import get_xp, to_host
from ..forward.ctf import ctf_image
from ..errors import InputError
from ..forward import masks
from ..forward.fourier import ifft2c, shift_phase
from ..geometry.rotations import euler_to_matrix, matrix_to_euler, random_rotations
from ..io.mrc import read_map, write_map, write_stack
from ..io.star import (
    ANGLE_COLUMNS,
    ctf_columns_from_params,
    ctf_params_from_table,
    read_particle_table,
    write_particle_star,
)
from ..forward.projector import extract, full_coords, volume_ft

#: CTF defaults for drawn particles: a typical 300 kV microscope.
DEFAULT_OPTICS = {"voltage_kV": 300.0, "cs_mm": 2.7, "amplitude_contrast": 0.1}


def draw_shifts_px(n, rng, shift_sigma_px=2.0, max_shift_px=6.0):
    """Origin offsets (n, 2) in pixels: ``N(0, shift_sigma_px)`` per axis, clipped at +-max."""
    return np.clip(rng.normal(0.0, shift_sigma_px, size=(n, 2)), -max_shift_px, max_shift_px)


def draw_defocus_A(n, rng, defocus_range_um=(1.5, 2.5)):
    """Defoci (n,) in Angstrom, uniform in ``defocus_range_um`` (micrometres, underfocus > 0)."""
    lo, hi = sorted(float(d) for d in defocus_range_um)
    return rng.uniform(lo, hi, size=n) * 1e4


def simulate_images(volume, rotations, shifts_px=None, ctf_params=None, pixel_size_A=None,
                    snr=np.inf, rng=None, batch_size=128, xp=None):
    """Project a map along ``rotations`` and apply CTF, origin shifts and white noise.

    Parameters
    ----------
    volume : (L, L, L) array
        The map ``V[z, y, x]``.
    rotations : (N, 3, 3) array
        RELION pose matrices ``A``.
    shifts_px : (N, 2) array, optional
        RELION origin offsets ``(rlnOriginX, rlnOriginY)`` in pixels; the particle
        centre lands at pixel ``L//2 - o``.
    ctf_params : dict, optional
        Keyword arguments of :func:`cryorecon.forward.ctf.ctf_values` with per-particle arrays
        (N,) or scalars (e.g. ``defocus_u_A``, ``defocus_v_A``, ``voltage_kV``). None: no
        CTF.
    pixel_size_A : float, optional
        Needed with a CTF.
    snr : float
        Signal-to-noise ratio as defined in the module docstring; ``inf`` for no noise.
    rng : numpy.random.Generator, optional
        Noise source; required when ``snr`` is finite.
    batch_size : int
        Images projected at a time.
    xp : module, optional
        numpy or cupy for the projection (default :func:`cryorecon.backend.get_xp`).

    Returns
    -------
    images : (N, L, L) float32 numpy array
    info : dict
        ``signal_power``, ``noise_sigma`` (0 without noise) and ``snr``.
    """
    xp = xp or get_xp()
    vol = np.asarray(to_host(volume), dtype=np.float32)
    L = vol.shape[-1]
    if vol.shape != (L, L, L):
        raise InputError(f"simulate: the map must be a cubic volume, got shape {vol.shape}")
    A = np.asarray(rotations, dtype=np.float64).reshape(-1, 3, 3)
    n = len(A)
    shifts = np.zeros((n, 2)) if shifts_px is None else np.asarray(shifts_px, dtype=np.float64)
    if ctf_params is not None and not pixel_size_A:
        raise InputError("simulate: a CTF needs the pixel size (--pixel-size)")
    snr = float(snr)
    if not snr > 0:
        raise InputError(f"--snr must be > 0 (or inf), got {snr}")
    if np.isfinite(snr) and rng is None:
        raise ValueError("simulate_images: a finite snr needs an rng")

    F = volume_ft(xp.asarray(vol), pad=2)
    coords = full_coords(L)
    coords_xp = xp.asarray(coords)
    out = np.empty((n, L, L), dtype=np.float32)
    disc = masks.disc(L, L / 2, inclusive=False)
    power = 0.0
    for start in range(0, n, batch_size):
        sl = slice(start, min(n, start + batch_size))
        slices = extract(F, xp.asarray(A[sl]), coords, pad=2)
        slices = slices * shift_phase(coords_xp, L, xp.asarray(shifts[sl]), dtype=slices.dtype)
        slices = slices.reshape(-1, L, L)
        if ctf_params is not None:
            batch_ctf = {k: (np.asarray(v)[sl] if np.ndim(v) else v) for k, v in ctf_params.items()}
            slices = slices * ctf_image(L, pixel_size_A, xp=xp, dtype=np.float32, **batch_ctf)
        clean = to_host(ifft2c(slices).real).astype(np.float32)
        out[sl] = clean
        power += float(np.sum(clean[:, disc].astype(np.float64) ** 2))
    signal_power = power / (n * disc.sum())
    sigma = 0.0
    if np.isfinite(snr):
        sigma = float(np.sqrt(signal_power / snr))
        for start in range(0, n, batch_size):
            sl = slice(start, min(n, start + batch_size))
            out[sl] += sigma * rng.standard_normal(out[sl].shape, dtype=np.float32)
    return out, {"signal_power": signal_power, "noise_sigma": sigma, "snr": snr}


def _disagree(a, b):
    return a > 0 and b > 0 and abs(a - b) > 1e-3 * max(a, b)


def _poses_from_star(star_path, map_px, pixel_size_A, n, rng):
    """Poses, origins (px), CTF and pixel size from a STAR file; the table to write back."""
    table = read_particle_table(star_path, pixel_size_A=pixel_size_A)
    df = table.particles
    if n is not None:
        df = df.iloc[:n].reset_index(drop=True)
    count = len(df)
    if count == 0:
        raise InputError(f"{star_path}: the particle table is empty")
    ctf = ctf_params_from_table(df)
    star_px = float(df["rlnImagePixelSize"].iloc[0]) if "rlnImagePixelSize" in df.columns else 0.0
    angst_offsets = table.origin_units == "angstrom" and bool(
        np.any(df[["rlnOriginXAngst", "rlnOriginYAngst"]].to_numpy() != 0)
    )
    if pixel_size_A is not None:
        px = float(pixel_size_A)
    elif star_px > 0:
        px = star_px
        if _disagree(star_px, map_px):
            needs = "the CTF" if ctf is not None else ("Angstrom origin offsets" if angst_offsets else None)
            if needs:
                raise InputError(
                    f"{star_path}: pixel size {star_px:g} A disagrees with the map header's "
                    f"{map_px:g} A and {needs} depend on it: pass --pixel-size"
                )
            warnings.warn(
                f"{star_path}: pixel size {star_px:g} A disagrees with the map header's "
                f"{map_px:g} A; angles and pixel offsets do not depend on it, so going on "
                f"(the output says {star_px:g} A; --pixel-size settles it)",
                stacklevel=3,
            )
    else:
        px = map_px
        if px > 0:
            table = table.with_pixel_size(px)
            df = table.particles.iloc[:count].reset_index(drop=True)
        elif ctf is not None or angst_offsets:
            raise InputError(
                f"{star_path}: no pixel size in the STAR file nor in the map header, and the "
                "CTF or Angstrom offsets need one: pass --pixel-size"
            )

    if all(a in df.columns for a in ANGLE_COLUMNS):
        rotations = euler_to_matrix(*(df[a].to_numpy(np.float64) for a in ANGLE_COLUMNS))
    else:
        warnings.warn(f"{star_path}: no angles; drawing uniform random poses", stacklevel=3)
        rotations = random_rotations(count, rng)
    if {"rlnOriginX", "rlnOriginY"} <= set(df.columns):
        shifts = df[["rlnOriginX", "rlnOriginY"]].to_numpy(np.float64)
    elif table.origin_units == "none":
        shifts = np.zeros((count, 2))
    else:
        raise InputError(f"{star_path}: origins in Angstrom but no pixel size: pass --pixel-size")
    return rotations, shifts, ctf, px, df


def simulate_dataset(map_path, out_dir, *, n=1000, snr=np.inf, from_star=None, seed=0,
                     pixel_size_A=None, defocus_range_um=(1.5, 2.5), shift_sigma_px=2.0,
                     max_shift_px=6.0, ctf=True, optics=None, write_truth=True, xp=None):
    """Simulate a particle data set from a map: ``out_dir/particles.mrcs`` + ``.star``.

    Poses are uniform on SO(3), origins ``N(0, shift_sigma_px)`` clipped at
    ``max_shift_px`` and defoci uniform in ``defocus_range_um``, all drawn from
    ``numpy.random.default_rng(seed)``; or they come from ``from_star`` (its first ``n``
    particles when ``n`` is given; no CTF where it has no CTF columns, zero origins where
    it has no origins, uniform random poses where it has no angles). The STAR file
    written is RELION 3.1 and holds the true poses, origins and CTF.

    Parameters
    ----------
    map_path : str or Path
        Input MRC map.
    out_dir : str or Path
        Output folder (created).
    n : int or None
        Number of particles (None with ``from_star``: all of them).
    snr : float
        See the module docstring; ``inf`` for clean images.
    from_star : str or Path, optional
        Take poses, origins and CTF from this STAR file (its images are not read).
    seed : int
        Seed of every random draw (poses, shifts, defoci, noise).
    pixel_size_A : float, optional
        Overrides the STAR file's and the map header's pixel size.
    defocus_range_um : (float, float)
        Range of drawn defoci in micrometres.
    shift_sigma_px, max_shift_px : float
        Drawn origin offsets.
    ctf : bool
        Apply a CTF to drawn particles (``from_star`` decides by its columns).
    optics : dict, optional
        ``voltage_kV``, ``cs_mm``, ``amplitude_contrast`` for drawn particles (default
        :data:`DEFAULT_OPTICS`).
    write_truth : bool
        Also write the map as ``out_dir/truth.mrc`` with the pixel size used.
    xp : module, optional
        numpy or cupy for the projection.

    Returns
    -------
    dict
        ``n``, ``box``, ``pixel_size_A``, ``snr``, ``noise_sigma``, ``signal_power``,
        ``ctf`` (bool), ``stack``, ``star`` (paths).
    """
    vol, map_px = read_map(map_path)
    if vol.ndim != 3 or len(set(vol.shape)) != 1:
        raise InputError(f"{map_path}: need a cubic 3D map, got shape {vol.shape}")
    L = vol.shape[0]
    rng = np.random.default_rng(seed)
    if from_star is not None:
        rotations, shifts, ctf_params, px, df = _poses_from_star(
            from_star, map_px, pixel_size_A, n, rng
        )
        if "rlnImageSize" in df.columns and int(df["rlnImageSize"].iloc[0]) != L:
            raise InputError(
                f"{from_star}: rlnImageSize is {int(df['rlnImageSize'].iloc[0])} px but the map "
                f"{map_path} is {L} px: resample the map to the particle box"
            )
        df = df.copy()
    else:
        if n is None or int(n) < 1:
            raise InputError(f"--n must be >= 1, got {n}")
        n = int(n)
        px = float(pixel_size_A) if pixel_size_A is not None else map_px
        rotations = random_rotations(n, rng)
        shifts = draw_shifts_px(n, rng, shift_sigma_px, max_shift_px)
        ctf_params = None
        if ctf:
            if not px > 0:
                raise InputError(f"{map_path}: no voxel size in the header and a CTF needs one: pass --pixel-size")
            d = draw_defocus_A(n, rng, defocus_range_um)
            ctf_params = {"defocus_u_A": d, "defocus_v_A": d.copy(), "defocus_angle_deg": np.zeros(n),
                          **{k: np.full(n, v) for k, v in {**DEFAULT_OPTICS, **(optics or {})}.items()}}
        df = pd.DataFrame(index=range(n))
        if ctf_params is not None:
            for column, values in ctf_columns_from_params(ctf_params).items():
                df[column] = values
        df["rlnOpticsGroup"] = 1
    count = len(rotations)
    if not all(a in df.columns for a in ANGLE_COLUMNS):
        for name, values in zip(ANGLE_COLUMNS, matrix_to_euler(rotations)):
            df[name] = values
    if not px > 0:
        warnings.warn(f"{map_path}: no pixel size known; writing 1.0 A (pass --pixel-size)", stacklevel=2)
        px = 1.0

    # Noise comes from a child stream, so poses and shifts drawn above do not depend on
    # whether noise is added.
    noise_rng = np.random.default_rng([seed, 1])
    images, info = simulate_images(vol, rotations, shifts, ctf_params, px, snr, noise_rng, xp=xp)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stack_path, star_path = out / "particles.mrcs", out / "particles.star"
    write_stack(stack_path, images, px)
    df["rlnImageName"] = [f"{i + 1:06d}@particles.mrcs" for i in range(count)]
    df["rlnOriginXAngst"] = shifts[:, 0] * px
    df["rlnOriginYAngst"] = shifts[:, 1] * px
    df = df.drop(columns=["rlnOriginX", "rlnOriginY"], errors="ignore")
    df["rlnImagePixelSize"] = px
    df["rlnImageSize"] = L
    first = ["rlnImageName", *ANGLE_COLUMNS, "rlnOriginXAngst", "rlnOriginYAngst"]
    df = df[first + [c for c in df.columns if c not in first]]
    write_particle_star(star_path, df, pixel_size_A=px, image_size=L)
    if write_truth:
        write_map(out / "truth.mrc", vol, px)
    return {"n": count, "box": L, "pixel_size_A": px, "snr": info["snr"], "noise_sigma": info["noise_sigma"],
            "signal_power": info["signal_power"], "ctf": ctf_params is not None,
            "stack": stack_path, "star": star_path}
