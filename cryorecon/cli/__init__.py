"""The ``cryorecon`` command line: one subcommand per stage, each with ``--help``.

Each module here is one family of subcommands with its ``add_commands(sub)``; the
commands are thin: every computation is a library call that works without them.
Anything the user can fix arrives here as :class:`~cryorecon.errors.InputError` and is
printed as one line, without a traceback (exit status 2).
"""
from __future__ import annotations

import argparse
import sys

from .. import __version__
from ..errors import InputError
from . import demo, maps, postprocess, reconstruction, symmetry, view

_COMMAND_FAMILIES = (reconstruction, demo, symmetry, maps, postprocess, view)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cryorecon",
        description="Ab initio cryo-EM reconstruction by mini-batch SGD with marginalised poses.",
    )
    parser.add_argument("--version", action="version", version=f"cryorecon {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for family in _COMMAND_FAMILIES:
        family.add_commands(sub)
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
        hint = "rerun the same command to continue" if args.command == "run" else "rerun with --resume to continue"
        print(f"cryorecon {args.command}: interrupted; {hint}", file=sys.stderr)
        return 130
