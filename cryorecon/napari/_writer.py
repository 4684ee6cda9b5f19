"""The plugin's writer: an image layer to MRC, with the voxel size from the layer's scale.

A layer's scale is its voxel size in Angstrom (the readers set it so) and its translate
the origin. ``.mrcs``, or a layer read as a stack, is written as an image stack, whose
first axis is the image index and carries no size.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import InputError
from .display import STACK_KIND

__all__ = ["write_image_layer"]


def _voxel_size(path, scale) -> float:
    sizes = [float(s) for s in scale]
    if not np.allclose(sizes, sizes[0], rtol=1e-5):
        raise InputError(f"{path}: the layer's scale {tuple(sizes)} is not isotropic, and an MRC map has one voxel size: "
                         "resample the layer or set equal scales")
    return sizes[0]


def write_image_layer(path, data, meta) -> list[str]:
    """npe2 single-layer writer: ``data`` with the layer's ``meta`` to an MRC file.

    Parameters
    ----------
    path : str
        ``.mrc``, ``.map`` or ``.mrcs``.
    data : array_like
        The layer's data: ``(z, y, x)`` map, ``(y, x)`` image or ``(n, y, x)`` stack.
    meta : dict
        The layer's attributes as napari hands them to writers (``scale``,
        ``translate``, ``metadata``).

    Returns
    -------
    list of str
        The path written.

    Raises
    ------
    InputError
        Not 2D or 3D, or an anisotropic scale.
    """
    from ..io.mrc import write_map, write_stack

    path = Path(path)
    arr = np.asarray(data)
    if arr.ndim not in (2, 3):
        raise InputError(f"{path}: an MRC file holds a 2D image or a 3D map or stack; the layer is {arr.ndim}D")
    scale = list(meta.get("scale") or [1.0] * arr.ndim)
    translate = list(meta.get("translate") or [0.0] * arr.ndim)
    is_stack = path.suffix.lower() == ".mrcs" or (meta.get("metadata") or {}).get("cryorecon_kind") == STACK_KIND
    if is_stack and arr.ndim == 3:
        # the image axis has no physical size; x and y carry the pixel size
        write_stack(path, arr, _voxel_size(path, scale[1:]))
        return [str(path)]
    voxel = _voxel_size(path, scale)
    zyx = [0.0] * (3 - len(translate)) + [float(t) for t in translate]
    write_map(path, arr, voxel, origin_A=(zyx[2], zyx[1], zyx[0]))
    return [str(path)]
