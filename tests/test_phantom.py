"""Tests of cryorecon.simulation.phantom: a positive, compact, reproducible and chiral test map."""
import numpy as np
import pytest

from cryorecon.errors import InputError
from cryorecon.geometry.rotations import random_rotations
from cryorecon.simulation.phantom import chiral_phantom, chiral_phantom_blobs
from cryorecon.validate import align_maps, mirror_volume, rotate_volume


def test_phantom_is_positive_float32_and_fits_in_the_box():
    L = 40
    v = chiral_phantom(L, rng=1)
    assert v.shape == (L, L, L) and v.dtype == np.float32
    assert v.min() >= 0 and v.max() == pytest.approx(1.0)
    c = np.arange(L) - L // 2
    z, y, x = np.meshgrid(c, c, c, indexing="ij")
    r = np.sqrt(x**2 + y**2 + z**2)
    # Blobs end (2 sigma) within 0.7 of the box radius: little density beyond it.
    assert v[r > 0.7 * L / 2].sum() < 0.02 * v.sum()
    centres, sigmas, _ = chiral_phantom_blobs(L, rng=1)
    assert np.all(np.linalg.norm(centres, axis=1) + 2 * sigmas <= 0.7 * L / 2 + 1e-9)


def test_phantom_is_reproducible_from_the_seed():
    np.testing.assert_array_equal(chiral_phantom(24, rng=5), chiral_phantom(24, rng=np.random.default_rng(5)))
    assert not np.array_equal(chiral_phantom(24, rng=5), chiral_phantom(24, rng=6))


def test_left_hand_is_the_mirror_of_the_right_hand():
    right = chiral_phantom(32, rng=2)
    left = chiral_phantom(32, rng=2, handedness="left")
    np.testing.assert_allclose(mirror_volume(right)[1:], left[1:], atol=1e-6)
    with pytest.raises(InputError):
        chiral_phantom(32, handedness="up")


def test_phantom_is_chiral():
    # No rotation brings the mirror image onto the phantom, while a rotated copy fits.
    v = chiral_phantom(32, rng=3)
    rotated = rotate_volume(v, random_rotations(1, np.random.default_rng(0))[0])
    _, same_hand = align_maps(rotated, v, try_mirror=False)
    _, other_hand = align_maps(mirror_volume(v), v, try_mirror=False)
    assert same_hand["correlation"] > 0.99
    assert other_hand["correlation"] < 0.93
    # With the mirror allowed, the alignment finds it.
    _, found = align_maps(mirror_volume(v), v)
    assert found["mirrored"] and found["correlation"] > 0.99
