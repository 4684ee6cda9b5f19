"""``cryorecon view``: maps, stacks, STAR files and run folders in napari, at their true scale."""
from __future__ import annotations

from ..errors import InputError


def _cmd_view(args):
    from ..napari import INSTALL_HINT

    try:
        import napari
    except ImportError:
        raise InputError(INSTALL_HINT) from None
    from ..napari.viewer import check_paths, open_paths

    paths = check_paths(args.paths)  # refuse a bad path before a window opens
    viewer = napari.Viewer(title="cryorecon view")
    open_paths(viewer, paths)
    napari.run()
    return 0


def add_commands(sub):
    """Subcommand ``view``."""
    p = sub.add_parser(
        "view", help="open maps, stacks, STAR files or run folders in napari (needs the viz extra)",
        description="Open each MAP_OR_RUN in one napari window: maps (.mrc, .map, also .gz/.bz2) as iso-surfaces "
        "at their voxel size, stacks (.mrcs) and particle STAR files as image stacks with their metadata, run folders "
        "with their maps, FSC curve and pose distribution. Needs napari: pip install 'cryorecon[viz]'.",
    )
    p.add_argument("paths", nargs="+", metavar="MAP_OR_RUN", help="map, stack, STAR file or run folder")
    p.set_defaults(func=_cmd_view)
