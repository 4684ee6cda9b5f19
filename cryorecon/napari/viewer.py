"""Open maps, stacks, STAR files and run folders in a napari viewer (``cryorecon view``)."""
from __future__ import annotations

from pathlib import Path

from ..errors import InputError
from ._reader import get_reader

__all__ = ["check_paths", "open_paths"]


def check_paths(paths) -> list[Path]:
    """The paths as Paths, each checked to be something the plugin opens (before a window opens)."""
    out = []
    for p in map(Path, paths):
        if not p.exists():
            raise InputError(f"{p}: no such file or folder: check the path")
        if get_reader(str(p)) is None:
            raise InputError(f"{p}: not a map, stack, STAR file or run folder "
                             "(.mrc, .map, .mrcs, optionally .gz/.bz2, .star, or a folder with maps)")
        out.append(p)
    return out


def open_paths(viewer, paths) -> list:
    """Add every path's layers to ``viewer``; a run folder also docks the results widget.

    Returns
    -------
    list of napari layers
        Those added, in order.
    """
    from ._widgets import ResultsWidget

    added = []
    for p in check_paths(paths):
        if p.is_dir():
            widget = ResultsWidget(viewer)
            viewer.window.add_dock_widget(widget, name=f"cryorecon results: {p.name}", area="right")
            layers = widget.open_folder(p)
            if layers is None:
                raise InputError(widget.status.text().removeprefix("error: "))
            added += layers
        else:
            for data, kwargs, kind in get_reader(str(p))(str(p)):
                added.append(getattr(viewer, f"add_{kind}")(data, **kwargs))
    if any(layer.ndim == 3 and layer.metadata.get("cryorecon_kind") == "map" for layer in added):
        viewer.dims.ndisplay = 3
    return added
