"""The plugin's readers: MRC maps and stacks (also gzip/bzip2), and RELION particle STAR files.

Each returns napari layer tuples built by :mod:`.display`, so it works, and is
tested, without napari. A map comes at its voxel size with the header's origin as the
translate, rendered as an iso-surface; a ``.mrcs`` stack as a stack of 2D images; a
STAR file as its particle images plus one point per particle, at the centre of its
image, whose features are the particle's row of the STAR table (defocus, pose, class,
...): napari keeps features on points, not on images.
"""
from __future__ import annotations

import bz2
import contextlib
import gzip
import shutil
import tempfile
from pathlib import Path

import numpy as np

from ..errors import InputError
from .display import map_layer, stack_layer

__all__ = ["get_reader", "read_layers", "read_mrc_layers", "read_run_folder_layers", "read_star_layers", "MRC_SUFFIXES"]

MRC_SUFFIXES = (".mrc", ".map", ".mrcs")
_COMPRESSED = {".gz": gzip.open, ".bz2": bz2.open}
# A STAR file's particles up to this size are read at once (fast to browse); larger
# sets stay lazy, read a block of images at a time as napari shows them.
_EAGER_BYTES = 256 * 2**20
_LAZY_BLOCK = 256


def _split_name(path: Path) -> tuple[str, str, str]:
    """(stem, MRC suffix, compression suffix or "") of a file name, lower-cased suffixes."""
    name = path.name
    compression = ""
    for c in _COMPRESSED:
        if name.lower().endswith(c):
            compression, name = c, name[: -len(c)]
    stem, dot, suffix = name.rpartition(".")
    return (stem if dot else name), ("." + suffix.lower() if dot else ""), compression


@contextlib.contextmanager
def _plain_file(path: Path, compression: str):
    """``path`` itself, or its decompressed copy in a temporary folder (removed afterwards)."""
    if not compression:
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="cryorecon-") as tmp:
        plain = Path(tmp) / path.name[: -len(compression)]
        try:
            with _COMPRESSED[compression](path, "rb") as src, open(plain, "wb") as dst:
                shutil.copyfileobj(src, dst, length=2**22)
        except (OSError, EOFError) as err:
            raise InputError(f"{path}: cannot decompress it ({err}): check the file or decompress it yourself") from None
        yield plain


def read_mrc_layers(path) -> list:
    """Layers of an MRC file: a map (3D, iso-surface), an image (2D) or a ``.mrcs`` stack.

    Parameters
    ----------
    path : str or os.PathLike
        ``.mrc``, ``.map`` or ``.mrcs``, optionally ending in ``.gz`` or ``.bz2``.

    Returns
    -------
    list of (data, kwargs, "image")
        One layer, with ``scale`` the voxel size in A and ``translate`` the origin.

    Raises
    ------
    InputError
        As :func:`cryorecon.io.mrc.read_map`, and for a file that does not decompress.
    """
    from ..io.mrc import read_header_info, read_map

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found: check the path")
    stem, suffix, compression = _split_name(path)
    with _plain_file(path, compression) as plain:
        info = read_header_info(plain)
        data, voxel = read_map(plain)
    meta = {"source": str(path)}
    if suffix == ".mrcs" or (data.ndim == 3 and info["shape"][0] == 1):
        stack = data if data.ndim == 3 else data[None]
        return [stack_layer(stack, voxel, info["origin_A"], name=stem, metadata=meta)]
    return [map_layer(data, voxel, info["origin_A"], name=stem, metadata=meta)]


def _particle_images(stack):
    """The stack's images: a numpy array when small, else a lazy dask array (when dask is there)."""
    L, n = stack.box, stack.n
    if n * L * L * 4 <= _EAGER_BYTES:
        return stack.images(np.arange(n))
    try:
        import dask
        import dask.array as da
    except ImportError:
        return stack.images(np.arange(n))
    blocks = [
        da.from_delayed(dask.delayed(stack.images)(np.arange(a, min(a + _LAZY_BLOCK, n))),
                        shape=(min(a + _LAZY_BLOCK, n) - a, L, L), dtype=np.float32)
        for a in range(0, n, _LAZY_BLOCK)
    ]
    return da.concatenate(blocks, axis=0)


def particle_features(stack):
    """One row per particle: its index and every column of the normalised STAR table."""
    table = stack.table.reset_index(drop=True).copy()
    table.insert(0, "particle", np.arange(stack.n))
    return table


def read_star_layers(path) -> list:
    """Layers of a RELION particle STAR file: the images, and a point per particle with its metadata.

    Parameters
    ----------
    path : str or os.PathLike
        STAR file (RELION 3.0, 3.1 or 5) whose ``rlnImageName`` names MRC stacks.

    Returns
    -------
    list
        ``[(images, kwargs, "image"), (points, kwargs, "points")]``: the ``(n, L, L)``
        stack at its pixel size, and ``n`` points, point ``i`` at the centre of image
        ``i`` with ``features`` row ``i`` of the STAR table (``rlnDefocusU``,
        ``rlnAngleRot``, ``rlnClassNumber`` ...). The image layer's metadata holds the
        same table under ``"features"``.

    Raises
    ------
    InputError
        As :meth:`cryorecon.io.particles.ParticleStack.from_star`.
    """
    from ..io.particles import ParticleStack

    path = Path(path)
    stack = ParticleStack.from_star(path, require_ctf=False)
    features = particle_features(stack)
    px = stack.pixel_size_A
    name = path.stem
    images = stack_layer(_particle_images(stack), px, name=name,
                         metadata={"source": str(path), "features": features})
    s = images[1]["scale"][-1]
    centre = (stack.box // 2) * s
    coords = np.column_stack([np.arange(stack.n, dtype=np.float64), np.full(stack.n, centre), np.full(stack.n, centre)])
    points = (coords, {"name": f"{name} particles", "features": features, "size": max(2.0, 0.1 * stack.box) * s,
                       "face_color": "transparent", "border_color": "yellow", "metadata": {"source": str(path)}}, "points")
    return [images, points]


def read_layers(path) -> list:
    """Layers of any file the plugin reads (an MRC file, compressed or not, or a STAR file)."""
    p = Path(path)
    if p.suffix.lower() == ".star":
        return read_star_layers(p)
    _, suffix, _ = _split_name(p)
    if suffix in MRC_SUFFIXES:
        return read_mrc_layers(p)
    raise InputError(f"{p}: not a file cryorecon reads (.mrc, .map, .mrcs, optionally .gz/.bz2, or .star)")


def get_reader(path):
    """npe2 reader hook: the reader for ``path``, or None for paths this plugin does not read."""
    if isinstance(path, (list, tuple)):
        if not path:
            return None
        if any(get_reader(p) is None for p in path):
            return None
        return lambda paths: [layer for p in paths for layer in read_layers(p)]
    p = Path(path)
    if p.is_dir():
        return read_run_folder_layers if any(q.suffix.lower() in (".mrc", ".map") for q in p.iterdir()) else None
    if p.suffix.lower() == ".star" or _split_name(p)[1] in MRC_SUFFIXES:
        return read_layers
    return None


def read_run_folder_layers(path) -> list:
    """Layers of a run folder: its maps, half-maps and mask (see :class:`.runs.RunFolder`)."""
    from .runs import RunFolder

    return RunFolder.open(path).layers()
