"""Point-group symmetry in RELION's conventions: the groups, one asymmetric unit of poses,
and the operators applied to a map.

**Groups and axes.** Rotation matrices act on ``(x, y, z)`` column vectors of the map
``V[z, y, x]`` about its centre ``L // 2`` (see :mod:`cryorecon.geometry.rotations`). A map
has the symmetry of a group ``G`` when ``V(g x) = V(x)`` for every ``g`` in ``G``. The axes
are placed as RELION's ``src/symmetries.cpp`` (``SymList::fill_symmetry_class``) places
them; RELION's documentation ("Conventions", section Symmetry) describes the same:

======================  ===========================================================
``C<n>``                the n-fold on z
``D<n>``                the n-fold on z, a 2-fold on x
``D<n>_cryosparc``      the n-fold on z, a 2-fold on y (cryoSPARC's D_n; the same
                        group as ``D<n>`` for even n, turned 90 degrees about z for
                        odd n)
``T``                   a 3-fold on z and a 2-fold on ``(0, sqrt(2/3), sqrt(1/3))``
                        (RELION: "deviating from Heymann et al.", whose T has
                        2-folds on x, y, z)
``O``                   4-folds on x, y, z; a 3-fold on ``(1, 1, 1) / sqrt(3)``
``I1``                  2-folds on x, y, z; front-most 5-folds ``(0, +-1, phi) / s``
                        in the yz plane, 3-folds ``(+-1/phi, 0, phi) / sqrt(3)`` in
                        xz (Heymann et al.'s standard, "no-Crowther 222")
``I2`` (``I``)          2-folds on x, y, z; 5-folds ``(+-1, 0, phi) / s`` in xz,
                        3-folds ``(0, +-1/phi, phi) / sqrt(3)`` in yz ("Crowther
                        222"); RELION's plain ``I`` is I2
``I3``                  a 5-fold on z and a 2-fold on y; the 5-fold
                        ``(-2, 0, 1) / sqrt(5)`` in the -x half of xz ("52 setting")
``I4``                  as I3 with that 5-fold at ``(2, 0, 1) / sqrt(5)``
======================  ===========================================================

with ``phi = (1 + sqrt 5) / 2`` and ``s = sqrt(1 + phi^2)``. So I1 is I2 turned 90
degrees about z, and I3 and I4 are I2 turned by ``-/+ atan(1 / phi)`` (31.72 degrees)
about y, which brings its 5-fold ``(1, 0, phi) / s`` onto z. RELION writes these axes as
truncated decimals (e.g. ``0.816496 0.577350``); we use the exact values, which agree
with them to 1e-6. Sources: RELION's ``symmetries.cpp`` and ``transformations.cpp``
(3dem/relion); the RELION "Conventions" page; Heymann, Chagoyen & Belnap (2005), J.
Struct. Biol. 151:196, "Common conventions for interconversion and decoupling of
symmetry ..."; cryoSPARC's D_n axis from its developers (discuss.cryosparc.com,
"Tetrahedral Symmetry Orientation": "our convention for Dn symmetry places the two fold
axis along Y, rather than X"; the mismatch shows as D_2n when cryoSPARC D_n poses are
reconstructed with RELION's D_n, asarnow/pyem issue 33).

**Operator order.** :attr:`SymmetryGroup.operators` lists the identity, then the
group in the order RELION's ``SymList`` builds it: for each generating axis, the
transposed rotations by ``360 k / n`` (``k = 1 .. n-1``), then new products ``R_i R_j``
found by its closure, which visits the pairs shell by shell (``(0, m), (1, m), ..., (m,
m), (m, m-1), ..., (m, 0)`` for ``m = 0, 1, ...``). That is the order
``relion_refine --print_symmetry_ops`` prints; we follow RELION's algorithm but have
not compared against a RELION binary.

**Which side.** A projection is ``P_A(r) = sum_z V(A^T r)``. For a symmetric map,
``V((A g)^T r) = V(g^T A^T r) = V(A^T r)``: the poses ``A`` and ``A g`` give the same
image. An image's equivalent poses are therefore the right products ``{A g}``, the
pose search needs one representative of each such orbit
(:func:`restrict_to_asymmetric_unit`), and a backprojection over ``{A g}`` for every
image (:func:`expand_rotations`) inserts the slice planes ``g^T A^T k``, which is the
backprojection over ``A`` symmetrised: ``sum_g B(g k)`` (:func:`cryorecon.forward.symmetrize.symmetrize_map`).

Host-side numpy for the groups and poses; :func:`expand_rotations` follows its input's
array module (numpy or cupy).
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field

import numpy as np

from ..backend import array_module
from ..errors import InputError
from .rotations import axis_angle_to_matrix, matrix_to_quaternion, quaternion_to_matrix
from .so3_grid import nearest_grid_index

_PHI = (1.0 + np.sqrt(5.0)) / 2.0
_S = np.sqrt(1.0 + _PHI * _PHI)
_R3 = np.sqrt(3.0)

# RELION's XMIPP_EQUAL_ACCURACY: two operators are the same if no element differs more.
_SAME_TOL = 1e-6

# Generating axes (fold, axis) in the order symmetries.cpp lists them, exact values.
_FIXED_GENERATORS = {
    "T": [(3, (0.0, 0.0, 1.0)), (2, (0.0, np.sqrt(2.0 / 3.0), np.sqrt(1.0 / 3.0)))],
    "O": [(3, (1.0 / _R3, 1.0 / _R3, 1.0 / _R3)), (4, (0.0, 0.0, 1.0))],
    "I1": [(2, (1.0, 0.0, 0.0)), (5, (_PHI / _S, 0.0, -1.0 / _S)), (3, (_PHI / _R3, 1.0 / (_PHI * _R3), 0.0))],
    "I2": [(2, (0.0, 0.0, 1.0)), (5, (1.0 / _S, 0.0, _PHI / _S)), (3, (0.0, 1.0 / (_PHI * _R3), _PHI / _R3))],
    "I3": [(2, (-1.0 / _S, 0.0, _PHI / _S)), (5, (0.0, 0.0, 1.0)),
           (3, (-_PHI / (_R3 * _S), 1.0 / (_PHI * _R3), _PHI * _PHI / (_R3 * _S)))],
    "I4": [(2, (1.0 / _S, 0.0, _PHI / _S)), (5, (2.0 / np.sqrt(5.0), 0.0, 1.0 / np.sqrt(5.0))),
           (3, (_PHI / (_R3 * _S), 1.0 / (_PHI * _R3), _PHI * _PHI / (_R3 * _S)))],
}
_MAX_N = 99  # RELION reads one or two digits after C or D
_MAX_ORDER = 2 * _MAX_N  # D99; every other group here is smaller

_VALID_FORMS = (f"C<n> or D<n> (n = 1..{_MAX_N}), D<n>_cryosparc (2-fold on y), T, O, "
                "I1, I2, I3, I4, or I (= I2), as in RELION")

# Reference pose whose nearest equivalent defines the asymmetric unit. Any pose would
# do; one a few degrees off the identity about an irrational axis keeps the cell
# boundaries off the symmetric grids' own planes, so no grid pose ties two cells.
_REFERENCE = quaternion_to_matrix([1.0, 0.05 * np.sqrt(2.0), 0.05 * np.sqrt(3.0), 0.05 * np.sqrt(5.0)])[0]


def _tidy(R):
    # RELION's setSmallValuesToZero, for exact 0 (and no -0) in signed-permutation operators.
    R = np.where(np.abs(R) < 1e-12, 0.0, R)
    return np.where(np.abs(np.abs(R) - 1.0) < 1e-12, np.sign(R), R)


def _close(generators):
    """The group generated by ``generators`` [(fold, axis)], in RELION's order, identity first."""
    mats = []
    for fold, axis in generators:
        # symmetries.cpp stores the transpose of rotation3DMatrix(360 k / n, axis), which is
        # the right-handed rotation about the axis.
        u = np.asarray(axis) / np.linalg.norm(axis)
        mats.extend(_tidy(axis_angle_to_matrix(u * (2.0 * np.pi * k / fold)).T) for k in range(1, fold))
    known = np.concatenate([np.eye(3)[None], np.array(mats).reshape(-1, 3, 3)])
    m = 0
    while m < len(mats):
        for i, j in [(i, m) for i in range(m + 1)] + [(m, j) for j in range(m - 1, -1, -1)]:
            product = _tidy(mats[i] @ mats[j])
            if not np.any(np.abs(known - product).max(axis=(1, 2)) <= _SAME_TOL):
                mats.append(product)
                known = np.concatenate([known, product[None]])
                if len(known) > _MAX_ORDER:
                    # axes that do not generate a finite group would never close
                    raise ValueError(f"generators {generators} do not close into a point group")
        m += 1
    return known


def _rotation_axis(R):
    """Unit axis of a rotation ``R`` (not the identity), sign fixed by z, then y, then x >= 0."""
    # R + R^T - (tr R - 1) I = 2 (1 - cos theta) u u^T: its largest column is along u.
    M = R + R.T - (np.trace(R) - 1.0) * np.eye(3)
    u = M[:, np.argmax(np.diag(M))]
    u = u / np.linalg.norm(u)
    for c in (2, 1, 0):
        if abs(u[c]) > 1e-9:
            return (u if u[c] > 0 else -u) + 0.0  # + 0.0: no -0 in the output
    return u


@dataclass(frozen=True)
class SymmetryGroup:
    """A point group of proper rotations in RELION's axis conventions.

    Attributes
    ----------
    name : str
        Canonical name: ``C7``, ``D7``, ``D7_cryosparc``, ``T``, ``O``, ``I1`` .. ``I4``.
    operators : numpy float64 array (G, 3, 3), read-only
        The rotations ``g`` with ``V(g x) = V(x)`` for a symmetric map, identity first,
        in RELION's order (see the module docstring).
    """

    name: str
    operators: np.ndarray = field(repr=False, compare=False)

    @property
    def order(self):
        """Number of operators: n for C_n, 2n for D_n, 12 for T, 24 for O, 60 for I."""
        return int(self.operators.shape[0])

    def axes(self):
        """The symmetry axes by fold.

        Returns
        -------
        dict {fold: numpy array (k, 3)}
            Unit vectors, one per axis line (sign: z, else y, else x positive), for each
            fold n of the group's n-fold axes; e.g. ``symmetry_group("O").axes()`` has
            3 four-fold, 4 three-fold and 6 two-fold axes.

        Examples
        --------
        >>> symmetry_group("D3").axes()[3]
        array([[0., 0., 1.]])
        """
        lines, counts = [], []
        for R in self.operators[1:]:
            u = _rotation_axis(R)
            for i, v in enumerate(lines):
                if abs(u @ v) > 1.0 - 1e-9:
                    counts[i] += 1
                    break
            else:
                lines.append(u)
                counts.append(1)
        by_fold = {}
        # An n-fold line carries the n - 1 rotations by 360 k / n.
        for u, c in zip(lines, counts):
            by_fold.setdefault(c + 1, []).append(u)
        return {n: np.array(v) for n, v in sorted(by_fold.items())}


def _generators(name):
    """(canonical name, generating axes) for an upper-case name, or None."""
    if name == "I":
        name = "I2"
    if name in _FIXED_GENERATORS:
        return name, _FIXED_GENERATORS[name]
    match = re.fullmatch(r"([CD])0*(\d{1,2})(_CRYOSPARC)?", name)
    if match is None:
        return None
    kind, n, cryosparc = match.group(1), int(match.group(2)), match.group(3)
    if n < 1 or (kind == "C" and cryosparc):
        return None
    if kind == "C":
        return f"C{n}", [(n, (0.0, 0.0, 1.0))]
    two_fold = (0.0, 1.0, 0.0) if cryosparc else (1.0, 0.0, 0.0)
    return (f"D{n}_cryosparc" if cryosparc else f"D{n}"), [(n, (0.0, 0.0, 1.0)), (2, two_fold)]


@functools.lru_cache(maxsize=64)
def _group(canonical, generators):
    ops = _close(generators)
    ops.setflags(write=False)
    return SymmetryGroup(canonical, ops)


def symmetry_group(name):
    """The point group called ``name``, in RELION's conventions (case-insensitive).

    Parameters
    ----------
    name : str
        ``C<n>``, ``D<n>`` (n = 1..99), ``D<n>_cryosparc`` (cryoSPARC's D_n: 2-fold on y
        instead of x), ``T``, ``O``, ``I1`` .. ``I4``, or ``I`` (RELION's alias of I2).

    Returns
    -------
    SymmetryGroup

    Raises
    ------
    cryorecon.errors.InputError
        For any other name, in one line listing the valid forms.

    Examples
    --------
    >>> symmetry_group("d7").name, symmetry_group("D7").order, symmetry_group("I").name
    ('D7', 14, 'I2')
    """
    parsed = _generators(str(name).strip().upper())
    if parsed is None:
        raise InputError(f"unknown symmetry group {name!r}: use {_VALID_FORMS}")
    canonical, generators = parsed
    return _group(canonical, tuple((fold, tuple(axis)) for fold, axis in generators))


def _reference_distances(rotations, group):
    """cos(half the angle) between each ``R g`` and the reference pose: (N, G)."""
    # d(R g, Q) = d(R, Q g^T), so one quaternion product per (rotation, operator).
    targets = matrix_to_quaternion(_REFERENCE[None] @ np.transpose(group.operators, (0, 2, 1)))
    return np.abs(matrix_to_quaternion(rotations) @ targets.T)


def to_asymmetric_unit(rotations, group):
    """Each pose's equivalent ``R g`` in the asymmetric unit.

    The asymmetric unit is the cell of poses at least as near a fixed reference pose
    (a few degrees from the identity) as any of their equivalents ``R g``; these cells,
    carried by the operators, tile SO(3).

    Parameters
    ----------
    rotations : array (N, 3, 3)
        RELION pose matrices.
    group : SymmetryGroup

    Returns
    -------
    folded : numpy float64 array (N, 3, 3)
        ``rotations[i] @ group.operators[index[i]]``: the same image (see the module
        docstring), in the unit.
    index : numpy int64 array (N,)
        The operator used; 0 (the identity) for a pose already in the unit.
    """
    R = np.asarray(rotations, dtype=np.float64).reshape(-1, 3, 3)
    index = np.argmax(_reference_distances(R, group), axis=1)
    return R @ group.operators[index], index


def restrict_to_asymmetric_unit(rotations, group, step_deg):
    """Indices of the grid poses that a symmetric search needs: about 1/order of them.

    Keeps the poses in the asymmetric unit of :func:`to_asymmetric_unit`, one per set
    of equivalent poses ``{R g}``. A grid is not in general carried onto itself by the
    operators, so near the unit's faces a grid pose's equivalent may fall in a gap of
    the kept poses; the few grid poses whose whole set ``{R g}`` lies farther than
    ``step_deg`` from every kept pose's set are kept as well (a handful per group on
    a 15-degree grid). Then every grid pose is within ``step_deg`` of some
    ``kept @ g``, as the full grid covers SO(3) within its step.

    Parameters
    ----------
    rotations : array (N, 3, 3)
        A search grid, e.g. :func:`~cryorecon.geometry.so3_grid.so3_grid`.
    group : SymmetryGroup
    step_deg : float
        The grid's spacing: every rotation is within this angle of a grid pose (true of
        ``so3_grid(step, return_step=True)``'s step).

    Returns
    -------
    numpy int64 array
        Ascending indices into ``rotations``.

    Examples
    --------
    >>> from cryorecon.geometry.so3_grid import so3_grid
    >>> grid, step = so3_grid(30, return_step=True)
    >>> len(restrict_to_asymmetric_unit(grid, symmetry_group("C2"), step))
    288
    """
    R = np.asarray(rotations, dtype=np.float64).reshape(-1, 3, 3)
    if group.order == 1:
        return np.arange(len(R))
    cos_half = _reference_distances(R, group)
    index = np.argmax(cos_half, axis=1)
    kept = np.nonzero(index == 0)[0]
    # A pose whose two nearest cells differ in distance by 2 step or more has its whole
    # step-ball inside its cell, and a grid pose within step inside it: it is covered.
    angles = np.sort(2.0 * np.rad2deg(np.arccos(np.clip(cos_half, -1.0, 1.0))), axis=1)
    near_face = np.nonzero((index != 0) & (angles[:, 1] - angles[:, 0] < 2.0 * step_deg))[0]
    if len(near_face) == 0:
        return kept
    _, distance = nearest_grid_index(R[near_face], expand_rotations(R[kept], group))
    extra = []
    for i in near_face[distance > step_deg]:
        # Two uncovered poses may be equivalent to each other: keep only the first.
        if extra:
            _, d = nearest_grid_index(R[i:i + 1], expand_rotations(R[extra], group))
            if d[0] <= step_deg:
                continue
        extra.append(i)
    return np.sort(np.concatenate([kept, np.asarray(extra, dtype=np.int64)]))


def expand_rotations(rotations, group):
    """Every pose's equivalents ``R g``, for a symmetrised backprojection.

    Parameters
    ----------
    rotations : array (N, 3, 3), numpy or cupy
    group : SymmetryGroup

    Returns
    -------
    array (N * G, 3, 3), the array module and dtype of ``rotations``
        Image-major: rows ``i * G .. (i + 1) * G - 1`` are ``rotations[i] @ g`` in the
        order of ``group.operators``; pair them with ``repeat(values, G, axis=0)``.
        Backprojecting over them gives ``sum_g B(g k)`` for the backprojection ``B``
        over ``rotations`` (``G`` times :func:`~cryorecon.forward.symmetrize.symmetrize_map` of it), and the same for
        the weights, so their ratio is symmetrised too.
    """
    xp = array_module(rotations)
    R = rotations.reshape(-1, 3, 3)
    ops = xp.asarray(group.operators, dtype=R.dtype)
    return (R[:, None] @ ops[None]).reshape(-1, 3, 3)


__all__ = [
    "SymmetryGroup",
    "symmetry_group",
    "to_asymmetric_unit",
    "restrict_to_asymmetric_unit",
    "expand_rotations",
]
