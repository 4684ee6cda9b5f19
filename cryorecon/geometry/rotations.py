"""Rotations in RELION's convention: ZYZ Euler angles, matrices, quaternions.

RELION writes a particle's pose as ``A = Rz(psi) Ry(tilt) Rz(rot)`` with
``Rz(t) = [[c, s, 0], [-s, c, 0], [0, 0, 1]]`` and
``Ry(t) = [[c, 0, -s], [0, 1, 0], [s, 0, c]]``; a projection samples the map at
``A^T (x, y, z)``. This equals
``scipy.spatial.transform.Rotation.from_euler('ZYZ', [rot, tilt, psi], degrees=True)
.as_matrix().T``.

Everything here is host-side numpy in float64: pose bookkeeping is cheap and
precision matters more than speed. Move matrices to the device at the call site.
"""
from __future__ import annotations

import numpy as np


def _rz(t):
    c, s = np.cos(t), np.sin(t)
    out = np.zeros(t.shape + (3, 3))
    out[..., 0, 0], out[..., 0, 1] = c, s
    out[..., 1, 0], out[..., 1, 1] = -s, c
    out[..., 2, 2] = 1.0
    return out


def _ry(t):
    c, s = np.cos(t), np.sin(t)
    out = np.zeros(t.shape + (3, 3))
    out[..., 0, 0], out[..., 0, 2] = c, -s
    out[..., 1, 1] = 1.0
    out[..., 2, 0], out[..., 2, 2] = s, c
    return out


def euler_to_matrix(rot_deg, tilt_deg, psi_deg):
    """RELION ZYZ Euler angles (degrees) to rotation matrices ``A``.

    Parameters
    ----------
    rot_deg, tilt_deg, psi_deg : float or array_like
        Broadcast against each other.

    Returns
    -------
    numpy float64 array (N, 3, 3)
        ``A = Rz(psi) Ry(tilt) Rz(rot)``; N is the broadcast size (1 for scalars).

    Examples
    --------
    >>> euler_to_matrix(0, 0, 0).shape
    (1, 3, 3)
    """
    rot, tilt, psi = np.broadcast_arrays(
        *(np.atleast_1d(np.asarray(a, dtype=np.float64)).ravel() for a in (rot_deg, tilt_deg, psi_deg))
    )
    rot, tilt, psi = (np.deg2rad(a) for a in (rot, tilt, psi))
    return _rz(psi) @ _ry(tilt) @ _rz(rot)


def matrix_to_euler(A):
    """Rotation matrices to RELION ZYZ Euler angles in degrees.

    Parameters
    ----------
    A : array_like (N, 3, 3) or (3, 3)

    Returns
    -------
    rot_deg, tilt_deg, psi_deg : numpy arrays (N,)
        ``tilt`` in [0, 180]; ``rot`` and ``psi`` in (-180, 180]. At tilt 0 or 180 only
        ``rot + psi`` (or ``rot - psi``) is defined: ``psi`` is set to 0 there.
    """
    A = np.asarray(A, dtype=np.float64).reshape(-1, 3, 3)
    # From A = Rz(psi) Ry(tilt) Rz(rot): A[2,2] = cos(tilt), A[2,0] = sin(tilt) cos(rot),
    # A[2,1] = sin(tilt) sin(rot), A[0,2] = -cos(psi) sin(tilt), A[1,2] = sin(psi) sin(tilt).
    sin_tilt = np.hypot(A[:, 2, 0], A[:, 2, 1])
    tilt = np.arctan2(sin_tilt, A[:, 2, 2])
    rot = np.arctan2(A[:, 2, 1], A[:, 2, 0])
    psi = np.arctan2(A[:, 1, 2], -A[:, 0, 2])
    # Near the poles those ratios are 0/0; psi = 0 leaves A = Ry(tilt) Rz(rot), whose
    # top-left block gives rot directly.
    pole = sin_tilt < 1e-6
    if np.any(pole):
        cos_tilt = np.sign(A[pole, 2, 2])
        psi[pole] = 0.0
        # Ry(0 or pi) Rz(rot): row 0 = (cos_tilt cos rot, cos_tilt sin rot, .), row 1 = (-sin, cos, .)
        rot[pole] = np.arctan2(-A[pole, 1, 0], A[pole, 1, 1])
        tilt[pole] = np.where(cos_tilt > 0, 0.0, np.pi)
    return np.rad2deg(rot), np.rad2deg(tilt), np.rad2deg(psi)


def matrix_to_quaternion(A):
    """Rotation matrices to unit quaternions ``(w, x, y, z)`` with ``w >= 0``.

    The quaternion is that of the matrix acting on column vectors, ``A v``
    (Shepperd's method picks the best-conditioned branch per matrix).

    Returns
    -------
    numpy float64 array (N, 4)
    """
    A = np.asarray(A, dtype=np.float64).reshape(-1, 3, 3)
    tr = A[:, 0, 0] + A[:, 1, 1] + A[:, 2, 2]
    # Four candidate magnitudes 4*q_i^2 - 1 ... pick the largest for stability.
    cand = np.stack([tr, A[:, 0, 0], A[:, 1, 1], A[:, 2, 2]], axis=1)
    best = np.argmax(cand, axis=1)
    q = np.empty((A.shape[0], 4))
    for b in range(4):
        m = best == b
        if not np.any(m):
            continue
        a = A[m]
        if b == 0:
            s = 2.0 * np.sqrt(1.0 + tr[m])
            q[m] = np.stack([0.25 * s, (a[:, 2, 1] - a[:, 1, 2]) / s,
                             (a[:, 0, 2] - a[:, 2, 0]) / s, (a[:, 1, 0] - a[:, 0, 1]) / s], 1)
        elif b == 1:
            s = 2.0 * np.sqrt(1.0 + a[:, 0, 0] - a[:, 1, 1] - a[:, 2, 2])
            q[m] = np.stack([(a[:, 2, 1] - a[:, 1, 2]) / s, 0.25 * s,
                             (a[:, 0, 1] + a[:, 1, 0]) / s, (a[:, 0, 2] + a[:, 2, 0]) / s], 1)
        elif b == 2:
            s = 2.0 * np.sqrt(1.0 + a[:, 1, 1] - a[:, 0, 0] - a[:, 2, 2])
            q[m] = np.stack([(a[:, 0, 2] - a[:, 2, 0]) / s, (a[:, 0, 1] + a[:, 1, 0]) / s,
                             0.25 * s, (a[:, 1, 2] + a[:, 2, 1]) / s], 1)
        else:
            s = 2.0 * np.sqrt(1.0 + a[:, 2, 2] - a[:, 0, 0] - a[:, 1, 1])
            q[m] = np.stack([(a[:, 1, 0] - a[:, 0, 1]) / s, (a[:, 0, 2] + a[:, 2, 0]) / s,
                             (a[:, 1, 2] + a[:, 2, 1]) / s, 0.25 * s], 1)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    q[q[:, 0] < 0] *= -1.0
    return q


def quaternion_to_matrix(q):
    """Quaternions ``(w, x, y, z)`` (normalised here) to rotation matrices (N, 3, 3)."""
    q = np.asarray(q, dtype=np.float64).reshape(-1, 4)
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    w, x, y, z = q.T
    out = np.empty((q.shape[0], 3, 3))
    out[:, 0, 0] = 1 - 2 * (y * y + z * z)
    out[:, 0, 1] = 2 * (x * y - w * z)
    out[:, 0, 2] = 2 * (x * z + w * y)
    out[:, 1, 0] = 2 * (x * y + w * z)
    out[:, 1, 1] = 1 - 2 * (x * x + z * z)
    out[:, 1, 2] = 2 * (y * z - w * x)
    out[:, 2, 0] = 2 * (x * z - w * y)
    out[:, 2, 1] = 2 * (y * z + w * x)
    out[:, 2, 2] = 1 - 2 * (x * x + y * y)
    return out


def random_rotations(n, rng):
    """``n`` rotations drawn uniformly (Haar measure) on SO(3).

    Normalised 4-D Gaussian vectors are uniform on the unit quaternion sphere, which
    double-covers SO(3) uniformly (Shoemake 1992).

    Parameters
    ----------
    n : int
    rng : numpy.random.Generator

    Returns
    -------
    numpy float64 array (n, 3, 3)
    """
    return quaternion_to_matrix(rng.standard_normal((int(n), 4)))


def axis_angle_to_matrix(v):
    """Rotation vectors (..., 3) in radians to matrices (Rodrigues).

    ``v = theta u`` is the right-handed rotation by ``theta`` about the unit axis ``u``.
    """
    v = np.asarray(v, dtype=np.float64)
    theta = np.linalg.norm(v, axis=-1)[..., None, None]
    K = np.zeros(v.shape[:-1] + (3, 3))
    K[..., 0, 1], K[..., 0, 2] = -v[..., 2], v[..., 1]
    K[..., 1, 0], K[..., 1, 2] = v[..., 2], -v[..., 0]
    K[..., 2, 0], K[..., 2, 1] = -v[..., 1], v[..., 0]
    small = theta < 1e-8
    t = np.where(small, 1.0, theta)
    a = np.where(small, 1.0, np.sin(t) / t)
    b = np.where(small, 0.5, (1.0 - np.cos(t)) / (t * t))
    return np.eye(3) + a * K + b * (K @ K)


def angular_distance_deg(A, B):
    """Geodesic angle between rotations, in degrees (broadcasting over leading axes).

    ``theta = arccos((trace(A^T B) - 1) / 2)``, computed through the quaternion inner
    product for accuracy near 0 and 180 degrees.
    """
    A = np.asarray(A, dtype=np.float64)
    B = np.asarray(B, dtype=np.float64)
    # trace(A^T B) = sum_ij A_ij B_ij
    tr = np.einsum("...ij,...ij->...", A, B)
    c = np.clip((tr - 1.0) / 2.0, -1.0, 1.0)
    # arccos loses digits near c = +-1; the chordal norm |A - B|_F = 2 sqrt(2) sin(theta/2)
    # is exact there.
    chord = np.sqrt(np.einsum("...ij,...ij->...", A - B, A - B))
    half = np.arcsin(np.clip(chord / (2.0 * np.sqrt(2.0)), 0.0, 1.0))
    theta = np.where(c > 0.0, 2.0 * half, np.arccos(c))
    return np.rad2deg(theta)
