"""Geometry of poses: RELION rotations, SO(3) search grids, shift grids and point-group symmetry."""
from .rotations import (
    angular_distance_deg,
    euler_to_matrix,
    matrix_to_euler,
    matrix_to_quaternion,
    quaternion_to_matrix,
    random_rotations,
)
from .shifts import shift_grid
from .so3_grid import (
    grid_step_deg,
    healpix_directions,
    healpix_nside,
    local_grid,
    nearest_grid_index,
    neighbours,
    so3_grid,
    so3_grid_angles,
)
from .symmetry import (
    SymmetryGroup,
    expand_rotations,
    restrict_to_asymmetric_unit,
    symmetry_group,
    to_asymmetric_unit,
)

__all__ = [
    "SymmetryGroup",
    "angular_distance_deg",
    "euler_to_matrix",
    "expand_rotations",
    "grid_step_deg",
    "healpix_directions",
    "healpix_nside",
    "local_grid",
    "matrix_to_euler",
    "matrix_to_quaternion",
    "nearest_grid_index",
    "neighbours",
    "quaternion_to_matrix",
    "random_rotations",
    "restrict_to_asymmetric_unit",
    "shift_grid",
    "so3_grid",
    "so3_grid_angles",
    "symmetry_group",
    "to_asymmetric_unit",
]
