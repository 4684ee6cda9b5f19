"""RELION ZYZ rotations: against scipy, round trips, quaternions, distances."""
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from cryorecon.geometry.rotations import (
    angular_distance_deg,
    euler_to_matrix,
    matrix_to_euler,
    matrix_to_quaternion,
    quaternion_to_matrix,
    random_rotations,
)


def _angles(n, rng):
    return rng.uniform(-180, 180, n), rng.uniform(0, 180, n), rng.uniform(-180, 180, n)


def test_matches_scipy_zyz_transposed():
    rng = np.random.default_rng(0)
    rot, tilt, psi = _angles(50, rng)
    A = euler_to_matrix(rot, tilt, psi)
    ref = Rotation.from_euler("ZYZ", np.stack([rot, tilt, psi], 1), degrees=True).as_matrix()
    np.testing.assert_allclose(A, np.transpose(ref, (0, 2, 1)), atol=1e-12)
    assert euler_to_matrix(10.0, 20.0, 30.0).shape == (1, 3, 3)
    # Broadcast a scalar against an array.
    assert euler_to_matrix(0.0, [10.0, 20.0], 5.0).shape == (2, 3, 3)


def test_explicit_factors():
    t = np.deg2rad(30.0)
    c, s = np.cos(t), np.sin(t)
    np.testing.assert_allclose(euler_to_matrix(30, 0, 0)[0], [[c, s, 0], [-s, c, 0], [0, 0, 1]], atol=1e-15)
    np.testing.assert_allclose(euler_to_matrix(0, 30, 0)[0], [[c, 0, -s], [0, 1, 0], [s, 0, c]], atol=1e-15)


def test_euler_round_trip_including_poles():
    rng = np.random.default_rng(1)
    rot, tilt, psi = _angles(200, rng)
    tilt[:3] = [0.0, 180.0, 1e-9]
    A = euler_to_matrix(rot, tilt, psi)
    r2, t2, p2 = matrix_to_euler(A)
    assert np.all((t2 >= 0) & (t2 <= 180))
    np.testing.assert_allclose(euler_to_matrix(r2, t2, p2), A, atol=1e-9)
    # Away from the poles the angles themselves come back.
    np.testing.assert_allclose(t2[3:], tilt[3:], atol=1e-9)
    d = lambda a, b: np.abs((a - b + 180) % 360 - 180)
    assert np.all(d(r2[3:], rot[3:]) < 1e-8) and np.all(d(p2[3:], psi[3:]) < 1e-8)


def test_quaternion_round_trip_and_scipy():
    rng = np.random.default_rng(2)
    A = random_rotations(100, rng)
    # Include rotations near 180 degrees, where the trace branch is ill-conditioned.
    A[:3] = euler_to_matrix([0, 90, 30], [180, 180, 90], [0, 0, 180])
    q = matrix_to_quaternion(A)
    assert q.shape == (100, 4) and np.all(q[:, 0] >= 0)
    np.testing.assert_allclose(np.linalg.norm(q, axis=1), 1.0, atol=1e-12)
    np.testing.assert_allclose(quaternion_to_matrix(q), A, atol=1e-12)
    ref = Rotation.from_matrix(A).as_quat()  # (x, y, z, w)
    ref = np.concatenate([ref[:, 3:], ref[:, :3]], axis=1)
    ref *= np.where(ref[:, :1] < 0, -1.0, 1.0)
    np.testing.assert_allclose(np.abs(np.sum(q * ref, axis=1)), 1.0, atol=1e-12)


def test_random_rotations_uniform_and_seeded():
    A = random_rotations(20000, np.random.default_rng(3))
    np.testing.assert_allclose(A @ np.transpose(A, (0, 2, 1)), np.broadcast_to(np.eye(3), A.shape), atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(A), 1.0, atol=1e-12)
    # Haar: E[A] = 0 and the rotation angle has density (1 - cos t)/pi, mean pi/2 + 2/pi.
    assert np.abs(A.mean(axis=0)).max() < 0.02
    theta = np.deg2rad(angular_distance_deg(A, np.eye(3)))
    assert theta.mean() == pytest.approx(np.pi / 2 + 2 / np.pi, abs=0.02)
    np.testing.assert_array_equal(random_rotations(5, np.random.default_rng(7)),
                                  random_rotations(5, np.random.default_rng(7)))


def test_angular_distance():
    A = euler_to_matrix(0, 0, [0, 1e-7, 10, 90, 180])
    d = angular_distance_deg(A, np.eye(3))
    np.testing.assert_allclose(d, [0, 1e-7, 10, 90, 180], atol=1e-10)
    rng = np.random.default_rng(4)
    B, C = random_rotations(2, rng)
    assert angular_distance_deg(B, C) == pytest.approx(angular_distance_deg(C, B))
    # Left-invariance: d(RB, RC) = d(B, C).
    R = random_rotations(1, rng)[0]
    assert angular_distance_deg(R @ B, R @ C) == pytest.approx(angular_distance_deg(B, C))
    assert angular_distance_deg(A[:, None], A[None]).shape == (5, 5)
