"""``nasblade software``: build, push, list, select and remove blade software on the program LU.

The program LU is reached as a block device URL, normally through the controller
(``--program nbd://127.0.0.1:10809/program``; ``NASBLADE_PROGRAM`` is the default); a plain file
path works too (tests, offline preparation). Examples::

    nasblade software build --version 1.0 --output blade-1.0.pyz
    nasblade software push blade-1.0.pyz --version 1.0 [--select]
    nasblade software list [--json]
    nasblade software select 1.0
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import nasblade
from nasblade import blockdev
from nasblade.program import bundle
from nasblade.program.catalog import ProgramError, ProgramStore


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--program",
        default=os.environ.get("NASBLADE_PROGRAM"),
        help="program LU URL (nbd://HOST:PORT/program, nbd+unix:///program?socket=P, or a path);"
        " default $NASBLADE_PROGRAM",
    )
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    b = sub.add_parser("build", help="build a bundle (zipapp) from this installation's code")
    b.add_argument("--version", required=True)
    b.add_argument("--output", required=True, type=Path)
    p = sub.add_parser("push", help="store a bundle on the program LU")
    p.add_argument("bundle", type=Path)
    p.add_argument("--version", required=True)
    p.add_argument("--select", action="store_true", help="also make it the selected version")
    ls = sub.add_parser("list", help="show the program catalog")
    ls.add_argument("--json", action="store_true")
    s = sub.add_parser("select", help="make a version the one blades boot")
    s.add_argument("version")
    r = sub.add_parser("remove", help="drop a version from the catalog")
    r.add_argument("version")
    sub.add_parser("running", help="print the version and location of the code running this command")
    from nasblade.terminal.commands import rollout  # `software rollout V` (management terminal)

    rollout.add_parser(sub)


def _store(args: argparse.Namespace) -> ProgramStore:
    if not args.program:
        raise ProgramError("no program LU given: use --program URL or set NASBLADE_PROGRAM")
    return ProgramStore(blockdev.open_device(args.program))


def run(args: argparse.Namespace) -> int:
    if args.action == "rollout":
        from nasblade.terminal.commands import rollout

        return rollout.run(args)
    try:
        if args.action == "running":
            info = {"version": bundle.running_version(), "code": str(Path(nasblade.__file__).parent)}
            sys.stdout.write(json.dumps(info, sort_keys=True) + "\n")
            return 0
        if args.action == "build":
            data = bundle.build(version=args.version)
            args.output.write_bytes(data)
            return 0
        store = _store(args)
        try:
            return _ACTIONS[args.action](store, args)
        finally:
            store.device.close()
    except (ProgramError, OSError, ValueError) as exc:
        sys.stderr.write(f"nasblade software {args.action}: {exc}\n")
        return 1


def _push(store: ProgramStore, args: argparse.Namespace) -> int:
    entry = store.push(args.bundle.read_bytes(), version=args.version, select=args.select)
    sys.stdout.write(json.dumps(entry.to_json(), sort_keys=True) + "\n")
    return 0


def _list(store: ProgramStore, args: argparse.Namespace) -> int:
    catalog = store.catalog()
    if args.json:
        sys.stdout.write(json.dumps(catalog.to_json(), sort_keys=True) + "\n")
        return 0
    sys.stdout.write(f"{'':2}{'VERSION':<20}{'SIZE':>12}  {'CREATED':<20}  SHA256\n")
    for b in catalog.bundles:
        mark = "* " if b.version == catalog.current else "  "
        created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(b.created))
        sys.stdout.write(f"{mark}{b.version:<20}{b.size:>12}  {created:<20}  {b.sha256}\n")
    return 0


def _select(store: ProgramStore, args: argparse.Namespace) -> int:
    store.select(args.version)
    return 0


def _remove(store: ProgramStore, args: argparse.Namespace) -> int:
    store.remove(args.version)
    return 0


_ACTIONS = {"push": _push, "list": _list, "select": _select, "remove": _remove}
