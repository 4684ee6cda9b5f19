"""A lazy particle stack: the STAR file's metadata in memory, the pixels memory-mapped.

:class:`ParticleStack` is the one object the reconstruction code reads particles
through. The STAR table is read and checked up front (paths, indices, box and pixel
size, CTF columns), so a bad input fails in the first second with one clear line;
the images are read only when asked for, a batch at a time, so a stack larger than
memory streams. Pixels are checked for NaN/Inf as each batch is read.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import InputError
from .stack_files import StackFiles, inspect_stacks, parse_image_names
from .star import (
    ANGLE_COLUMNS,
    CTF_COLUMNS,
    CTF_REQUIRED_COLUMNS,
    ParticleTable,
    ctf_params_from_table,
    read_particle_table,
    write_particle_star,
)

__all__ = ["ParticleStack", "CTF_KEYS"]

#: Old name of :data:`cryorecon.io.star.CTF_COLUMNS` (the keys of
#: :meth:`ParticleStack.ctf_params`, with the STAR column and default of each).
CTF_KEYS = CTF_COLUMNS


class ParticleStack:
    """Particle images from a STAR file and its MRC stacks, read lazily.

    Build one with :meth:`from_star`. Metadata live in :attr:`table` (the normalised
    per-particle DataFrame of :func:`~cryorecon.io.star.read_particle_table`); pixels
    are read on demand by :meth:`images` and :meth:`iter_batches`.

    Attributes
    ----------
    n : int
        Number of particles (also ``len(stack)``).
    box : int
        Image side length L in pixels.
    pixel_size_A : float
        Pixel size used: ``--pixel-size`` if given, else the STAR file's, else the MRC
        header's.
    header_pixel_size_A : float
        Pixel size in the first stack's MRC header (0.0 if unknown). It may disagree
        with the STAR file's; that is exposed, not judged.
    has_ctf : bool
        Whether the STAR file has CTF columns.
    star_path : pathlib.Path
    table : pandas.DataFrame
    version : str
        STAR format detected: ``"3.0"``, ``"3.1"`` or ``"5"``.

    Examples
    --------
    >>> stack = ParticleStack.from_star("particles.star")        # doctest: +SKIP
    >>> for idx, imgs in stack.iter_batches(256, rng=np.random.default_rng(0)):  # doctest: +SKIP
    ...     ctf = stack.ctf_params(idx)
    """

    def __init__(self, particle_table: ParticleTable, files: StackFiles, stack_ids, frames,
                 box: int, pixel_size_A: float, header_pixel_size_A: float, has_ctf: bool,
                 star_path: Path):
        self.particle_table = particle_table
        self._files = files
        self._stack_ids = np.asarray(stack_ids, dtype=np.int64)
        self._frames = np.asarray(frames, dtype=np.int64)
        self.box = int(box)
        self.pixel_size_A = float(pixel_size_A)
        self.header_pixel_size_A = float(header_pixel_size_A)
        self.has_ctf = bool(has_ctf)
        self.star_path = Path(star_path)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_star(cls, star_path, pixel_size_A: float | None = None, require_ctf: bool = True):
        """Open the particles of a RELION STAR file (3.0, 3.1 or 5).

        Parameters
        ----------
        star_path : str or os.PathLike
            Particle STAR file; ``rlnImageName`` entries ``000001@stack.mrcs`` count from
            1 and are relative to the STAR file's folder. Several stacks may be named.
        pixel_size_A : float, optional
            Overrides the pixel size of the STAR file and the MRC headers.
        require_ctf : bool
            Refuse a STAR file without CTF columns (the CLI's ``--no-ctf`` sets False).

        Returns
        -------
        ParticleStack

        Raises
        ------
        InputError
            Missing/truncated/non-square stacks, image indices past the end of a stack,
            missing CTF columns, no usable pixel size, or boxes or pixel sizes that
            differ between optics groups. The message names the file and the fix.
        """
        star_path = Path(star_path)
        table = read_particle_table(star_path, pixel_size_A=pixel_size_A)
        df = table.particles
        if "rlnImageName" not in df.columns:
            raise InputError(f"{star_path}: no rlnImageName column: this is not a particle STAR file")
        if len(df) == 0:
            raise InputError(f"{star_path}: the particle table is empty")
        frames, paths, stack_ids = parse_image_names(star_path, df["rlnImageName"].to_numpy())
        shapes, header_sizes = inspect_stacks(star_path, paths, frames, stack_ids)

        box = cls._check_box(star_path, df, paths, shapes)
        if pixel_size_A is None:
            pixel_size_A = cls._pick_pixel_size(star_path, df, paths, header_sizes)
            if "rlnImagePixelSize" not in df.columns:
                table = table.with_pixel_size(pixel_size_A)

        missing = [c for c in CTF_REQUIRED_COLUMNS if c not in table.particles.columns]
        if missing and require_ctf:
            raise InputError(
                f"{star_path}: no {missing[0]} column (CTF parameters): add CTF columns or "
                "pass --no-ctf"
            )
        files = StackFiles(paths, shapes)
        return cls(table, files, stack_ids, frames, box, pixel_size_A, header_sizes[0],
                   not missing, star_path)

    @staticmethod
    def _check_box(star_path, df, paths, shapes) -> int:
        if "rlnImageSize" in df.columns:
            per_group = df.groupby("rlnOpticsGroup", sort=True)["rlnImageSize"].first()
            if per_group.nunique() > 1:
                listing = ", ".join(f"{int(v)} px in group {g}" for g, v in per_group.items())
                raise InputError(
                    f"{star_path}: boxes differ between optics groups ({listing}): re-extract "
                    "at one box size or split the STAR file by optics group"
                )
        boxes = sorted({s[1] for s in shapes})
        if len(boxes) > 1:
            raise InputError(
                f"{star_path}: stacks have different box sizes ({', '.join(map(str, boxes))} px):"
                " re-extract at one box size"
            )
        box = boxes[0]
        if "rlnImageSize" in df.columns and int(df["rlnImageSize"].iloc[0]) != box:
            raise InputError(
                f"{star_path}: rlnImageSize is {int(df['rlnImageSize'].iloc[0])} but {paths[0]} "
                f"holds {box} px images: fix rlnImageSize in data_optics"
            )
        return box

    @staticmethod
    def _pick_pixel_size(star_path, df, paths, header_sizes) -> float:
        if "rlnImagePixelSize" in df.columns:
            sizes = np.unique(df["rlnImagePixelSize"].to_numpy(np.float64))
            if len(sizes) > 1:
                raise InputError(
                    f"{star_path}: pixel sizes differ between optics groups "
                    f"({', '.join(f'{s:g}' for s in sizes)} A): rescale the particles to one "
                    "pixel size or split the STAR file by optics group"
                )
            return float(sizes[0])
        if header_sizes[0] > 0:
            return float(header_sizes[0])
        raise InputError(
            f"{star_path}: no pixel size in the STAR file nor in the header of {paths[0]}: "
            "pass --pixel-size"
        )

    # ------------------------------------------------------------------ metadata
    @property
    def table(self) -> pd.DataFrame:
        """The normalised per-particle table (see :func:`~cryorecon.io.star.read_particle_table`)."""
        return self.particle_table.particles

    @property
    def version(self) -> str:
        return self.particle_table.version

    @property
    def stack_paths(self) -> list[Path]:
        """The stack files holding the particles' images, each once."""
        return list(self._files.paths)

    @property
    def n(self) -> int:
        return len(self._frames)

    def __len__(self) -> int:
        return self.n

    def __repr__(self) -> str:
        return (f"ParticleStack(n={self.n}, box={self.box}, pixel_size_A={self.pixel_size_A}, "
                f"star={str(self.star_path)!r})")

    def _column(self, name, default=None, indices=None) -> np.ndarray:
        df = self.table
        if name in df.columns:
            values = df[name].to_numpy(np.float64)
        else:
            values = np.full(self.n, np.nan if default is None else default, dtype=np.float64)
        return values if indices is None else values[np.asarray(indices)]

    @property
    def euler_deg(self) -> np.ndarray | None:
        """(N, 3) float64 RELION ``(rot, tilt, psi)`` in degrees; None without all three angles."""
        if not all(a in self.table.columns for a in ANGLE_COLUMNS):
            return None
        return np.stack([self._column(a) for a in ANGLE_COLUMNS], axis=1)

    @property
    def rotations(self) -> np.ndarray | None:
        """(N, 3, 3) float64 RELION matrices ``A = Rz(psi) Ry(tilt) Rz(rot)``; None without angles."""
        from ..geometry.rotations import euler_to_matrix

        euler = self.euler_deg
        if euler is None:
            return None
        return euler_to_matrix(euler[:, 0], euler[:, 1], euler[:, 2])

    @property
    def shifts_A(self) -> np.ndarray:
        """(N, 2) float64 ``(rlnOriginXAngst, rlnOriginYAngst)``; zeros where the file has none."""
        return np.stack(
            [self._column("rlnOriginXAngst", 0.0), self._column("rlnOriginYAngst", 0.0)], axis=1
        )

    @property
    def optics_group(self) -> np.ndarray:
        """(N,) int64 optics group of each particle."""
        return self.table["rlnOpticsGroup"].to_numpy(np.int64)

    def ctf_params(self, indices=None) -> dict | None:
        """CTF parameters of the given particles as 1-D float64 arrays.

        Kept in float64 because the CTF phase reaches hundreds of radians at high
        frequency, where float32 rounding of defocus would show.

        Parameters
        ----------
        indices : array_like of int, optional
            Particles to return; all when omitted.

        Returns
        -------
        dict or None
            Keys ``defocus_u_A, defocus_v_A, defocus_angle_deg, voltage_kV, cs_mm,
            amplitude_contrast, phase_shift_deg, bfactor_A2``; ``defocus_v_A`` defaults
            to ``defocus_u_A`` and angle, phase shift and B-factor to 0 when absent.
            None when the STAR file has no CTF columns (:attr:`has_ctf` False).
        """
        if not self.has_ctf:
            return None
        return ctf_params_from_table(self.table, indices)

    # ------------------------------------------------------------------ pixels
    def images(self, indices) -> np.ndarray:
        """Read the given particles' images (only those) as float32.

        Parameters
        ----------
        indices : array_like of int
            Particle indices in ``[0, n)``.

        Returns
        -------
        numpy.ndarray
            float32 ``(b, L, L)`` in ``indices`` order.

        Raises
        ------
        InputError
            An image holds NaN or Inf pixels.
        """
        idx = np.atleast_1d(np.asarray(indices, dtype=np.int64))
        if idx.ndim != 1:
            raise ValueError(f"indices must be 1-D, got shape {idx.shape}")
        if idx.size and (idx.min() < 0 or idx.max() >= self.n):
            raise IndexError(f"particle index out of range [0, {self.n})")
        out = np.empty((idx.size, self.box, self.box), dtype=np.float32)
        stack_ids, frames = self._stack_ids[idx], self._frames[idx]
        for k in np.unique(stack_ids):
            rows = np.flatnonzero(stack_ids == k)
            # Reading frames in file order keeps the page cache and read-ahead happy.
            order = np.argsort(frames[rows], kind="stable")
            rows = rows[order]
            out[rows] = self._files.get(int(k))[frames[rows]]
        finite = np.isfinite(out).all(axis=(1, 2))
        if not finite.all():
            j = int(np.flatnonzero(~finite)[0])
            raise InputError(
                f"{self._files.paths[stack_ids[j]]}: image {frames[j] + 1} (particle {idx[j]}) "
                "has NaN or Inf pixels: remove the particle from the STAR file or re-extract"
            )
        return out

    def iter_batches(self, batch_size: int, rng: np.random.Generator | None = None, indices=None):
        """Yield ``(indices, images)`` batches without loading the whole stack.

        Parameters
        ----------
        batch_size : int
            Images per batch (the last may be smaller).
        rng : numpy.random.Generator, optional
            Shuffles the order when given; the order then follows from the seed.
        indices : array_like of int, optional
            Particles to visit (all by default).

        Yields
        ------
        indices : numpy.ndarray of int64, (b,)
        images : numpy.ndarray float32, (b, L, L)
        """
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        order = np.arange(self.n) if indices is None else np.asarray(indices, dtype=np.int64)
        if rng is not None:
            order = rng.permutation(order)
        for start in range(0, order.size, int(batch_size)):
            batch = order[start:start + int(batch_size)]
            yield batch, self.images(batch)

    def check_finite(self, chunk_size: int = 1024) -> None:
        """Scan every particle's image in chunks; raise :class:`InputError` at the first NaN/Inf."""
        for _ in self.iter_batches(chunk_size):
            pass

    # ------------------------------------------------------------------ derived stacks, output
    def subset(self, indices) -> "ParticleStack":
        """A stack of the given particles (in that order), sharing the open files."""
        idx = np.asarray(indices, dtype=np.int64)
        sub = self.particle_table.particles.iloc[idx].reset_index(drop=True)
        table = ParticleTable(sub, list(self.particle_table.optics_columns),
                              self.particle_table.version, self.particle_table.origin_units,
                              self.particle_table.path)
        return ParticleStack(table, self._files, self._stack_ids[idx], self._frames[idx],
                             self.box, self.pixel_size_A, self.header_pixel_size_A,
                             self.has_ctf, self.star_path)

    def write_star(self, path, euler_deg=None, shifts_A=None, extra_columns=None) -> None:
        """Write the particles as a RELION 3.1 STAR file with the given poses, atomically.

        Parameters
        ----------
        path : str or os.PathLike
            Destination. Image names are rewritten relative to its folder, so the file
            works wherever it is written.
        euler_deg : array_like, (N, 3), optional
            ``(rot, tilt, psi)`` in degrees; the stack's own angles if omitted.
        shifts_A : array_like, (N, 2), optional
            ``(originX, originY)`` in Angstrom; the stack's own origins if omitted.
        extra_columns : dict of str to array_like, optional
            More per-particle columns (e.g. ``{"rlnMaxValueProbDistribution": p}``).
        """
        path = Path(path)
        df = self.table.copy()
        if euler_deg is not None:
            euler = np.asarray(euler_deg, dtype=np.float64)
            if euler.shape != (self.n, 3):
                raise ValueError(f"euler_deg must be ({self.n}, 3), got {euler.shape}")
            for j, name in enumerate(ANGLE_COLUMNS):
                df[name] = euler[:, j]
        if shifts_A is not None:
            shifts = np.asarray(shifts_A, dtype=np.float64)
            if shifts.shape != (self.n, 2):
                raise ValueError(f"shifts_A must be ({self.n}, 2), got {shifts.shape}")
            df["rlnOriginXAngst"], df["rlnOriginYAngst"] = shifts[:, 0], shifts[:, 1]
            df = df.drop(columns=["rlnOriginX", "rlnOriginY"], errors="ignore")
        for name, values in (extra_columns or {}).items():
            values = np.asarray(values)
            if values.shape != (self.n,):
                raise ValueError(f"extra column {name} must have shape ({self.n},), got {values.shape}")
            df[name] = values
        folder = os.path.abspath(path.parent)
        rel = [os.path.relpath(os.path.abspath(p), folder) for p in self._files.paths]
        df["rlnImageName"] = [f"{f + 1:06d}@{rel[k]}" for f, k in zip(self._frames, self._stack_ids)]
        table = ParticleTable(df, list(self.particle_table.optics_columns),
                              self.particle_table.version, self.particle_table.origin_units, path)
        write_particle_star(path, table, pixel_size_A=self.pixel_size_A, image_size=self.box)
