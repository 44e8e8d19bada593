"""The ``dualsync`` command line.

dualsync demo [--dir DIR]        two SQLite apps kept in sync, with conflicts (no servers)
dualsync validate MAP [MAP...]   check map files; print what each maps, or the problem
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from engine.errors import DualsyncError
from engine.maps import load_map


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dualsync", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="run the SQLite demo (finance <-> crm)")
    demo.add_argument(
        "--dir",
        type=Path,
        default=Path("dualsync-demo"),
        help="where to create the two apps and the engine state (default: ./dualsync-demo;"
        " earlier demo files there are replaced)",
    )
    validate = commands.add_parser("validate", help="check map files")
    validate.add_argument("maps", nargs="+", type=Path)
    args = parser.parse_args(argv)

    if args.command == "demo":
        from engine.demo import run

        return run(args.dir.resolve(), sys.stdout)
    status = 0
    for path in args.maps:
        try:
            emap = load_map(path)
        except DualsyncError as exc:
            print(f"{path}: {exc}", file=sys.stderr)
            status = 1
            continue
        left, right = emap.left, emap.right
        print(
            f"{path}: map {emap.name!r} {left.app}.{left.entity} <-> {right.app}.{right.entity},"
            f" {len(emap.fields)} fields, policy {emap.policy().rule}"
        )
    return status


if __name__ == "__main__":
    sys.exit(main())
