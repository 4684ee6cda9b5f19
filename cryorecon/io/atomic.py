"""Write a file so that readers only ever see the old version or the complete new one.

Every writer in cryorecon (maps, stacks, STAR files, checkpoints, PNG and CSV) goes
through :func:`atomic_write`: the bytes go to a temporary file in the same folder, are
flushed to disk, and the temporary file is then renamed over the target. A crash, a
full disk or an exception half-way leaves the previous file untouched, which matters
for checkpoints that a ``--resume`` must be able to trust.
"""
from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

__all__ = ["atomic_write", "atomic_open"]


def _fsync_path(path: Path) -> None:
    # Open read-only: fsync on a read-only descriptor still flushes the file's pages.
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(folder: Path) -> None:
    # The rename itself lives in the directory entry; without this a power cut can
    # forget it. Not every platform lets a directory be opened, so this is best effort.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_write(path):
    """Context manager giving a temporary path to write to; renamed onto ``path`` on success.

    The temporary file sits in the same folder as ``path`` (so the final
    :func:`os.replace` is an atomic rename on one file system) and keeps the same
    suffix, because some writers choose the format from it (matplotlib) or append one
    when missing (``numpy.savez``). The temporary path does not exist when handed out,
    so writers that refuse to overwrite work too.

    Parameters
    ----------
    path : str or os.PathLike
        Final destination. Its folder must exist.

    Yields
    ------
    pathlib.Path
        Where to write. If the ``with`` body raises, or leaves no file there, the
        temporary file is removed and ``path`` is left exactly as it was.

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> out = os.path.join(tempfile.mkdtemp(), "state.npz")
    >>> with atomic_write(out) as tmp:
    ...     np.savez(tmp, x=np.zeros(3))
    >>> sorted(np.load(out).files)
    ['x']
    """
    final = Path(path)
    folder = final.parent
    tmp = folder / f".{final.name}.{secrets.token_hex(6)}.tmp{final.suffix}"
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"atomic_write: nothing was written to {tmp} for {final}")
        _fsync_path(tmp)
        os.replace(tmp, final)
        _fsync_dir(folder)
    finally:
        # On success the rename consumed tmp; on failure it may be half-written.
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


@contextlib.contextmanager
def atomic_open(path, mode: str = "w", **open_kwargs):
    """Open a file for writing through :func:`atomic_write` and yield the file object.

    Parameters
    ----------
    path : str or os.PathLike
        Final destination.
    mode : str
        ``"w"`` (text) or ``"wb"`` (binary); any mode :func:`open` accepts for writing.
    **open_kwargs
        Passed to :func:`open` (``encoding``, ``newline`` ...).

    Examples
    --------
    >>> import tempfile, os
    >>> out = os.path.join(tempfile.mkdtemp(), "fsc.csv")
    >>> with atomic_open(out, newline="") as f:
    ...     _ = f.write("shell,fsc\\n")
    >>> open(out).read()
    'shell,fsc\\n'
    """
    with atomic_write(path) as tmp:
        with open(tmp, mode, **open_kwargs) as handle:
            yield handle
