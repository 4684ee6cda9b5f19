"""Files in and out: MRC maps and stacks, RELION STAR files, lazy particle stacks, figures.

Everything here speaks Angstrom and degrees and RELION's conventions at the file
boundary, and every writer is atomic (:func:`atomic_write`).

The names below are loaded on first use, so that importing one light submodule (e.g.
:mod:`cryorecon.io.figures` from the demos) does not pull in ``mrcfile``, ``starfile``
and ``pandas``.
"""
from __future__ import annotations

import importlib

# public name -> submodule that defines it
_EXPORTS = {
    "atomic_open": "atomic",
    "atomic_write": "atomic",
    "open_stack": "mrc",
    "read_header_info": "mrc",
    "read_map": "mrc",
    "write_map": "mrc",
    "write_stack": "mrc",
    "ParticleStack": "particles",
    "ParticleTable": "star",
    "read_particle_table": "star",
    "read_star": "star",
    "write_particle_star": "star",
    "save_png": "figures",
}

__all__ = list(_EXPORTS)


def __getattr__(name):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
