"""A chiral pseudo-molecule: test maps whose mirror image is a different object.

Ab initio reconstruction cannot know a map's hand, so validation must find the mirror.
That can only be tested on a map that is not superimposable on its mirror image: a
helix of Gaussian blobs (a helix has a hand) with a bent arm at one end and a heavier
blob off the axis, so that no rotation maps it onto itself or onto its mirror.
"""
from __future__ import annotations

import numpy as np

from ..errors import InputError


def _generator(rng):
    if isinstance(rng, np.random.Generator):
        return rng
    return np.random.default_rng(rng)


def chiral_phantom_blobs(L, rng=0, *, sigma_px=None, handedness="right", extent=0.7, arm=True):
    """Centres (x, y, z, in px from the centre), widths and heights of the phantom's blobs.

    Parameters
    ----------
    L : int
        Box size in pixels.
    rng : numpy.random.Generator or int
        Source of the small jitter of positions and heights (an int is a seed).
    sigma_px : float, optional
        Blob width (standard deviation); default ``max(1, L / 32)``.
    handedness : {"right", "left"}
        Hand of the helix; "left" is the exact mirror image (z -> -z) of "right".
    extent : float
        Every blob, out to 2 sigma, lies within ``extent * L / 2`` of the centre.
    arm : bool
        Include the bent arm (5 of the 17 blobs). Without it the phantom is the same
        complex missing a subunit: compositional heterogeneity for classification tests.
        Both variants are placed and scaled identically.

    Returns
    -------
    centres_px : (n, 3) float64, sigmas_px : (n,) float64, heights : (n,) float64
    """
    if handedness not in ("right", "left"):
        raise InputError(f"handedness {handedness!r}: use 'right' or 'left'")
    if L < 8:
        raise InputError(f"phantom box L={L}: use L >= 8")
    rng = _generator(rng)
    sigma = float(sigma_px) if sigma_px is not None else max(1.0, L / 32)
    # Built in units of the box radius, then scaled to fit.
    t = np.linspace(0.0, 2.5 * np.pi, 11)  # 1.25 turns
    helix = np.stack([0.32 * np.cos(t), 0.32 * np.sin(t), np.linspace(-0.45, 0.45, t.size)], axis=1)
    top = helix[-1]
    arm_blobs = np.array([top + [0.12 * i, 0.0, 0.04 * i] for i in range(1, 4)]
                         + [top + [0.36, 0.12 * i, 0.12] for i in range(1, 3)])
    heavy = np.array([[-0.2, -0.28, -0.35]])
    centres = np.concatenate([helix, arm_blobs, heavy])
    sigmas = np.full(len(centres), sigma)
    sigmas[-1] = 1.6 * sigma
    heights = np.ones(len(centres))
    heights[-1] = 1.5
    centres = centres + rng.normal(scale=0.02, size=centres.shape)
    heights = heights * rng.uniform(0.8, 1.0, size=heights.shape)
    radius = np.linalg.norm(centres, axis=1)
    limit = extent * L / 2
    scale = (limit - 2 * sigmas) / radius
    centres = centres * max(float(scale.min()), 0.0)
    if handedness == "left":
        centres[:, 2] *= -1
    if not arm:
        keep = np.r_[0 : helix.shape[0], helix.shape[0] + arm_blobs.shape[0] :]
        centres, sigmas, heights = centres[keep], sigmas[keep], heights[keep]
    return centres, sigmas, heights


def chiral_phantom(L, rng=0, *, sigma_px=None, handedness="right", extent=0.7, arm=True):
    """A chiral map of Gaussian blobs in an L^3 box, ``V[z, y, x]``, max 1, float32.

    See :func:`chiral_phantom_blobs` for the parameters. The density is positive and fits
    within ``extent`` of the box radius, so rotations and shifts of a few pixels keep it
    inside the box.

    Examples
    --------
    >>> v = chiral_phantom(32, rng=0)
    >>> v.shape, v.dtype, float(v.max())
    ((32, 32, 32), dtype('float32'), 1.0)
    """
    centres, sigmas, heights = chiral_phantom_blobs(
        L, rng, sigma_px=sigma_px, handedness=handedness, extent=extent, arm=arm
    )
    axis = np.arange(L, dtype=np.float64) - L // 2
    vol = np.zeros((L, L, L))
    for (cx, cy, cz), s, h in zip(centres, sigmas, heights):
        # A Gaussian is separable: an outer product of three 1D profiles.
        gx = np.exp(-((axis - cx) ** 2) / (2 * s * s))
        gy = np.exp(-((axis - cy) ** 2) / (2 * s * s))
        gz = np.exp(-((axis - cz) ** 2) / (2 * s * s))
        vol += h * gz[:, None, None] * gy[None, :, None] * gx[None, None, :]
    vol /= vol.max()
    return vol.astype(np.float32)
