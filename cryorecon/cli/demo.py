"""``cryorecon demo NAME``: the optimizer demos (``demo list`` names them)."""
from __future__ import annotations


def _cmd_demo(args):
    from .. import demos

    if args.name == "list":
        for name, text in demos.describe().items():
            print(f"{name:14s} {text}")
        return 0
    metrics = demos.run_demo(args.name, out_dir=args.out or f"demo_{args.name}", quick=args.quick, seed=args.seed)
    for key, value in metrics.items():
        print(f"{key}: {value}")
    return 0


def add_commands(sub):
    """Subcommand ``demo``."""
    p = sub.add_parser("demo", help="run an ML demo of cryorecon.optim (`demo list` names them)")
    p.add_argument("name", help="demo name, or `list`")
    p.add_argument("--quick", action="store_true", help="small sizes, for tests")
    p.add_argument("--out", help="folder for the PNGs (default demo_NAME)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_demo)
