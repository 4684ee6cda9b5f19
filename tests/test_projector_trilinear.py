"""The projector's trilinear interpolator on its own: exactness, grid edges, adjointness."""
import numpy as np
import pytest

from cryorecon.forward.projector import trilinear, trilinear_corners


def test_trilinear_is_exact_on_nodes_and_on_trilinear_functions():
    rng = np.random.default_rng(0)
    shape = (5, 6, 7)  # not cubic: the flat index must use each axis' own length
    z, y, x = np.meshgrid(*(np.arange(n, dtype=np.float64) for n in shape), indexing="ij")
    # a trilinear function (products of axes included) is reproduced exactly inside the grid
    f = lambda z, y, x: 1.5 - 2 * z + 0.5 * y + 3 * x + 0.25 * z * y - x * y * z
    grid = f(z, y, x)
    pts = [rng.uniform(0, n - 1, size=(4, 50)) for n in shape]
    np.testing.assert_allclose(trilinear(grid, pts), f(*pts), rtol=1e-12, atol=1e-12)
    nodes = [rng.integers(0, n, size=30).astype(np.float64) for n in shape]
    idx = tuple(n.astype(int) for n in nodes)
    np.testing.assert_array_equal(trilinear(grid, np.stack(nodes)), grid[idx])


def test_trilinear_treats_outside_as_zero_and_keeps_complex64():
    grid = np.ones((4, 4, 4), np.complex64)
    z = np.array([-0.5, 1.0, 3.0, 3.25, -2.0, 1.5], np.float32)
    yx = np.full(6, 1.0, np.float32)
    out = trilinear(grid, (z, yx, yx))
    assert out.dtype == np.complex64
    # half a voxel below the first plane: half the weight is off the grid
    np.testing.assert_allclose(out.real, [0.5, 1.0, 1.0, 0.75, 0.0, 1.0], atol=1e-7)


@pytest.mark.parametrize("shape", [(6, 6, 6), (4, 7, 5)])
def test_gather_and_scatter_through_the_corners_are_adjoint(shape):
    rng = np.random.default_rng(1)
    grid = rng.standard_normal(shape)
    pts = [rng.uniform(-1.5, n + 0.5, size=200) for n in shape]  # some corners off the grid
    y = rng.standard_normal(200)
    scattered = np.zeros(grid.size)
    for idx, w in trilinear_corners(pts, shape):
        np.add.at(scattered, idx, w * y)
    assert np.dot(trilinear(grid, pts), y) == pytest.approx(np.dot(grid.ravel(), scattered), rel=1e-12)
