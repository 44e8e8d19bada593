"""The ``dualsync`` command line.

dualsync demo [--dir DIR]        two SQLite apps kept in sync, with conflicts (no servers)
dualsync validate MAP [MAP...]   check map files; print what each maps, or the problem
dualsync maps remove NAME [--state DIR] [--address ADDR]
                                 delete a map: its triggers, change tables and state
dualsync verify MAP [--state DIR] compare a map's two applications record by record; exit
                                 1 if they differ, 2 if the map cannot be verified
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, TextIO

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
    check = commands.add_parser("verify", help="compare a map's two applications record by record")
    check.add_argument("map")
    check.add_argument(
        "--state",
        type=Path,
        default=Path("state"),
        help="the engine's state directory (default: ./state); the engine need not run",
    )
    check.add_argument("--limit", type=int, default=20, help="differences listed per kind")
    check.add_argument("--json", action="store_true", help="print the report as JSON")
    maps = commands.add_parser("maps", help="manage the maps of an engine")
    maps_commands = maps.add_subparsers(dest="maps_command", required=True)
    remove = maps_commands.add_parser(
        "remove", help="delete a map: uninstall its capture from both apps, drop its state"
    )
    remove.add_argument("name")
    remove.add_argument("--state", type=Path, default=Path("state"), help="default: ./state")
    remove.add_argument(
        "--address",
        default=None,
        help="the Ray cluster of a running engine (auto, ray://host:10001); default: start"
        " the engine of --state here for the time of the command",
    )
    args = parser.parse_args(argv)

    if args.command == "maps":
        return remove_map(args.name, args.state, args.address, sys.stdout, sys.stderr)
    if args.command == "verify":
        return verify(args.map, args.state, args.limit, args.json, sys.stdout, sys.stderr)

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


def remove_map(name: str, state: Path, address: str | None, out: TextIO, err: TextIO) -> int:
    """`dualsync maps remove`: through the engine of ``state`` (started here unless
    ``address`` names the cluster where it runs)."""
    from engine.api import SyncEngine

    if not (state / "engine.sqlite").exists():
        print(f"dualsync maps remove: no engine state in {state}", file=err)
        return 2
    eng = SyncEngine.start(state_dir=state, address=address)
    try:
        eng.remove_map(name)
    except DualsyncError as exc:
        print(f"dualsync maps remove: {exc}", file=err)
        return 1
    finally:
        if address is None:
            eng.stop()  # NOTE: the engine this command started; a running one stays up
    print(f"map {name!r} removed: its capture is gone from both apps, its state deleted", file=out)
    return 0


def verify(name: str, state: Path, limit: int, as_json: bool, out: TextIO, err: TextIO) -> int:
    """`dualsync verify`: reads the map and its apps from the state directory's registry
    and compares the applications from this process (no Ray)."""
    from engine.store import Registry
    from engine.verify import verify_map

    path = state / "engine.sqlite"
    if not path.exists():
        print(f"dualsync verify: no engine state in {state} (no {path.name})", file=err)
        return 2
    registry = Registry(path)
    try:
        maps, apps = registry.maps(), registry.urls()
    finally:
        registry.close()
    if name not in maps:
        known = ", ".join(sorted(maps)) or "none"
        print(f"dualsync verify: no map {name!r} in {state} (maps: {known})", file=err)
        return 2
    spec = maps[name][0]
    try:
        report = verify_map(spec, [apps[spec["left"]["app"]], apps[spec["right"]["app"]]], limit)
    except DualsyncError as exc:
        print(f"dualsync verify: {exc}", file=err)
        return 2
    if as_json:
        print(json.dumps(report.as_dict(), default=str, indent=2), file=out)
        return 0 if report.ok else 1
    left, right = spec["left"], spec["right"]
    total = report.only_left_count + report.only_right_count + report.differing_count
    verdict = "in sync" if report.ok else f"{total} differences"
    print(
        f"map {name!r}: {left['app']}.{left['entity']} ({report.left} records) <->"
        f" {right['app']}.{right['entity']} ({report.right} records): {verdict}"
        f" in {report.seconds:.2f} s",
        file=out,
    )
    _listing(out, f"only in {left['app']}", report.only_left_count, report.only_left)
    _listing(out, f"only in {right['app']}", report.only_right_count, report.only_right)
    if report.differing_count:
        print(f"  differing: {report.differing_count}", file=out)
        for d in report.differing:
            fields = "; ".join(
                f"{f}: {a!r} in {left['app']}, {b!r} in {right['app']}"
                for f, (a, b) in d.fields.items()
            )
            print(f"    {_key(d.key)}: {fields}", file=out)
    return 0 if report.ok else 1


def _listing(out: TextIO, label: str, count: int, keys: list[Any]) -> None:
    if count:
        more = f" (first {len(keys)})" if len(keys) < count else ""
        print(f"  {label}: {count}{more}: {', '.join(_key(k) for k in keys)}", file=out)


def _key(key: tuple[Any, ...]) -> str:
    return repr(key[0]) if len(key) == 1 else repr(key)


if __name__ == "__main__":
    sys.exit(main())
