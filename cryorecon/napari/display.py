"""How a map or a stack is shown: its scale and translate in Angstrom, and an iso level.

napari layers are tuples ``(data, kwargs, layer_type)`` (its ``LayerDataTuple``), so
this module builds them without importing napari. Axes are napari's, i.e. the array's:
``(z, y, x)`` for a map, ``(n, y, x)`` for a stack, whose image axis has scale 1.
"""
from __future__ import annotations

import numpy as np

__all__ = ["iso_threshold", "map_layer", "stack_layer", "MAP_KIND", "STACK_KIND"]

# metadata["cryorecon_kind"] tells the writer a stack (.mrcs) from a map
MAP_KIND = "map"
STACK_KIND = "stack"


def iso_threshold(volume, bins: int = 256) -> float:
    """An iso-surface level that separates a map's density from its background (Otsu).

    The level maximises the between-class variance of the voxel histogram (Otsu 1979,
    IEEE Trans. SMC 9:62). A map is mostly solvent with a minority of molecule, which is
    the two-class picture the criterion assumes; unlike ``mean + k std`` it does not
    depend on how much empty box surrounds the molecule.

    Parameters
    ----------
    volume : array_like
        Any real array (a map).
    bins : int
        Histogram bins.

    Returns
    -------
    float
        The level; the array's value itself for a constant array.

    Examples
    --------
    >>> v = np.zeros((8, 8, 8), np.float32); v[2:5, 2:5, 2:5] = 1.0
    >>> 0.0 < iso_threshold(v) < 1.0
    True
    """
    v = np.asarray(volume, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    lo, hi = (float(v.min()), float(v.max())) if v.size else (0.0, 0.0)
    if hi <= lo:
        return lo
    counts, edges = np.histogram(v, bins=bins, range=(lo, hi))
    centres = 0.5 * (edges[:-1] + edges[1:])
    w0 = np.cumsum(counts)  # voxels at or below each bin
    w1 = w0[-1] - w0
    s0 = np.cumsum(counts * centres)
    m0 = s0 / np.maximum(w0, 1)
    m1 = (s0[-1] - s0) / np.maximum(w1, 1)
    between = w0 * w1 * (m0 - m1) ** 2
    k = int(np.argmax(between[:-1]))
    return float(edges[k + 1])


def _contrast(data) -> tuple[float, float]:
    lo, hi = float(np.nanmin(data)), float(np.nanmax(data))
    return (lo, hi) if hi > lo else (lo, lo + 1.0)


def _scale(voxel_size_A: float) -> float:
    # napari needs a positive scale; a header with no voxel size (0) is shown in pixels
    return float(voxel_size_A) if voxel_size_A and voxel_size_A > 0 else 1.0


def map_layer(data, voxel_size_A: float, origin_A=(0.0, 0.0, 0.0), name="map", metadata=None):
    """A 3D map (or a 2D image) as an image layer at its true scale, rendered as an iso-surface.

    Parameters
    ----------
    data : (z, y, x) or (y, x) array
    voxel_size_A : float
        Voxel size; 0 (unknown) shows the map in pixels.
    origin_A : (x, y, z)
        The MRC header's origin in Angstrom, the position of voxel 0; it becomes the
        layer's translate, in napari's axis order.
    name : str
    metadata : dict, optional
        Extra layer metadata (the source path, say).

    Returns
    -------
    tuple
        ``(data, kwargs, "image")``.
    """
    data = np.asarray(data)
    s = _scale(voxel_size_A)
    x, y, z = (float(o) for o in origin_A)
    meta = {"cryorecon_kind": MAP_KIND, "voxel_size_A": float(voxel_size_A), **(metadata or {})}
    kwargs = {"name": name, "scale": (s,) * data.ndim, "translate": (z, y, x)[-data.ndim:], "metadata": meta,
              "contrast_limits": _contrast(data), "colormap": "gray"}
    if data.ndim == 3:
        kwargs.update(rendering="iso", iso_threshold=iso_threshold(data))
    return data, kwargs, "image"


def stack_layer(data, pixel_size_A: float, origin_A=(0.0, 0.0, 0.0), name="stack", metadata=None):
    """An image stack ``(n, y, x)`` as a layer of 2D images: the image axis has scale 1.

    Parameters are those of :func:`map_layer`; ``data`` may be any array-like (a lazy
    dask array for a STAR file's particles).
    """
    s = _scale(pixel_size_A)
    x, y, _ = (float(o) for o in origin_A)
    meta = {"cryorecon_kind": STACK_KIND, "voxel_size_A": float(pixel_size_A), **(metadata or {})}
    kwargs = {"name": name, "scale": (1.0, s, s), "translate": (0.0, y, x), "metadata": meta, "colormap": "gray"}
    if isinstance(data, np.ndarray):
        kwargs["contrast_limits"] = _contrast(data)
    return data, kwargs, "image"
