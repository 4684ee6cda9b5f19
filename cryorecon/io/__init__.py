"""Files in and out: MRC maps and stacks, RELION STAR files, lazy particle stacks.

Everything here speaks Angstrom and degrees and RELION's conventions at the file
boundary, and every writer is atomic (:func:`atomic_write`).
"""
from .atomic import atomic_open, atomic_write
from .mrc import open_stack, read_header_info, read_map, write_map, write_stack
from .particles import ParticleStack
from .star import ParticleTable, read_particle_table, read_star, write_particle_star

__all__ = [
    "atomic_open",
    "atomic_write",
    "open_stack",
    "read_header_info",
    "read_map",
    "write_map",
    "write_stack",
    "ParticleStack",
    "ParticleTable",
    "read_particle_table",
    "read_star",
    "write_particle_star",
]
