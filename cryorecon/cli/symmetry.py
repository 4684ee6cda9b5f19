"""``cryorecon symmetry NAME``: a point group's operators, like ``relion_refine --print_symmetry_ops``."""
from __future__ import annotations


def _cmd_symmetry(args):
    from ..geometry.symmetry import symmetry_group

    for R in symmetry_group(args.name).operators:
        print(" ".join(f"{v:.9f}" for v in R.ravel()))
    return 0


def add_commands(sub):
    """Subcommand ``symmetry`` (like ``relion_refine --sym NAME --print_symmetry_ops``)."""
    p = sub.add_parser(
        "symmetry",
        help="print a point group's rotation matrices (RELION's conventions)",
        description="Print the rotation matrices of the point group NAME, one per line as 9 numbers "
        "(row-major), the identity first, with RELION's axes and in RELION's order (like relion_refine "
        "--sym NAME --print_symmetry_ops). A map with this symmetry has V(R x) = V(x) for each R.",
    )
    p.add_argument("name", help="C<n>, D<n> (n = 1..99), D<n>_cryosparc (cryoSPARC's D_n: 2-fold on y, "
                   "not x), T, O, I1, I2, I3, I4, or I (= I2); case-insensitive")
    p.set_defaults(func=_cmd_symmetry)
