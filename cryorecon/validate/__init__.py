"""Judging a map: FSC and resolution, alignment to a reference (mirror included), pose error.

Runs once per reconstruction, on the host, with numpy and scipy. One idea per module:

- :mod:`~cryorecon.validate.fsc`: Fourier shell correlation and resolutions;
- :mod:`~cryorecon.validate.transform`: rotating, shifting and mirroring a map;
- :mod:`~cryorecon.validate.align`: rotation, hand and shift of a map onto a reference;
- :mod:`~cryorecon.validate.pose_error`: estimated against true poses after alignment;
- :mod:`~cryorecon.validate.curves`: ``fsc.csv`` and ``fsc.png``;
- :mod:`~cryorecon.validate.compare`: :func:`compare_maps`, the one comparison that the
  pipeline's compare stage and the ``fsc`` and ``align`` commands call.

The names below are the public API; import them from here.
"""
from .align import align_maps
from .compare import THRESHOLDS, Comparison, compare_maps, on_map_grid
from .curves import plot_fsc, write_fsc_csv
from .fsc import fsc, fsc_resolution_A, fsc_resolutions_A
from .pose_error import PoseError, map_poses, pose_error_deg, pose_errors_deg
from .transform import MIRROR, mirror_volume, rotate_volume

__all__ = [
    "fsc", "fsc_resolution_A", "fsc_resolutions_A",
    "MIRROR", "rotate_volume", "mirror_volume",
    "align_maps",
    "map_poses", "pose_error_deg", "pose_errors_deg", "PoseError",
    "write_fsc_csv", "plot_fsc",
    "compare_maps", "Comparison", "on_map_grid", "THRESHOLDS",
]
