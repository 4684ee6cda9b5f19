"""Search grids on SO(3): a global HEALPix x in-plane grid and local grids around a pose.

The global grid pairs the ``12 Nside^2`` HEALPix pixel centres (Gorski et al. 2005,
ApJ 622:759, the RING-scheme formulas) as viewing directions ``(rot, tilt)`` with
``6 Nside`` evenly spaced in-plane angles ``psi``, as RELION and cryoSPARC do. Both
spacings are about ``60 / Nside`` degrees. The viewing direction of ``A`` is its
third row, ``A^T e_z = (sin tilt cos rot, sin tilt sin rot, cos tilt)``, which is the
HEALPix direction.

Host-side numpy, float64; rotations are RELION matrices from
:func:`~cryorecon.geometry.rotations.euler_to_matrix`.
"""
from __future__ import annotations

import math

import numpy as np

from .rotations import axis_angle_to_matrix, euler_to_matrix, matrix_to_quaternion

# HEALPix pixels are sqrt(4 pi / (12 Nside^2)) rad = 58.6 / Nside deg across; with
# 6 Nside psi angles, 60 / Nside is the spacing of both, as in RELION's sampling table.
_BASE_STEP_DEG = 60.0


def healpix_nside(step_deg):
    """Smallest ``Nside`` whose grid step ``60 / Nside`` is at most ``step_deg``."""
    if step_deg <= 0:
        raise ValueError(f"step_deg must be positive, got {step_deg}")
    return max(1, math.ceil(_BASE_STEP_DEG / step_deg - 1e-9))


def grid_step_deg(nside):
    """Angular step of the global grid at ``nside``: ``60 / Nside`` degrees."""
    return _BASE_STEP_DEG / nside


def healpix_directions(nside):
    """HEALPix RING-scheme pixel centres as (colatitude, longitude) in degrees.

    Parameters
    ----------
    nside : int
        Any positive integer (the RING formulas do not need a power of two).

    Returns
    -------
    tilt_deg, rot_deg : numpy arrays (12 nside^2,)
        In RING order, north to south; ``rot_deg`` in [0, 360).
    """
    z_all, phi_all = [], []
    for i in range(1, 4 * nside):
        if i < nside or i > 3 * nside:
            # Polar caps: ring i (or its mirror 4 nside - i) has 4 i pixels.
            ii = i if i < nside else 4 * nside - i
            z = 1.0 - ii * ii / (3.0 * nside * nside)
            z = z if i < nside else -z
            j = np.arange(1, 4 * ii + 1)
            phi = np.pi / (2 * ii) * (j - 0.5)
        else:
            # Equatorial belt: 4 nside pixels per ring, alternate rings offset by half.
            z = 4.0 / 3.0 - 2.0 * i / (3.0 * nside)
            s = (i - nside + 1) % 2
            j = np.arange(1, 4 * nside + 1)
            phi = np.pi / (2 * nside) * (j - s / 2.0)
        z_all.append(np.full(len(j), z))
        phi_all.append(phi)
    z = np.concatenate(z_all)
    phi = np.concatenate(phi_all)
    return np.rad2deg(np.arccos(np.clip(z, -1.0, 1.0))), np.mod(np.rad2deg(phi), 360.0)


def so3_grid_angles(step_deg):
    """Euler angles of :func:`so3_grid`, each (R,), in degrees (psi fastest)."""
    nside = healpix_nside(step_deg)
    tilt, rot = healpix_directions(nside)
    n_psi = 6 * nside
    psi = np.arange(n_psi) * (360.0 / n_psi)
    return np.repeat(rot, n_psi), np.repeat(tilt, n_psi), np.tile(psi, len(rot))


def so3_grid(step_deg, return_step=False):
    """A near-uniform grid of rotations with spacing at most ``step_deg``.

    Parameters
    ----------
    step_deg : float
        Requested angular step; the grid uses ``Nside = ceil(60 / step_deg)``.
    return_step : bool
        Also return the grid's actual step, ``60 / Nside`` degrees.

    Returns
    -------
    rotations : numpy float64 array (R, 3, 3)
        ``R = 12 Nside^2 * 6 Nside``, ordered direction-major, psi fastest.
    step : float, only when ``return_step``

    Examples
    --------
    >>> so3_grid(30).shape   # Nside 2: 48 directions x 12 psi
    (576, 3, 3)
    """
    rot, tilt, psi = so3_grid_angles(step_deg)
    rotations = euler_to_matrix(rot, tilt, psi)
    if return_step:
        return rotations, grid_step_deg(healpix_nside(step_deg))
    return rotations


def local_grid(center, step_deg, n_steps=1):
    """Rotations around ``center``: small rotations on a cubic grid, composed on the left.

    Parameters
    ----------
    center : array (3, 3) or (N, 3, 3)
        Centre rotation(s).
    step_deg : float
        Spacing of the rotation-vector grid along each axis.
    n_steps : int
        Covers ``-n_steps .. n_steps`` steps on each of the 3 axes.

    Returns
    -------
    numpy float64 array ((2 n + 1)^3, 3, 3), or (N, (2 n + 1)^3, 3, 3) for N centres
        ``delta @ center``; entry ``(2 n + 1)^3 // 2`` is the centre itself. The angular
        distance from the centre is the rotation-vector length, up to
        ``sqrt(3) * n_steps * step_deg``.
    """
    center = np.asarray(center, dtype=np.float64)
    k = np.arange(-n_steps, n_steps + 1) * np.deg2rad(step_deg)
    v = np.stack(np.meshgrid(k, k, k, indexing="ij"), axis=-1).reshape(-1, 3)
    delta = axis_angle_to_matrix(v)
    if center.ndim == 2:
        return delta @ center
    return delta[None] @ center[:, None]


def nearest_grid_index(rotations, grid, chunk=4096):
    """Index of, and geodesic distance to, the nearest grid rotation for each rotation.

    Parameters
    ----------
    rotations : array (N, 3, 3)
    grid : array (R, 3, 3)

    Returns
    -------
    index : numpy int64 array (N,)
    distance_deg : numpy float64 array (N,)
    """
    q = matrix_to_quaternion(rotations)
    g = matrix_to_quaternion(grid)
    index = np.empty(len(q), dtype=np.int64)
    best = np.empty(len(q))
    for s in range(0, len(q), chunk):
        # |<q, g>| = cos(theta / 2): the largest dot is the nearest rotation (q ~ -q).
        dots = np.abs(q[s:s + chunk] @ g.T)
        index[s:s + chunk] = np.argmax(dots, axis=1)
        best[s:s + chunk] = dots[np.arange(len(dots)), index[s:s + chunk]]
    return index, np.rad2deg(2.0 * np.arccos(np.clip(best, -1.0, 1.0)))


def neighbours(grid, index, radius_deg):
    """Indices of grid rotations within ``radius_deg`` of ``grid[index]`` (itself included)."""
    q = matrix_to_quaternion(grid)
    dots = np.abs(q @ q[index])
    return np.nonzero(dots >= np.cos(np.deg2rad(radius_deg) / 2.0) - 1e-12)[0]
