"""forward.masks: the one home of radial distances, soft spheres and hard discs.

Each mask is checked against its formula written out here on integer offsets from the
centre ``L // 2``, so a change of values (or of ``<`` against ``<=``) shows.
"""
import numpy as np
import pytest

from cryorecon.forward.masks import disc, radial_distance, soft_sphere


def _offsets(L, ndim):
    return np.indices((L,) * ndim) - L // 2


@pytest.mark.parametrize("L", [7, 8])
@pytest.mark.parametrize("ndim", [2, 3])
def test_radial_distance_is_the_distance_from_the_centre(L, ndim):
    r = radial_distance(L, ndim=ndim)
    assert r.shape == (L,) * ndim and r.dtype == np.float32
    expected = np.sqrt((_offsets(L, ndim) ** 2).sum(axis=0))
    np.testing.assert_array_equal(r, expected.astype(np.float32))
    assert r[(L // 2,) * ndim] == 0
    r64 = radial_distance(L, ndim=ndim, dtype=np.float64)
    np.testing.assert_array_equal(r64, expected)


@pytest.mark.parametrize("L, radius, edge", [(32, 8.0, 4.0), (33, 10.3, 2.5), (20, 6.5, 3.0)])
@pytest.mark.parametrize("ndim", [2, 3])
def test_soft_sphere_is_one_inside_a_cosine_edge_and_zero_outside(L, radius, edge, ndim):
    m = soft_sphere(L, radius, edge, ndim=ndim)
    assert m.shape == (L,) * ndim and m.dtype == np.float32
    r = np.sqrt((_offsets(L, ndim) ** 2).sum(axis=0))
    expected = np.where(r <= radius, 1.0,
                        np.where(r >= radius + edge, 0.0, 0.5 * (1 + np.cos(np.pi * (r - radius) / edge))))
    np.testing.assert_allclose(m, expected, rtol=0, atol=1e-7)
    assert np.all(m[r <= radius] == 1) and np.all(m[r >= radius + edge] == 0)


def test_soft_sphere_edge_values_and_monotone_fall():
    m = soft_sphere(32, 8, 4)
    assert m[16, 16, 16] == 1 and m[16, 16, 24] == 1 and m[16, 16, 30] == 0
    assert m[16, 16, 26] == pytest.approx(0.5, abs=1e-6)  # half-way through the edge
    assert np.all(np.diff(m[16, 16, 24:29]) < 0)
    # the circle is the sphere's central section
    np.testing.assert_array_equal(soft_sphere(32, 8, 4, ndim=2), m[16])


@pytest.mark.parametrize("L", [9, 10])
def test_masks_have_the_symmetries_of_the_centred_grid(L):
    # about L//2 the grid runs from -L//2 to (L-1)//2: mirror the part with both signs
    m = soft_sphere(L, L / 3, 2.0)
    core = m[1:, 1:, 1:] if L % 2 == 0 else m
    np.testing.assert_array_equal(core, core[::-1])
    np.testing.assert_array_equal(core, core[:, ::-1, :])
    np.testing.assert_array_equal(core, core.transpose(2, 0, 1))
    np.testing.assert_array_equal(core, core.transpose(1, 0, 2))
    d = disc(L, L / 3)
    dc = d[1:, 1:] if L % 2 == 0 else d
    np.testing.assert_array_equal(dc, dc[::-1])
    np.testing.assert_array_equal(dc, dc.T)


def test_hard_edge_soft_sphere_is_the_closed_disc():
    for edge in (0.0, -1.0):
        m = soft_sphere(24, 5.0, edge, ndim=2)
        assert set(np.unique(m)) == {0.0, 1.0}
        np.testing.assert_array_equal(m.astype(bool), disc(24, 5.0))


@pytest.mark.parametrize("L", [15, 16, 64, 65])
def test_disc_inclusive_and_strict_edges(L):
    y, x = _offsets(L, 2)
    n = x * x + y * y
    # the simulator's SNR disc: integer r^2 strictly below (L/2)^2
    np.testing.assert_array_equal(disc(L, L / 2, inclusive=False), n < (L / 2) ** 2)
    # a radius that passes through grid points (3-4-5, 6-8-10) tells < from <=
    closed = disc(L, 5.0)
    np.testing.assert_array_equal(closed, n <= 25)
    np.testing.assert_array_equal(disc(L, 5.0, inclusive=False), n < 25)
    assert closed[L // 2, L // 2 + 5] and closed[L // 2 + 3, L // 2 + 4]
    assert not disc(L, 5.0, inclusive=False)[L // 2 + 3, L // 2 + 4]
    assert disc(L, 5.0).dtype == bool
    # background outside a particle of diameter d is r > d/2, the complement
    np.testing.assert_array_equal(~disc(L, 10.0 / 2), np.hypot(x, y) > 10.0 / 2)


def test_disc_in_3d():
    z, y, x = _offsets(12, 3)
    np.testing.assert_array_equal(disc(12, 4.0, ndim=3), x * x + y * y + z * z <= 16)


@pytest.mark.gpu
def test_masks_on_cupy_equal_numpy():
    import cupy as cp

    np.testing.assert_array_equal(cp.asnumpy(radial_distance(17, ndim=3, xp=cp)), radial_distance(17, ndim=3))
    np.testing.assert_allclose(cp.asnumpy(soft_sphere(24, 7.5, 3.0, xp=cp)), soft_sphere(24, 7.5, 3.0), atol=1e-7)
    on_gpu = disc(24, 12.0, inclusive=False, xp=cp)
    assert isinstance(on_gpu, cp.ndarray)
    np.testing.assert_array_equal(cp.asnumpy(on_gpu), disc(24, 12.0, inclusive=False))
