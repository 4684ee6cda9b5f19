"""MRC maps and image stacks in and out, through ``mrcfile``.

Arrays are as ``mrcfile`` gives them: a volume is ``V[z, y, x]``, a stack is
``S[n, y, x]``. Sizes at this boundary are in Angstrom. A voxel size of 0 in a header
means "unknown" and is passed on as ``0.0``; it is the caller's job to decide what
to do (the CLI asks for ``--pixel-size``), never this module's to invent a value.

Reading is forgiving where it can be and loud where it cannot: a header that breaks the
MRC2014 rules is read again in ``mrcfile``'s permissive mode with a warning naming the
file, but a file whose data block is shorter than its header promises is refused with
an :class:`~cryorecon.errors.InputError`, because silently short data would poison a
reconstruction. Writes are atomic (:func:`~cryorecon.io.atomic.atomic_write`).
"""
from __future__ import annotations

import warnings
from pathlib import Path

import mrcfile
import mrcfile.dtypes
import mrcfile.utils
import numpy as np

from ..backend import to_host
from ..errors import InputError
from .atomic import atomic_write

__all__ = ["read_map", "write_map", "write_stack", "open_stack", "read_header_info"]

_HEADER_BYTES = 1024


def _header_only(path: Path):
    """The header of ``path``, strict if possible; also whether strict reading failed."""
    try:
        with mrcfile.open(path, mode="r", header_only=True) as m:
            return m.header.copy(), False
    except ValueError:
        pass
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            with mrcfile.open(path, mode="r", header_only=True, permissive=True) as m:
                header = None if m.header is None else m.header.copy()
        except (ValueError, OSError) as err:
            raise InputError(
                f"{path}: not a readable MRC file ({err}): check the path or re-export the file"
            ) from None
    if header is None:
        raise InputError(f"{path}: MRC header is unreadable: re-export the file")
    return header, True


def _check_plausible(path: Path) -> None:
    """Refuse files whose first 1024 bytes cannot be an MRC header in either byte order.

    mrcfile's permissive mode trusts the extended-header length of any garbage it is
    given and may then try to read gigabytes; a cheap look first avoids that.
    """
    size = path.stat().st_size
    with open(path, "rb") as handle:
        raw = handle.read(_HEADER_BYTES)
    too_short = False
    for order in ("<", ">"):
        h = np.frombuffer(raw, dtype=mrcfile.dtypes.HEADER_DTYPE.newbyteorder(order))[0]
        dims_ok = all(int(h[name]) > 0 for name in ("nx", "ny", "nz"))
        if dims_ok and 0 <= int(h["mode"]) < 256 and int(h["nsymbt"]) >= 0:
            if int(h["nsymbt"]) <= size - _HEADER_BYTES:
                return
            too_short = True
    if too_short:
        raise InputError(
            f"{path}: file is truncated (shorter than its extended header): re-export it or copy it again"
        )
    raise InputError(f"{path}: not an MRC file (its header makes no sense): check the path or re-export it")


def read_header_info(path) -> dict:
    """Check an MRC file's header against its size and describe its data block.

    Parameters
    ----------
    path : str or os.PathLike
        An ``.mrc``, ``.mrcs`` or ``.map`` file.

    Returns
    -------
    dict
        ``shape`` (as ``mrcfile`` would give it), ``dtype``, ``voxel_size_A`` (x, 0.0 if
        unknown), ``origin_A`` (x, y, z), ``data_offset`` (bytes) and ``nonstandard``
        (True when only ``mrcfile``'s permissive mode accepts the header).

    Raises
    ------
    InputError
        The file is missing, is not MRC, has an unsupported data mode, or is truncated.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: MRC file not found: check the path")
    if path.stat().st_size < _HEADER_BYTES:
        raise InputError(
            f"{path}: file is truncated (shorter than an MRC header): re-export it or copy it again"
        )
    _check_plausible(path)
    header, nonstandard = _header_only(path)
    try:
        dtype = mrcfile.utils.data_dtype_from_header(header)
    except ValueError:
        raise InputError(
            f"{path}: unsupported MRC data mode {int(header.mode)}: convert it to float32 (mode 2)"
        ) from None
    if np.dtype(dtype).kind == "c":
        raise InputError(
            f"{path}: complex MRC data (mode {int(header.mode)}) is not an image: "
            "write real-space float32 data"
        )
    shape = mrcfile.utils.data_shape_from_header(header)
    offset = _HEADER_BYTES + int(header.nsymbt)
    expected = offset + int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    actual = path.stat().st_size
    if actual < expected:
        raise InputError(
            f"{path}: file is truncated ({actual} of {expected} bytes the header promises): "
            "re-export it or copy it again"
        )
    return {
        "shape": tuple(int(s) for s in shape),
        "dtype": np.dtype(dtype),
        "voxel_size_A": _voxel_size_A(header, path),
        "origin_A": tuple(float(header.origin[c]) for c in ("x", "y", "z")),
        "data_offset": offset,
        "nonstandard": nonstandard,
    }


def _voxel_size_A(header, path) -> float:
    # Voxel size is cell length / sampling; a zero sampling or cell means "unknown" (0.0).
    sizes = []
    for cell, count in (("x", "mx"), ("y", "my")):
        n = int(header[count])
        length = float(header.cella[cell])
        if n > 0 and np.isfinite(length) and length > 0:
            # The header stores the cell in float32, so the ratio carries ~1e-7 noise;
            # 7 significant digits is what float32 holds (9.1 / 7 -> 1.3, 5.078125 kept).
            sizes.append(float(f"{length / n:.7g}"))
        else:
            sizes.append(0.0)
    x, y = sizes
    if x > 0 and y > 0 and not np.isclose(x, y, rtol=1e-5):
        warnings.warn(f"{path}: voxel size differs between x ({x} A) and y ({y} A); using x")
    return x


def _open_checked(path: Path, opener):
    """Open with ``opener`` (mrcfile.open or mrcfile.mmap), falling back to permissive."""
    info = read_header_info(path)
    if not info["nonstandard"]:
        try:
            return opener(path, mode="r"), info
        except ValueError:
            pass
    warnings.warn(
        f"{path}: MRC header does not follow the MRC2014 standard; read in permissive mode "
        "(check the voxel size and axis order)",
        stacklevel=3,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        handle = opener(path, mode="r", permissive=True)
    if handle.data is None:
        handle.close()
        raise InputError(f"{path}: MRC data block is unreadable: re-export the file")
    return handle, info


def read_map(path):
    """Read an MRC volume (or image) into memory as float32.

    Parameters
    ----------
    path : str or os.PathLike
        MRC file; data modes int8, int16, uint16, float16 and float32 are accepted.

    Returns
    -------
    data : numpy.ndarray
        float32, ``(z, y, x)`` for a volume (``(y, x)`` for a single image, ``(n, y, x)``
        for a stack), C-contiguous and owning its memory.
    voxel_size_A : float
        From the header; ``0.0`` when the header does not record one.

    Raises
    ------
    InputError
        Missing, non-MRC, complex-valued or truncated file.

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "v.mrc")
    >>> write_map(p, np.ones((4, 4, 4)), voxel_size_A=2.5)
    >>> v, a = read_map(p)
    >>> v.shape, v.dtype, a
    ((4, 4, 4), dtype('float32'), 2.5)
    """
    path = Path(path)
    handle, info = _open_checked(path, mrcfile.open)
    with handle:
        # Copy into a native float32 array: files may be big-endian or carry an explicit
        # '<f4', which callers would otherwise see as a different dtype.
        data = np.empty(handle.data.shape, dtype=np.float32)
        data[...] = handle.data
    return data, info["voxel_size_A"]


def _check_size_A(value, what: str, path) -> float:
    value = float(value)
    if not np.isfinite(value) or value < 0:
        raise InputError(f"{path}: {what} must be a finite number >= 0 A (0 = unknown), got {value}")
    return value


def write_map(path, data, voxel_size_A: float, origin_A=None) -> None:
    """Write a volume as a float32 MRC file, atomically.

    Parameters
    ----------
    path : str or os.PathLike
        Destination (``.mrc`` or ``.map``); replaced only once the new file is complete.
    data : array_like
        ``(z, y, x)`` volume (numpy or cupy); a 2D array is written as one image.
    voxel_size_A : float
        Voxel size in Angstrom (0 records "unknown").
    origin_A : sequence of 3 floats, optional
        Header origin ``(x, y, z)`` in Angstrom; left at 0 when omitted.

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "v.mrc")
    >>> write_map(p, np.zeros((8, 8, 8), np.float32), 1.2, origin_A=(0.0, 0.0, 0.0))
    """
    arr = np.ascontiguousarray(to_host(data), dtype=np.float32)
    if arr.ndim not in (2, 3):
        raise InputError(f"{path}: a map must be 2D or 3D, got shape {arr.shape}")
    voxel = _check_size_A(voxel_size_A, "voxel size", path)
    with atomic_write(path) as tmp:
        with mrcfile.new(tmp, overwrite=True) as m:
            m.set_data(arr)
            if arr.ndim == 3:
                m.set_volume()
            m.voxel_size = voxel
            if origin_A is not None:
                x, y, z = (float(o) for o in origin_A)
                m.header.origin.x, m.header.origin.y, m.header.origin.z = x, y, z


def write_stack(path, images, pixel_size_A: float) -> None:
    """Write images as an MRC image stack (``.mrcs``, ISPG 0), float32, atomically.

    Parameters
    ----------
    path : str or os.PathLike
        Destination, conventionally ``.mrcs``.
    images : array_like
        ``(n, L, L)`` (or one ``(L, L)`` image), numpy or cupy.
    pixel_size_A : float
        Pixel size in Angstrom (0 records "unknown").
    """
    arr = np.ascontiguousarray(to_host(images), dtype=np.float32)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise InputError(f"{path}: a stack must be (n, L, L), got shape {arr.shape}")
    pixel = _check_size_A(pixel_size_A, "pixel size", path)
    with atomic_write(path) as tmp:
        with mrcfile.new(tmp, overwrite=True) as m:
            m.set_data(arr)
            m.set_image_stack()
            m.voxel_size = pixel


def open_stack(path):
    """Memory-map an image stack read-only, without reading its pixels.

    Parameters
    ----------
    path : str or os.PathLike
        ``.mrcs`` stack, or any MRC file: a single 2D image counts as a stack of one,
        and the sections of a 3D file count as images.

    Returns
    -------
    images : numpy.memmap
        ``(n, L, L)``, in the file's own dtype; index it to read only those images.
    pixel_size_A : float
        From the header; ``0.0`` when unknown.

    Raises
    ------
    InputError
        Missing, non-MRC or truncated file, or images that are not square.
    """
    path = Path(path)
    handle, info = _open_checked(path, mrcfile.mmap)
    # numpy's memmap holds its own duplicate of the file descriptor, so the array stays
    # valid after mrcfile's handle is closed; closing it now avoids leaking handles.
    data = handle.data
    handle.close()
    if data.ndim == 2:
        data = data[None]
    if data.shape[1] != data.shape[2]:
        raise InputError(
            f"{path}: images are {data.shape[2]} x {data.shape[1]} px (x by y) but must be "
            "square: re-extract the particles with a square box"
        )
    return data, info["voxel_size_A"]
