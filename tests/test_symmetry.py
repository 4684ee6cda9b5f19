"""Point groups in RELION's conventions, the asymmetric unit of poses, symmetrised maps.

The references: RELION's own generating axes (the decimals of ``src/symmetries.cpp``),
the axis positions its Conventions page documents, group axioms, exact grid permutations
(numpy's rot90 and flips) and the projector's extraction and backprojection.
"""
import doctest

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial.transform import Rotation

from cryorecon.cli import main
from cryorecon.errors import InputError
from cryorecon.forward.masks import soft_sphere
from cryorecon.forward.projector import backproject, extract, full_coords, padded_size, volume_ft, volume_ft_adjoint
from cryorecon.geometry import symmetry
from cryorecon.geometry.rotations import random_rotations
from cryorecon.geometry.so3_grid import nearest_grid_index, so3_grid
from cryorecon.forward import symmetrize
from cryorecon.forward.symmetrize import symmetrize_map
from cryorecon.geometry.symmetry import (
    expand_rotations,
    restrict_to_asymmetric_unit,
    symmetry_group,
    to_asymmetric_unit,
)

PHI = (1 + np.sqrt(5)) / 2
S = np.sqrt(1 + PHI ** 2)
ALPHA_DEG = np.rad2deg(np.arctan(1 / PHI))  # angle between I2's 5-fold (1, 0, phi)/s and z

NAMES = ([f"C{n}" for n in range(1, 9)] + [f"D{n}" for n in range(2, 9)]
         + [f"D{n}_cryosparc" for n in range(2, 9)] + ["T", "O", "I1", "I2", "I3", "I4"])


def expected_order(name):
    if name[0] == "C":
        return int(name[1:])
    if name[0] == "D":
        return 2 * int(name[1:].split("_")[0])
    return {"T": 12, "O": 24}.get(name, 60)


def rot(axis, angle_deg):
    """Right-handed rotation about axis (scipy, independent of the module under test)."""
    u = np.asarray(axis, float)
    return Rotation.from_rotvec(np.deg2rad(angle_deg) * u / np.linalg.norm(u)).as_matrix()


def has_axis(group, fold, axis, tol=1e-9):
    u = np.asarray(axis, float) / np.linalg.norm(axis)
    return bool(np.any(np.abs(group.axes().get(fold, np.zeros((0, 3))) @ u) > 1 - tol))


def same_set(A, B, tol=1e-9):
    d = np.abs(A[:, None] - B[None]).max(axis=(2, 3))
    return len(A) == len(B) and d.min(axis=1).max() < tol and d.min(axis=0).max() < tol


# --- the groups ------------------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_group_axioms(name):
    g = symmetry_group(name)
    ops = g.operators
    assert g.order == expected_order(name) == len(ops)
    assert np.array_equal(ops[0], np.eye(3))
    # proper rotations
    assert np.abs(ops @ np.transpose(ops, (0, 2, 1)) - np.eye(3)).max() < 1e-12
    assert np.allclose(np.linalg.det(ops), 1.0, atol=1e-12)
    # distinct, closed under products, inverses present
    d = np.abs(ops[:, None] - ops[None]).max(axis=(2, 3))
    assert np.all(d[~np.eye(len(ops), dtype=bool)] > 1e-3)
    products = (ops[:, None] @ ops[None]).reshape(-1, 3, 3)
    assert np.abs(products[:, None] - ops[None]).max(axis=(2, 3)).min(axis=1).max() < 1e-9
    inverses = np.transpose(ops, (0, 2, 1))
    assert np.abs(inverses[:, None] - ops[None]).max(axis=(2, 3)).min(axis=1).max() < 1e-9
    assert not ops.flags.writeable


@pytest.mark.parametrize("n", range(2, 9))
def test_cyclic_and_dihedral_axes(n):
    c = symmetry_group(f"C{n}").axes()
    assert list(c) == [n] and np.allclose(c[n], [[0, 0, 1]])
    for name, two_fold, other in ((f"D{n}", (1, 0, 0), (0, 1, 0)), (f"D{n}_cryosparc", (0, 1, 0), (1, 0, 0))):
        g = symmetry_group(name)
        assert has_axis(g, n, (0, 0, 1)) and has_axis(g, 2, two_fold)
        twos = g.axes()[2]
        perpendicular = twos[np.abs(twos[:, 2]) < 1e-12]
        assert len(perpendicular) == n  # n 2-folds in the xy plane (D2: z is a 2-fold too)
        # the two conventions agree for even n; for odd n the other one's 2-fold is absent
        assert has_axis(g, 2, other) == (n % 2 == 0)


def test_tetrahedral_axes_as_relion():
    g = symmetry_group("T")
    ax = g.axes()
    assert len(ax[3]) == 4 and len(ax[2]) == 3 and set(ax) == {2, 3}
    # RELION: 3-fold on z (not Heymann et al.'s 2-folds on x, y, z)
    assert has_axis(g, 3, (0, 0, 1)) and not has_axis(g, 2, (0, 0, 1))
    assert has_axis(g, 2, (0, np.sqrt(2 / 3), np.sqrt(1 / 3)))
    assert np.allclose(np.abs(ax[2] @ ax[2].T), np.eye(3), atol=1e-12)  # 2-folds mutually perpendicular


def test_octahedral_axes_as_relion():
    g = symmetry_group("O")
    ax = g.axes()
    assert {n: len(v) for n, v in ax.items()} == {2: 6, 3: 4, 4: 3}
    assert np.allclose(np.abs(ax[4]), np.eye(3)[np.argmax(np.abs(ax[4]), axis=1)])
    for signs in ((1, 1, 1), (1, -1, 1), (-1, 1, 1), (-1, -1, 1)):
        assert has_axis(g, 3, signs)
    assert has_axis(g, 2, (1, 1, 0)) and has_axis(g, 2, (0, 1, -1))


def _front_most(axes):
    """The axes nearest +z (after folding the sign onto z >= 0)."""
    a = axes * np.where(axes[:, 2:] < 0, -1, 1)
    return a[a[:, 2] > a[:, 2].max() - 1e-9]


def test_icosahedral_222_settings_as_documented():
    # RELION Conventions: I1 (Heymann's standard) 2-folds on x, y, z, front-most 5-folds
    # in the yz plane, front-most 3-folds in xz; I2 (Crowther) 5-folds in xz, 3-folds in yz.
    for name, five_plane, three_plane in (("I1", 0, 1), ("I2", 1, 0)):
        g = symmetry_group(name)
        ax = g.axes()
        assert {n: len(v) for n, v in ax.items()} == {2: 15, 3: 10, 5: 6}
        for e in np.eye(3):
            assert has_axis(g, 2, e)
        front5, front3 = _front_most(ax[5]), _front_most(ax[3])
        assert len(front5) == 2 and np.allclose(front5[:, five_plane], 0)
        assert len(front3) == 2 and np.allclose(front3[:, three_plane], 0)
    assert has_axis(symmetry_group("I1"), 5, (0, 1, PHI)) and has_axis(symmetry_group("I1"), 3, (1 / PHI, 0, PHI))
    assert has_axis(symmetry_group("I2"), 5, (1, 0, PHI)) and has_axis(symmetry_group("I2"), 3, (0, 1 / PHI, PHI))


def test_icosahedral_52_settings_as_documented():
    # I3: 5-fold on z, 2-fold on y, one of the front-most other 5-folds in the -x half of
    # xz; I4 the same with it in the +x half.
    for name, sign in (("I3", -1), ("I4", 1)):
        g = symmetry_group(name)
        assert has_axis(g, 5, (0, 0, 1)) and has_axis(g, 2, (0, 1, 0))
        others = g.axes()[5]
        others = others[np.abs(others[:, 2]) < 1 - 1e-9]
        front = _front_most(others)
        assert np.allclose(front[:, 2], 1 / np.sqrt(5))
        in_xz = front[np.abs(front[:, 1]) < 1e-9]
        assert len(in_xz) == 1 and np.allclose(in_xz[0], (sign * 2 / np.sqrt(5), 0, 1 / np.sqrt(5)))


# symmetries.cpp's generating axes, as printed there (truncated decimals).
RELION_AXES = {
    "T": [(3, (0.0, 0.0, 1.0)), (2, (0.0, 0.816496, 0.577350))],
    "O": [(3, (0.5773502, 0.5773502, 0.5773502)), (4, (0, 0, 1))],
    "I2": [(2, (0, 0, 1)), (5, (0.525731114, 0, 0.850650807)), (3, (0, 0.356822076, 0.934172364))],
    "I1": [(2, (1, 0, 0)), (5, (0.85065080702670, 0, -0.5257311142635)), (3, (0.9341723640, 0.3568220765, 0))],
    "I3": [(2, (-0.5257311143, 0, 0.8506508070)), (5, (0.0, 0.0, 1.0)),
           (3, (-0.4911234778630044, 0.3568220764705179, 0.7946544753759428))],
    "I4": [(2, (0.5257311143, 0, 0.8506508070)), (5, (0.8944271932547096, 0, 0.4472135909903704)),
           (3, (0.4911234778630044, 0.3568220764705179, 0.7946544753759428))],
    "D7": [(7, (0, 0, 1)), (2, (1, 0, 0))],
    "C7": [(7, (0, 0, 1))],
}


@pytest.mark.parametrize("name", sorted(RELION_AXES))
def test_relion_generating_axes(name):
    g = symmetry_group(name)
    for fold, axis in RELION_AXES[name]:
        assert has_axis(g, fold, axis, tol=1e-6), (name, fold, axis)


def test_settings_differ_by_known_rotations():
    I2 = symmetry_group("I2").operators
    for name, Q in (("I1", rot((0, 0, 1), 90)), ("I3", rot((0, 1, 0), -ALPHA_DEG)), ("I4", rot((0, 1, 0), ALPHA_DEG))):
        assert same_set(symmetry_group(name).operators, Q @ I2 @ Q.T), name
        assert not same_set(symmetry_group(name).operators, I2)
    assert same_set(symmetry_group("I").operators, I2) and symmetry_group("I").name == "I2"
    Rz90 = rot((0, 0, 1), 90)
    for n in range(2, 9):
        relion, cryosparc = symmetry_group(f"D{n}").operators, symmetry_group(f"D{n}_cryosparc").operators
        assert same_set(cryosparc, Rz90 @ relion @ Rz90.T)
        assert same_set(cryosparc, relion) == (n % 2 == 0)


def test_relion_operator_order():
    # Worked by hand from symmetries.cpp: C4 stores rotation3DMatrix(90, z)^T first, with
    # rotation3DMatrix(90, z) = [[c, -s, 0], [s, c, 0], [0, 0, 1]]; D2 stores Rz(180),
    # Rx(180), then the first new product of its closure, Rz(180) Rx(180).
    assert np.array_equal(symmetry_group("C4").operators[1], [[0, 1, 0], [-1, 0, 0], [0, 0, 1]])
    assert np.array_equal(symmetry_group("D2").operators,
                          [np.eye(3), np.diag([-1, -1, 1.0]), np.diag([1, -1, -1.0]), np.diag([-1, 1, -1.0])])


def test_names():
    assert symmetry_group("c7").name == "C7" and symmetry_group(" d07 ").name == "D7"
    assert symmetry_group("D3_CryoSPARC").name == "D3_cryosparc"
    assert symmetry_group("C1").order == 1 and symmetry_group("D1").order == 2
    assert symmetry_group("i3") is symmetry_group("I3")


@pytest.mark.parametrize("bad", ["C0", "D0", "C100", "I5", "IH", "C3_cryosparc", "T2", "X", "", "D2v"])
def test_unknown_name_is_one_line(bad):
    with pytest.raises(InputError) as err:
        symmetry_group(bad)
    message = str(err.value)
    assert "\n" not in message and repr(bad) in message
    for form in ("C<n>", "D<n>", "D<n>_cryosparc", "T", "O", "I1", "I4"):
        assert form in message


# --- the asymmetric unit ---------------------------------------------------------------

@pytest.fixture(scope="module")
def grid15():
    return so3_grid(15, return_step=True)


@pytest.mark.parametrize("name", NAMES)
def test_asymmetric_unit_covers_so3(name, grid15):
    grid, step = grid15
    g = symmetry_group(name)
    keep = restrict_to_asymmetric_unit(grid, g, step)
    assert np.all(np.diff(keep) > 0)
    kept = grid[keep]
    # every grid pose is within the step of an equivalent of a kept pose
    _, d = nearest_grid_index(grid, expand_rotations(kept, g))
    assert d.max() <= step
    # about 1/order of the grid
    assert abs(len(keep) * g.order / len(grid) - 1) < 0.1
    # no two kept poses are equivalent
    if g.order > 1:
        _, d_other = nearest_grid_index(kept, expand_rotations(kept, g).reshape(len(kept), g.order, 3, 3)[:, 1:]
                                        .reshape(-1, 3, 3))
        assert d_other.min() > 1e-3


@pytest.mark.parametrize("name", ["C2", "C4", "D2", "D4"])
def test_one_per_orbit_on_an_invariant_grid(name, grid15):
    # these operators carry the HEALPix grid onto itself: exactly one pose per orbit
    grid, step = grid15
    g = symmetry_group(name)
    _, d = nearest_grid_index(expand_rotations(grid, g), grid)
    assert d.max() < 1e-4
    assert len(restrict_to_asymmetric_unit(grid, g, step)) == len(grid) // g.order


@pytest.mark.parametrize("name", ["C7", "D3", "T", "I1"])
def test_to_asymmetric_unit(name):
    g = symmetry_group(name)
    R = random_rotations(200, np.random.default_rng(3))
    folded, index = to_asymmetric_unit(R, g)
    assert np.allclose(folded, R @ g.operators[index])
    again, index2 = to_asymmetric_unit(folded, g)
    assert np.all(index2 == 0) and np.allclose(again, folded)
    # equivalent poses fold to the same pose
    shuffled, _ = to_asymmetric_unit(R @ g.operators[np.arange(200) % g.order], g)
    assert np.allclose(shuffled, folded, atol=1e-12)


# --- maps: the side of the operators, symmetrising, backprojection ---------------------

L = 32


def blobs(centres, sigma=2.0):
    ax = np.arange(L) - L // 2
    z, y, x = np.meshgrid(ax, ax, ax, indexing="ij")
    v = np.zeros((L, L, L))
    for cx, cy, cz in centres:
        v += np.exp(-((x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2) / (2 * sigma ** 2))
    return v


CENTRES = np.random.default_rng(0).uniform(-6, 6, (3, 3))


def symmetric_blobs(group):
    """A map with the group's symmetry by construction: blobs at every g p."""
    return blobs((group.operators @ CENTRES.T).transpose(0, 2, 1).reshape(-1, 3))


def carried(vol, g):
    """V(g^T x) by scipy's trilinear resampling (not the module's)."""
    c = L // 2
    ax = np.arange(L) - c
    z, y, x = np.meshgrid(ax, ax, ax, indexing="ij")
    src = g.T @ np.stack([x.ravel(), y.ravel(), z.ravel()]).astype(float) + c
    return ndimage.map_coordinates(vol, src[::-1], order=1, mode="constant").reshape(vol.shape)


def correlation(a, b):
    return float(np.real(np.vdot(a, b)) / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.mark.parametrize("name", ["C7", "D3", "T", "O", "I2"])
def test_equivalent_poses_are_right_products(name):
    # V(g x) = V(x) makes the projections along A and A g equal; g A is not equivalent.
    g = symmetry_group(name)
    # one orbit of small blobs: an icosahedral shell of many blobs projects alike from
    # everywhere, which would hide the wrong side
    F = volume_ft(blobs((g.operators @ np.array([5.0, -3.0, 7.0])).reshape(-1, 3), sigma=1.2))
    coords = full_coords(L)
    A = random_rotations(3, np.random.default_rng(1))
    s0 = extract(F, A, coords)
    right, left = [], []
    for op in g.operators[1:]:
        s_right, s_left = extract(F, A @ op, coords), extract(F, op @ A, coords)
        right += [correlation(s0[i], s_right[i]) for i in range(3)]
        left += [correlation(s0[i], s_left[i]) for i in range(3)]
    assert min(right) > 0.999
    assert 1 - min(left) > 10 * (1 - min(right))


def test_symmetrize_exact_on_grid_permutations():
    # for odd L, 90-degree turns about z and 180-degree turns about x, y, z permute voxels
    rng = np.random.default_rng(2)
    v = rng.standard_normal((15, 15, 15))
    c4 = np.mean([np.rot90(v, k, axes=(1, 2)) for k in range(4)], axis=0)
    assert np.abs(symmetrize_map(v, symmetry_group("C4")) - c4).max() < 1e-12
    d2 = (v + v[:, ::-1, ::-1] + v[::-1, :, ::-1] + v[::-1, ::-1, :]) / 4  # 2-folds on x, y, z
    assert np.abs(symmetrize_map(v, symmetry_group("D2")) - d2).max() < 1e-12
    o = symmetrize_map(v, symmetry_group("O"))
    assert np.abs(np.transpose(o, (1, 2, 0)) - o).max() < 1e-12  # the 3-fold (1, 1, 1) cycles the axes


@pytest.mark.parametrize("name", ["C7", "D5_cryosparc", "T", "I2", "I3"])
def test_symmetrized_map_is_invariant(name):
    g = symmetry_group(name)
    v = blobs(CENTRES)
    s = symmetrize_map(v, g)
    some = g.operators[1::max(1, g.order // 8)]  # a spread of about 8 operators keeps it quick
    errors = [np.linalg.norm(carried(s, op) - s) / np.linalg.norm(s) for op in some]
    control = [np.linalg.norm(carried(v, op) - v) / np.linalg.norm(v) for op in some]
    assert max(errors) < 0.05 and min(control) > 0.5
    sym = symmetric_blobs(g)
    assert np.linalg.norm(symmetrize_map(sym, g) - sym) / np.linalg.norm(sym) < 0.05
    assert symmetrize_map(v.astype(np.float32), g).dtype == np.float32


@pytest.mark.parametrize("name", ["C7", "D3", "T", "O", "I2"])
def test_expanded_backprojection_is_symmetrised_backprojection(name):
    g = symmetry_group(name)
    rng = np.random.default_rng(4)
    coords = full_coords(L)
    pL = padded_size(L)
    A = random_rotations(30, rng)
    values = extract(volume_ft(blobs(CENTRES)), A, coords)

    def real_space(vals, poses):
        return volume_ft_adjoint(backproject(vals, poses, coords, (pL,) * 3), L)

    reference = g.order * symmetrize_map(real_space(values, A), g)
    expanded = real_space(np.repeat(values, g.order, axis=0), expand_rotations(A, g))
    wrong_side = real_space(np.repeat(values, g.order, axis=0), (g.operators[None] @ A[:, None]).reshape(-1, 3, 3))
    # compare inside a sphere: the box's corners do not turn with the map
    mask = soft_sphere(L, L / 2 - 4)

    def error(x):
        return np.linalg.norm(mask * (x - reference)) / np.linalg.norm(mask * reference)

    assert error(expanded) < 0.02
    assert error(wrong_side) > 3 * error(expanded)
    assert np.allclose(expand_rotations(A, g)[g.order + 1], A[1] @ g.operators[1])


# --- the face ------------------------------------------------------------------------

def test_cli_prints_operators(capsys):
    assert main(["symmetry", "d3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    ops = np.array([[float(t) for t in line.split()] for line in lines])
    assert ops.shape == (6, 9)
    assert np.abs(ops.reshape(-1, 3, 3) - symmetry_group("D3").operators).max() < 1e-8
    assert main(["symmetry", "I"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 60


def test_cli_bad_name(capsys):
    assert main(["symmetry", "Q5"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and "Q5" in err[0] and "D<n>_cryosparc" in err[0]


@pytest.mark.parametrize("module", [symmetry, symmetrize])
def test_docstring_examples(module):
    result = doctest.testmod(module, extraglobs={"np": np})
    assert result.attempted > 0 and result.failed == 0
