"""Where a particle's pixels live: ``rlnImageName`` parsed, the stack files checked and opened.

RELION names each image ``000012@sub/stack.mrcs`` (frame 12, counting from 1, of a
stack relative to the STAR file's folder). :func:`parse_image_names` turns the column
into frame indices and stack ids; :func:`inspect_stacks` checks every stack named
(exists, square images, enough frames) from its header alone; :class:`StackFiles` opens
the memory maps on first use and keeps a bounded number open.
:class:`~cryorecon.io.particles.ParticleStack` is built on these three.
"""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import numpy as np

from ..errors import InputError
from .mrc import open_stack, read_header_info

__all__ = ["StackFiles", "parse_image_names", "inspect_stacks"]


class StackFiles:
    """Memory maps of the stack files, opened on first use and shared by subsets.

    A RELION project often has one stack per micrograph, thousands of them, and each
    memory map holds a file descriptor; so at most ``max_open`` stay open (least
    recently used closes first). Below that, each file is opened exactly once.

    Parameters
    ----------
    paths : list of pathlib.Path
        The stack files, indexed by stack id.
    shapes : list of tuple
        ``(n_frames, L, L)`` of each, as checked when the STAR file was opened; a file
        whose shape changed since is refused.
    max_open : int
        Most memory maps kept open at once.
    """

    def __init__(self, paths, shapes, max_open: int = 256):
        self.paths = list(paths)
        self.shapes = list(shapes)
        self.max_open = max_open
        self._open = OrderedDict()

    def get(self, k: int):
        """The (memory-mapped) image array of stack ``k``."""
        if k in self._open:
            self._open.move_to_end(k)
            return self._open[k]
        data, _ = open_stack(self.paths[k])
        if data.shape != self.shapes[k]:
            raise InputError(
                f"{self.paths[k]}: stack changed on disk since it was opened "
                f"({self.shapes[k]} -> {data.shape}): restart the run"
            )
        self._open[k] = data
        if len(self._open) > self.max_open:
            self._open.popitem(last=False)
        return data


def parse_image_names(star_path: Path, names) -> tuple[np.ndarray, list[Path], np.ndarray]:
    """``000012@sub/stack.mrcs`` -> (frame index 0-based, unique stack paths, stack id).

    Parameters
    ----------
    star_path : pathlib.Path
        The STAR file: relative stack names are relative to its folder, and errors
        name it.
    names : sequence of str
        The ``rlnImageName`` column. A name without ``@`` is a file holding one image
        (RELION's convention).

    Returns
    -------
    frames : (n,) int64
        Frame of each particle in its stack, counting from 0.
    paths : list of pathlib.Path
        Each stack once, in order of first appearance.
    stack_ids : (n,) int64
        Index into ``paths`` of each particle's stack.
    """
    folder = star_path.parent
    frames = np.empty(len(names), dtype=np.int64)
    stack_ids = np.empty(len(names), dtype=np.int64)
    lookup: dict[str, int] = {}
    paths: list[Path] = []
    for row, name in enumerate(names):
        name = str(name).strip()
        if "@" in name:
            number, _, file_name = name.partition("@")
            try:
                frame = int(number)
            except ValueError:
                frame = 0
            if frame < 1:
                raise InputError(
                    f"{star_path}: rlnImageName {name!r} (row {row + 1}) must be N@stack with "
                    "N counting from 1: fix the STAR file"
                )
        else:
            frame, file_name = 1, name
        k = lookup.get(file_name)
        if k is None:
            k = lookup[file_name] = len(paths)
            p = Path(file_name)
            paths.append(p if p.is_absolute() else folder / p)
        frames[row] = frame - 1
        stack_ids[row] = k
    return frames, paths, stack_ids


def inspect_stacks(star_path: Path, paths, frames, stack_ids) -> tuple[list[tuple], list[float]]:
    """Check every stack from its header: it exists, its images are square, it has the frames asked for.

    Parameters
    ----------
    star_path : pathlib.Path
        The STAR file that names the stacks (for the messages).
    paths, frames, stack_ids
        As :func:`parse_image_names` returns.

    Returns
    -------
    shapes : list of (n_frames, L, L)
    header_sizes_A : list of float
        Each stack's header voxel size (0.0 when unknown).

    Raises
    ------
    InputError
        A missing stack, non-square images, or a frame past a stack's end; the message
        names the file and the fix.
    """
    shapes, header_sizes = [], []
    for k, path in enumerate(paths):
        if not path.is_file():
            raise InputError(
                f"{star_path}: rlnImageName names {path}, which does not exist: fix the "
                "path (it is relative to the STAR file's folder)"
            )
        info = read_header_info(path)
        shape = info["shape"]
        shape = (1,) + shape if len(shape) == 2 else shape
        if shape[1] != shape[2]:
            raise InputError(
                f"{path}: images are {shape[2]} x {shape[1]} px (x by y) but must be "
                "square: re-extract the particles with a square box"
            )
        used = frames[stack_ids == k]
        if used.max() >= shape[0]:
            raise InputError(
                f"{star_path}: rlnImageName {used.max() + 1:06d}@{path.name} is past the "
                f"end of {path} ({shape[0]} images): fix the STAR file or the stack"
            )
        shapes.append(shape)
        header_sizes.append(info["voxel_size_A"])
    return shapes, header_sizes
