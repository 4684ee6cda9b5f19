"""The plugin's sample data: the bundled sample map and particles (``sample_data/``).

``sample_data/`` sits beside the package in a source checkout (and so in an editable
install); a wheel does not carry its 11 MB of particles.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import InputError
from ._reader import read_mrc_layers, read_star_layers

__all__ = ["sample_data_dir", "sample_map", "sample_particles"]


def sample_data_dir() -> Path:
    """The ``sample_data`` folder of the source checkout this package runs from."""
    folder = Path(__file__).resolve().parents[2] / "sample_data"
    if not (folder / "particles.star").is_file():
        raise InputError(f"{folder}: no sample data here: the sample data ship with cryorecon's source tree; "
                         "install cryorecon from a clone (pip install -e '.[viz]')")
    return folder


def sample_map() -> list:
    """The map the sample particles were simulated from (48^3 at 3.0 A/px), as an iso-surface."""
    return read_mrc_layers(sample_data_dir() / "truth.mrc")


def sample_particles() -> list:
    """The 1200 sample particles with their STAR metadata (CTF, no poses)."""
    return read_star_layers(sample_data_dir() / "particles.star")
