"""Save and restore optimizer states as ``.npz`` files, without pickle.

A state is a tree of named tuples, tuples, lists and dicts whose leaves are arrays
(numpy or cupy), Python or numpy scalars, or ``None``. :func:`save_state` writes each
leaf as its own array under its path in the tree (``0/mu/w``); :func:`load_state` walks
a template state of the same structure (``like``) and puts every leaf back with the
template leaf's type and device. Dtypes and values are stored as they are, so a
restored run continues bit for bit: step counts, moment estimates and the positions
of schedules (which depend only on step counts) all come back.
"""
from __future__ import annotations

import numbers
import os
import tempfile
from pathlib import Path

import numpy

from ._tree import is_cupy

__all__ = ["StateFileError", "save_state", "load_state"]

_FORMAT_KEY = "__cryorecon_optim_state__"
_FORMAT_VERSION = 1


class StateFileError(ValueError):
    """A state file that cannot be restored: missing, unreadable, or from another optimizer.

    The message is one line that names the file and says what to change. ``optim``
    stands alone, so it has its own error type; an application that treats bad input
    in one way (a command line printing one line) converts it where it calls
    :func:`load_state`.
    """


def _escape(key) -> str:
    return str(key).replace("%", "%25").replace("/", "%2F")


def _walk(tree, path, visit):
    """Call ``visit(path, leaf)`` on every leaf, including ``None``."""
    if isinstance(tree, tuple) and hasattr(tree, "_fields"):
        for name in tree._fields:
            _walk(getattr(tree, name), f"{path}/{name}", visit)
    elif isinstance(tree, (tuple, list)):
        for i, v in enumerate(tree):
            _walk(v, f"{path}/{i}", visit)
    elif isinstance(tree, dict):
        for k, v in tree.items():
            _walk(v, f"{path}/{_escape(k)}", visit)
    else:
        visit(path or "/", tree)


def _to_host(leaf):
    if is_cupy(leaf):
        return leaf.get()
    if isinstance(leaf, bool):
        return numpy.asarray(leaf, dtype=bool)
    if isinstance(leaf, numbers.Integral) and not isinstance(leaf, numpy.generic):
        return numpy.asarray(leaf, dtype=numpy.int64)
    if isinstance(leaf, numbers.Real) and not isinstance(leaf, numpy.generic):
        return numpy.asarray(leaf, dtype=numpy.float64)
    if isinstance(leaf, (numpy.ndarray, numpy.generic)):
        return numpy.asarray(leaf)
    raise TypeError(f"cannot save a state leaf of type {type(leaf).__name__}")


def save_state(path, state) -> Path:
    """Write an optimizer state to ``path`` (``.npz``, no pickle).

    The file is written under a temporary name and renamed into place, so an interrupted
    save never leaves a truncated checkpoint.

    Parameters
    ----------
    path : str or Path
        Destination; ``.npz`` is appended if missing.
    state : tree
        Any state returned by an ``init`` or ``update`` of this library (or a tuple of
        several, e.g. ``(opt_state, ema_state)``).

    Returns
    -------
    Path
        The path written.

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> from cryorecon import optim
    >>> opt = optim.adam(1e-3); s = opt.init(np.zeros(3))
    >>> f = optim.save_state(os.path.join(tempfile.mkdtemp(), "opt.npz"), s)
    >>> optim.load_state(f, like=s).count
    0
    """
    path = Path(path)
    if path.suffix != ".npz":
        path = path.with_name(path.name + ".npz")
    arrays = {}
    none_paths = []

    def visit(p, leaf):
        if leaf is None:
            none_paths.append(p)
        else:
            arrays[p] = _to_host(leaf)

    _walk(state, "", visit)
    arrays[_FORMAT_KEY] = numpy.asarray(_FORMAT_VERSION, dtype=numpy.int64)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".part.npz", dir=path.parent)
    os.close(fd)
    try:
        numpy.savez(tmp, **arrays)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def _restore(stored, like, path, file):
    if is_cupy(like):
        import cupy

        if stored.shape != like.shape:
            raise StateFileError(f"{file}: state entry {path} has shape {stored.shape}, expected {like.shape}; "
                             "pass like= a state of the same optimizer and parameter shapes")
        return cupy.asarray(stored)
    if isinstance(like, bool):
        return bool(stored)
    if isinstance(like, numbers.Integral) and not isinstance(like, numpy.generic):
        return int(stored)
    if isinstance(like, numbers.Real) and not isinstance(like, numpy.generic):
        return float(stored)
    if isinstance(like, numpy.generic):
        return stored[()]
    if stored.shape != numpy.shape(like):
        raise StateFileError(f"{file}: state entry {path} has shape {stored.shape}, expected "
                         f"{numpy.shape(like)}; pass like= a state of the same optimizer and parameter shapes")
    return stored


def _rebuild(like, path, data, file, used):
    if isinstance(like, tuple) and hasattr(like, "_fields"):
        return type(like)(*(_rebuild(getattr(like, n), f"{path}/{n}", data, file, used) for n in like._fields))
    if isinstance(like, (tuple, list)):
        return type(like)(_rebuild(v, f"{path}/{i}", data, file, used) for i, v in enumerate(like))
    if isinstance(like, dict):
        return {k: _rebuild(v, f"{path}/{_escape(k)}", data, file, used) for k, v in like.items()}
    if like is None:
        return None
    key = path or "/"
    if key not in data:
        raise StateFileError(f"{file}: no state entry {key}; the file was saved from a different "
                         "optimizer (pass like= a state of the optimizer that wrote it)")
    used.add(key)
    return _restore(data[key], like, key, file)


def load_state(path, like):
    """Read a state written by :func:`save_state`, shaped and typed like ``like``.

    Parameters
    ----------
    path : str or Path
        A ``.npz`` file from :func:`save_state`.
    like : tree
        A state of the same optimizer and parameter shapes (typically ``opt.init(params)``);
        cupy leaves in it are restored to the GPU, Python scalars as Python scalars.

    Returns
    -------
    The restored state.

    Raises
    ------
    StateFileError
        When the file is missing, not a state file, or does not match ``like``.
    """
    path = Path(path)
    if not path.is_file():
        raise StateFileError(f"{path}: optimizer state file not found; check the checkpoint path")
    try:
        with numpy.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except (ValueError, OSError) as exc:
        raise StateFileError(f"{path}: not a readable .npz optimizer state ({exc}); save it with optim.save_state") from exc
    if _FORMAT_KEY not in data:
        raise StateFileError(f"{path}: not an optimizer state written by optim.save_state")
    used = {_FORMAT_KEY}
    out = _rebuild(like, "", data, path, used)
    extra = sorted(set(data) - used)
    if extra:
        raise StateFileError(f"{path}: holds entries {extra[:3]} that like= lacks; pass like= a state "
                         "of the optimizer that wrote it")
    return out
