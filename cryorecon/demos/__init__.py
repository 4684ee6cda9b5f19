"""ML demos driven by :mod:`cryorecon.optim`; each reproduces a published effect.

Every demo is one module here that defines

- ``DESCRIPTION``: one line for ``cryorecon demo list``;
- ``run(out_dir, quick=False, seed=0) -> dict``: prints its metrics, writes at least
  one PNG into ``out_dir`` and returns the metrics that its test asserts on.

Demos use :mod:`cryorecon.optim` only; they never import reconstruction code.
"""
from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

_PRIVATE = {"_plotting", "_data", "_common"}


def names() -> list[str]:
    """The demo names, sorted."""
    return sorted(
        m.name
        for m in pkgutil.iter_modules(__path__)
        if not m.name.startswith("_") and m.name not in _PRIVATE
    )


def load(name: str):
    """The demo module called ``name``; a clear error lists the valid names."""
    from ..errors import InputError

    if name not in names():
        raise InputError(f"no demo called {name!r}; `cryorecon demo list` shows: {', '.join(names())}")
    return importlib.import_module(f"{__name__}.{name}")


def describe() -> dict[str, str]:
    """Map each demo name to its one-line description."""
    return {n: load(n).DESCRIPTION for n in names()}


def run_demo(name: str, out_dir: str | Path = ".", quick: bool = False, seed: int = 0) -> dict:
    """Run one demo, writing its PNGs into ``out_dir``; return its metrics."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return load(name).run(out, quick=quick, seed=seed)
