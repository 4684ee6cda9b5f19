"""Pose error: estimated poses against true ones, after the global alignment of the maps.

Through a mirror
----------------
:func:`~cryorecon.validate.align.align_maps` finds ``G`` and ``s`` with
``rotate_volume(moving, G, s) ~ reference``. A reconstruction's pose ``A_est`` then
corresponds to the reference pose ``A_true = A_est @ G^T`` when ``G`` is a rotation. When
``G = R J`` is improper, ``A_true @ G`` is improper too; a projection cannot tell ``B``
from ``D B`` with ``D = diag(1, 1, -1)`` (it flips only the direction of summation), so
the reconstruction holds the proper ``A_est = D A_true G`` and ``A_true = D A_est G^T``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..geometry.rotations import angular_distance_deg
from .transform import MIRROR


def map_poses(est_rotations, alignment_info):
    """Carry poses of the moving map into the reference frame found by ``align_maps``.

    ``A_true = A_est @ G^T`` for a rotation ``G``; ``D @ A_est @ G^T`` with
    ``D = diag(1, 1, -1)`` when ``G`` includes the mirror (module docstring). The result is
    always a proper rotation.

    Parameters
    ----------
    est_rotations : (N, 3, 3) array
        RELION pose matrices of the reconstruction.
    alignment_info : dict
        The ``info`` returned by :func:`~cryorecon.validate.align.align_maps` (uses
        ``matrix``).
    """
    A = np.asarray(est_rotations, dtype=np.float64)
    G = np.asarray(alignment_info["matrix"], dtype=np.float64)
    out = A @ G.T
    if np.linalg.det(G) < 0:
        out = MIRROR @ out
    return out


def pose_errors_deg(est_rotations, true_rotations, alignment_info):
    """Angular distance (degrees) of each estimated pose from its true one, after alignment.

    Parameters
    ----------
    est_rotations : (N, 3, 3) array
        RELION pose matrices of the reconstruction (the ``moving`` map of ``align_maps``).
    true_rotations : (N, 3, 3) array
        True RELION pose matrices (the frame of ``reference``).
    alignment_info : dict
        The ``info`` returned by ``align_maps``.

    Returns
    -------
    (N,) float64 array
    """
    mapped = map_poses(est_rotations, alignment_info)
    return angular_distance_deg(mapped, np.asarray(true_rotations, dtype=np.float64))


def pose_error_deg(est_rotations, true_rotations, alignment_info):
    """Median of :func:`pose_errors_deg`."""
    return float(np.median(pose_errors_deg(est_rotations, true_rotations, alignment_info)))


@dataclass(frozen=True)
class PoseError:
    """Summary of the pose errors of a reconstruction (degrees)."""

    median_deg: float
    mean_deg: float
    #: Fraction of poses within 15 degrees of the truth.
    within_15deg: float

    @classmethod
    def from_poses(cls, est_rotations, true_rotations, alignment_info) -> "PoseError":
        """Summarise :func:`pose_errors_deg` of the poses."""
        err = pose_errors_deg(est_rotations, true_rotations, alignment_info)
        return cls(float(np.median(err)), float(np.mean(err)), float(np.mean(err < 15)))

    def as_dict(self) -> dict:
        """The keys a compare stage records in ``run.json``."""
        return {"pose_error_median_deg": self.median_deg, "pose_error_mean_deg": self.mean_deg,
                "pose_within_15deg": self.within_15deg}


__all__ = ["map_poses", "pose_errors_deg", "pose_error_deg", "PoseError"]
