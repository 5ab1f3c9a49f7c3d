"""`lh2face` command line: a dispatcher over the sub-command modules listed in joint.commands.COMMANDS."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from types import ModuleType
from typing import Dict, List, Optional, Sequence, Tuple

from lh2face import __version__


def load_commands(names: Optional[Sequence[str]] = None) -> Tuple[Dict[str, ModuleType], Dict[str, str]]:
    """Import the sub-command modules; returns (name -> module, name -> import error).

    Every listed module must import and define NAME, HELP, add_arguments and run: a listed module that is
    missing, fails to import or lacks one of them is kept in the error map with the module's name and the
    reason (`main` warns about it on every call and exits 2 when it is the command asked for).
    """
    from joint.commands import COMMANDS

    mods: Dict[str, ModuleType] = {}
    errors: Dict[str, str] = {}
    for name in names if names is not None else COMMANDS:
        modname = f"joint.commands.{name}"
        try:
            mod = importlib.import_module(modname)
        except Exception as exc:  # noqa: BLE001 - a broken command must not break the others
            errors[name] = f"module {modname} failed to import ({type(exc).__name__}: {exc})"
            continue
        missing = [a for a in ("NAME", "HELP", "add_arguments", "run") if not hasattr(mod, a)]
        if missing:
            errors[name] = f"module {modname} lacks {', '.join(missing)}"
            continue
        mods[mod.NAME] = mod
    return mods, errors


def build_parser(mods: Dict[str, ModuleType], errors: Dict[str, str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lh2face",
        description="LH2Face: face recognition trained jointly with 3D face reconstruction.",
    )
    parser.add_argument("--version", action="version", version=f"lh2face {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, mod in mods.items():
        p = sub.add_parser(name, help=mod.HELP, description=(mod.__doc__ or mod.HELP).strip().split("\n\n")[0])
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    for name, err in errors.items():
        p = sub.add_parser(name, help=f"(unavailable: {err})")
        p.add_argument("rest", nargs=argparse.REMAINDER)
        p.set_defaults(_error=err)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Parse `argv` (default sys.argv[1:]), run the sub-command, return its exit code."""
    mods, errors = load_commands()
    parser = build_parser(mods, errors)
    for name, err in errors.items():  # never silent: a broken listed command is named on every call
        print(f"warning: sub-command '{name}' is unavailable: {err}", file=sys.stderr)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    if getattr(args, "_error", None):
        print(f"error: sub-command '{args.command}' is unavailable: {args._error}", file=sys.stderr)
        return 2
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    if hasattr(args, "threads"):  # every command with --threads (joint.commands._common) gets it applied here
        from joint.commands._common import apply_threads

        code = apply_threads(args)
        if code is not None:
            return code
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
