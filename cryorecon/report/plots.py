"""Figures of a run: optimisation history, central slices, projections beside particles.

Every figure is a bare matplotlib ``Figure`` (no pyplot, no display, no global backend
switch) and is written by :func:`cryorecon.io.figures.save_png`, atomically, so an
interrupted run never leaves a half-written PNG.
"""
from __future__ import annotations

import csv

import numpy as np

from ..io.figures import save_png


def _subplots(nrows, ncols, figsize, **kw):
    """``(fig, axes)`` of a Figure made without pyplot (nothing global is touched)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    return fig, fig.subplots(nrows, ncols, **kw)


def _save(fig, path):
    return save_png(fig, path, dpi=110, bbox_inches="tight")


# --------------------------------------------------------------------------- history
def read_history_csv(path) -> dict:
    """``history.csv`` as ``{column: float64 array}``."""
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    if not rows:
        raise ValueError(f"{path}: empty history")
    header, body = rows[0], rows[1:]
    data = np.asarray(body, dtype=np.float64).reshape(len(body), len(header))
    return {name: data[:, j] for j, name in enumerate(header)}


def plot_history(path, history: dict):
    """``loss.png``: loss, band limit (k_max and resolution) and batch size per iteration.

    Parameters
    ----------
    path : str or Path
    history : dict of arrays
        Columns ``iteration``, ``loss``, ``k_max_px``, ``resolution_A``, ``batch_size``
        (as :func:`read_history_csv` returns).
    """
    it = history["iteration"]
    fig, axes = _subplots(3, 1, figsize=(6.5, 7.5), sharex=True)
    ax = axes[0]
    ax.plot(it, history["loss"], lw=1.0, color="C0")
    ax.set_ylabel("loss per image\n(neg. log-likelihood)")
    ax.set_title("ab initio optimisation")
    ax.grid(alpha=0.3)

    ax = axes[1]
    ax.plot(it, history["resolution_A"], color="C1", label="band limit (A)")
    ax.set_ylabel("band limit (A)", color="C1")
    ax.invert_yaxis()
    ax.grid(alpha=0.3)
    twin = ax.twinx()
    twin.plot(it, history["k_max_px"], color="C2", ls="--", label="k_max (px)")
    twin.set_ylabel("k_max (Fourier px)", color="C2")

    ax = axes[2]
    ax.step(it, history["batch_size"], where="post", color="C3")
    ax.set_ylabel("mini-batch size")
    ax.set_xlabel("iteration")
    ax.grid(alpha=0.3)
    return _save(fig, path)


# --------------------------------------------------------------------------- slices
def central_slices(volume: np.ndarray) -> dict:
    """The three central planes of ``V[z, y, x]`` through index ``L // 2``.

    Returns ``{"z": V[c, :, :] (y, x), "y": V[:, c, :] (z, x), "x": V[:, :, c] (z, y)}``.
    """
    c = volume.shape[0] // 2
    return {"z": volume[c, :, :], "y": volume[:, c, :], "x": volume[:, :, c]}


def plot_slices(path, volumes, pixel_size_A: float):
    """``slices.png``: central slices along z, y and x, one row per map.

    Parameters
    ----------
    path : str or Path
    volumes : (L, L, L) array or dict ``{label: (L, L, L) array}``
    pixel_size_A : float
        For the axes, in Angstrom from the box centre.
    """
    if not isinstance(volumes, dict):
        volumes = {"map": volumes}
    rows = len(volumes)
    fig, axes = _subplots(rows, 3, figsize=(9, 3.1 * rows), squeeze=False)
    for r, (label, vol) in enumerate(volumes.items()):
        vol = np.asarray(vol, dtype=np.float32)
        L = vol.shape[0]
        half = L * pixel_size_A / 2
        extent = (-half, half, half, -half)
        planes = central_slices(vol)
        lo, hi = np.percentile(np.stack(list(planes.values())), [0.5, 99.5])
        for c, (axis, plane) in enumerate(planes.items()):
            ax = axes[r, c]
            ax.imshow(plane, cmap="gray", vmin=lo, vmax=hi, extent=extent)
            names = {"z": ("x", "y"), "y": ("x", "z"), "x": ("y", "z")}[axis]
            ax.set_title(f"{label}: {axis} = 0", fontsize=9)
            ax.set_xlabel(f"{names[0]} (A)", fontsize=8)
            ax.set_ylabel(f"{names[1]} (A)", fontsize=8)
            ax.tick_params(labelsize=7)
    fig.tight_layout()
    return _save(fig, path)


# --------------------------------------------------------------------------- projections
def view_directions(rotations: np.ndarray) -> np.ndarray:
    """Unit viewing directions (N, 3): the map axis along which each image projects, ``A^T e_z``."""
    return np.asarray(rotations)[:, 2, :]


def pick_views(rotations: np.ndarray, n_views: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of ``n_views`` particles whose viewing directions are spread out.

    Farthest-point sampling on the sphere of directions (a random first pick), so the
    views shown cover the orientations the data have.
    """
    d = view_directions(rotations)
    chosen = [int(rng.integers(len(d)))]
    dist = np.arccos(np.clip(d @ d[chosen[0]], -1, 1))
    for _ in range(1, min(n_views, len(d))):
        nxt = int(np.argmax(dist))
        chosen.append(nxt)
        dist = np.minimum(dist, np.arccos(np.clip(d @ d[nxt], -1, 1)))
    return np.asarray(chosen)


def inplane_angle_rad(rotation: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """In-plane angle ``delta`` with ``rotation ~ Rz(delta) reference`` (RELION's Rz).

    ``rotation`` may be a stack (N, 3, 3). Exact when the two share a viewing direction;
    for nearby directions it is the in-plane part of the relative rotation.
    """
    rel = np.asarray(rotation) @ np.asarray(reference).T
    return np.arctan2(rel[..., 0, 1], rel[..., 0, 0])


def align_to_reference(image: np.ndarray, shift_px, delta_rad: float) -> np.ndarray:
    """Centre ``image`` (undo its origin offset) and turn it into the reference's frame.

    The particle centre sits at ``L//2 - o``; translating by ``+o`` centres it. An image
    taken at ``Rz(delta) A`` equals the one at ``A`` sampled at ``Rz(delta)``-rotated
    pixel coordinates, ``P_ref(u) = P(M u)`` with ``M = [[c, s], [-s, c]]`` on ``(x, y)``.
    """
    from scipy import ndimage

    L = image.shape[-1]
    centred = np.fft.ifft2(ndimage.fourier_shift(np.fft.fft2(image), (shift_px[1], shift_px[0]))).real
    c, s = np.cos(delta_rad), np.sin(delta_rad)
    y, x = np.indices((L, L), dtype=np.float64) - L // 2
    xs = c * x + s * y + L // 2
    ys = -s * x + c * y + L // 2
    return ndimage.map_coordinates(centred, [ys, xs], order=1, mode="constant", cval=0.0).astype(np.float32)


def view_average(images, rotations, shifts_px, index: int, tolerance_deg: float, ctf_params=None,
                 pixel_size_A=None, max_members: int = 200):
    """Average of the particles viewed within ``tolerance_deg`` of particle ``index``'s view.

    Each member is phase-flipped (when ``ctf_params`` are given), centred and turned into
    particle ``index``'s in-plane frame first: a class average made from the estimated
    poses. Returns ``(average (L, L) float32, member indices)``.
    """
    d = view_directions(rotations)
    angle = np.degrees(np.arccos(np.clip(d @ d[index], -1, 1)))
    members = np.flatnonzero(angle <= tolerance_deg)
    members = members[np.argsort(angle[members], kind="stable")][:max_members]
    stack = np.asarray(images[members], dtype=np.float32)
    if ctf_params is not None:
        from ..reconstruct.preprocess import phase_flip

        stack = phase_flip(stack, {k: np.asarray(v)[members] for k, v in ctf_params.items()}, pixel_size_A)
    deltas = inplane_angle_rad(rotations[members], rotations[index])
    total = np.zeros(stack.shape[1:], dtype=np.float64)
    for img, sh, dl in zip(stack, shifts_px[members], deltas):
        total += align_to_reference(img, sh, dl)
    return (total / len(members)).astype(np.float32), members


def plot_projections(path, volume, rotations, shifts_px, images, pixel_size_A, ctf_params=None,
                     n_views: int = 6, tolerance_deg: float = 15.0, rng=None) -> list:
    """``projections.png``: projections of the map at estimated poses above matching particles.

    Parameters
    ----------
    path : str or Path
    volume : (L, L, L) array
        The map, at the particles' box.
    rotations : (N, 3, 3) array
        Estimated RELION pose matrices.
    shifts_px : (N, 2) array
        Estimated origin offsets ``(x, y)`` in the images' pixels.
    images : (N, L, L) array
        The particles as the reconstruction saw them.
    pixel_size_A : float
    ctf_params : dict, optional
        Phase-flip the particles before averaging.
    n_views : int
        Number of views (columns).
    tolerance_deg : float
        Particles whose viewing direction lies within this of a view are averaged.
    rng : numpy.random.Generator
        Picks the first view.

    Returns
    -------
    list of dict
        Per view: the reference particle, the number averaged and the correlation of the
        average with the projection.
    """
    from ..forward.projector import project

    rng = rng if rng is not None else np.random.default_rng(0)
    rotations = np.asarray(rotations, dtype=np.float64)
    picks = pick_views(rotations, n_views, rng)
    projections = np.asarray(project(np.asarray(volume, dtype=np.float32), rotations[picks].astype(np.float32)))
    fig, axes = _subplots(2, len(picks), figsize=(1.9 * len(picks), 4.3), squeeze=False)
    summary = []
    for j, idx in enumerate(picks):
        avg, members = view_average(images, rotations, shifts_px, int(idx), tolerance_deg, ctf_params, pixel_size_A)
        proj = projections[j]
        corr = float(np.corrcoef(proj.ravel(), avg.ravel())[0, 1])
        rot = np.degrees(np.arctan2(rotations[idx, 2, 1], rotations[idx, 2, 0]))
        tilt = np.degrees(np.arccos(np.clip(rotations[idx, 2, 2], -1, 1)))
        for row, (img, text) in enumerate(((proj, f"rot {rot:.0f}, tilt {tilt:.0f}"), (avg, f"{len(members)} particles, r={corr:.2f}"))):
            ax = axes[row, j]
            lo, hi = np.percentile(img, [1, 99])
            ax.imshow(img, cmap="gray", vmin=lo, vmax=hi)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(text, fontsize=7)
        summary.append({"particle": int(idx), "n_averaged": int(len(members)), "correlation": corr})
    axes[0, 0].set_ylabel("map projection", fontsize=8)
    axes[1, 0].set_ylabel("particle average", fontsize=8)
    fig.suptitle(f"projections at estimated poses vs particles within {tolerance_deg:g} deg", fontsize=9)
    fig.tight_layout()
    _save(fig, path)
    return summary


__all__ = [
    "read_history_csv", "plot_history", "central_slices", "plot_slices", "view_directions", "pick_views",
    "inplane_angle_rad", "align_to_reference", "view_average", "plot_projections",
]
