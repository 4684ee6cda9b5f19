"""SO(3) search grids (HEALPix x psi, local grids) and shift grids."""
import numpy as np
import pytest

from cryorecon.geometry.rotations import angular_distance_deg, euler_to_matrix, random_rotations
from cryorecon.geometry.shifts import shift_grid
from cryorecon.geometry.so3_grid import (
    healpix_directions,
    healpix_nside,
    local_grid,
    nearest_grid_index,
    neighbours,
    so3_grid,
    so3_grid_angles,
)


def _unit(tilt_deg, rot_deg):
    t, r = np.deg2rad(tilt_deg), np.deg2rad(rot_deg)
    return np.stack([np.sin(t) * np.cos(r), np.sin(t) * np.sin(r), np.cos(t)], axis=1)


def test_healpix_nside1_and_counts():
    tilt, rot = healpix_directions(1)
    z = np.round(np.cos(np.deg2rad(tilt)), 12)
    np.testing.assert_allclose(np.sort(z), [-2 / 3] * 4 + [0.0] * 4 + [2 / 3] * 4, atol=1e-12)
    # Nside 1: polar-ring pixels at odd multiples of 45 degrees, equator at multiples of 90.
    np.testing.assert_allclose(np.sort(rot[z > 0]), [45, 135, 225, 315])
    np.testing.assert_allclose(np.sort(rot[z == 0]), [0, 90, 180, 270], atol=1e-12)
    for nside in (1, 2, 3, 4, 5):
        assert len(healpix_directions(nside)[0]) == 12 * nside ** 2


@pytest.mark.parametrize("nside", [3, 4, 8])
def test_healpix_equal_area(nside):
    """Pixel centres are equal-area: z is uniform in [-1, 1] and the mean vector is 0."""
    tilt, rot = healpix_directions(nside)
    v = _unit(tilt, rot)
    np.testing.assert_allclose(v.mean(axis=0), 0.0, atol=1e-12)
    z = np.sort(v[:, 2])
    expected = -1 + (np.arange(len(z)) + 0.5) * 2 / len(z)
    assert np.abs(z - expected).max() < 2.0 / (3 * nside)
    # All centres are distinct and no pair is much closer than the pixel scale.
    d = np.arccos(np.clip(v @ v.T, -1, 1)) + 10 * np.eye(len(v))
    assert np.rad2deg(d.min()) > 0.5 * 58.6 / nside


@pytest.mark.parametrize("step", [60, 30, 15])
def test_global_grid_covers_so3(step):
    grid, actual = so3_grid(step, return_step=True)
    nside = healpix_nside(step)
    assert actual <= step and grid.shape == (72 * nside ** 3, 3, 3)
    np.testing.assert_allclose(np.linalg.det(grid), 1.0, atol=1e-12)
    # The viewing direction (third row) is the HEALPix direction.
    rot, tilt, psi = so3_grid_angles(step)
    np.testing.assert_allclose(grid[:, 2, :], _unit(tilt, rot), atol=1e-12)
    _, d = nearest_grid_index(random_rotations(1000, np.random.default_rng(0)), grid)
    assert d.mean() < 0.6 * actual and d.max() < actual
    idx, d0 = nearest_grid_index(grid[::7], grid)
    np.testing.assert_array_equal(idx, np.arange(len(grid))[::7])
    assert d0.max() < 1e-5


def test_local_grid():
    rng = np.random.default_rng(1)
    c = random_rotations(1, rng)[0]
    g = local_grid(c, 2.0, n_steps=2)
    assert g.shape == (125, 3, 3)
    np.testing.assert_allclose(g[125 // 2], c, atol=1e-15)
    d = angular_distance_deg(g, c)
    assert d.max() == pytest.approx(np.sqrt(3) * 4.0, rel=1e-9)
    np.testing.assert_allclose(g @ np.transpose(g, (0, 2, 1)), np.broadcast_to(np.eye(3), g.shape), atol=1e-12)
    # Poses within one step of the centre are within ~step of a local grid point.
    near = local_grid(c, 1.0, n_steps=1)[rng.integers(0, 27, 200)]
    _, d = nearest_grid_index(near @ np.eye(3), g)
    assert d.max() < 2.0
    batch = local_grid(np.stack([c, c.T]), 2.0)
    assert batch.shape == (2, 27, 3, 3)
    np.testing.assert_allclose(batch[1, 13], c.T, atol=1e-15)


def test_local_refinement_shrinks_error():
    """Coarse-to-fine: the best of a local grid around the nearest coarse point is closer."""
    rng = np.random.default_rng(2)
    truth = random_rotations(50, rng)
    grid, step = so3_grid(30, return_step=True)
    idx, d_coarse = nearest_grid_index(truth, grid)
    d_fine = np.array([nearest_grid_index(t[None], local_grid(grid[i], step / 4, n_steps=3))[1][0]
                       for t, i in zip(truth, idx)])
    assert np.all(d_fine <= d_coarse + 1e-9) and d_fine.mean() < 0.4 * d_coarse.mean()


def test_neighbours():
    grid = so3_grid(30)
    nb = neighbours(grid, 10, 31.0)
    assert 10 in nb
    brute = np.nonzero(angular_distance_deg(grid, grid[10]) <= 31.0)[0]
    np.testing.assert_array_equal(nb, brute)
    # psi is the fastest index: the in-plane neighbours (30 degrees apart) are in.
    assert {9, 11} <= set(nb.tolist())


def test_shift_grid():
    g = shift_grid(3, 1)
    assert g.shape == (29, 2) and g.dtype == np.float64
    assert np.any(np.all(g == 0, axis=1))
    assert np.all((g ** 2).sum(axis=1) <= 9 + 1e-9)
    sq = shift_grid(3, 1.5, disc=False)
    assert sq.shape == (25, 2) and set(np.unique(sq[:, 0])) == {-3.0, -1.5, 0.0, 1.5, 3.0}
    assert shift_grid(0, 1).tolist() == [[0.0, 0.0]]
    assert shift_grid(2, 0.5).shape[0] == len(set(map(tuple, shift_grid(2, 0.5))))
