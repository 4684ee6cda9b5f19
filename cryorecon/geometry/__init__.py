"""Geometry of poses: RELION rotations, SO(3) search grids and shift grids."""
from .rotations import (
    angular_distance_deg,
    euler_to_matrix,
    matrix_to_euler,
    matrix_to_quaternion,
    quaternion_to_matrix,
    random_rotations,
)

__all__ = [
    "angular_distance_deg",
    "euler_to_matrix",
    "matrix_to_euler",
    "matrix_to_quaternion",
    "quaternion_to_matrix",
    "random_rotations",
]
