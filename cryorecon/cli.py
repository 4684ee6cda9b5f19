"""The ``cryorecon`` command line: one subcommand per stage, each with ``--help``.

Anything the user can fix arrives here as :class:`~cryorecon.errors.InputError` and is
printed as one line, without a traceback (exit status 2).
"""
from __future__ import annotations

import argparse
import sys

from . import __version__
from .errors import InputError


def _cmd_demo(args):
    from . import demos

    if args.name == "list":
        for name, text in demos.describe().items():
            print(f"{name:14s} {text}")
        return 0
    metrics = demos.run_demo(args.name, out_dir=args.out or f"demo_{args.name}", quick=args.quick, seed=args.seed)
    for key, value in metrics.items():
        print(f"{key}: {value}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cryorecon",
        description="Ab initio cryo-EM reconstruction by mini-batch SGD with marginalised poses.",
    )
    parser.add_argument("--version", action="version", version=f"cryorecon {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("demo", help="run an ML demo of cryorecon.optim (`demo list` names them)")
    p.add_argument("name", help="demo name, or `list`")
    p.add_argument("--quick", action="store_true", help="small sizes, for tests")
    p.add_argument("--out", help="folder for the PNGs (default demo_NAME)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_demo)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except InputError as err:
        print(f"cryorecon {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"cryorecon {args.command}: interrupted; rerun with --resume to continue", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
