"""``nasblade software``: build, push, list, select, remove and roll out blade software on the
program LU (a terminal command; the program LU's format is ``nasblade.program.catalog``).

The program LU is found like every terminal command finds an array: ``--data-dir DIR`` (or
``$NASBLADE_DATA_DIR``) of a ``nasblade up`` array, whose ``DIR/endpoints.json`` names the
controller's NBD endpoint (``nasblade.terminal.standalone.StandaloneSource``); or given as a
block device URL (``--program nbd://127.0.0.1:10809/program``, ``$NASBLADE_PROGRAM``; a plain
file path works too, for tests and offline preparation). ``--program`` wins over
``--data-dir``. Examples::

    nasblade software build --version 1.0 --output blade-1.0.pyz
    nasblade software push blade-1.0.pyz --version 1.0 [--select] --data-dir ./nasblade-data
    nasblade software list [-o json|yaml|table] --data-dir ./nasblade-data
    nasblade software select 1.0

``list --json`` is the deprecated spelling of ``-o json`` (kept working, says so on stderr).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import nasblade
from nasblade import devices
from nasblade.program import bundle
from nasblade.program.catalog import ProgramError, ProgramStore
from nasblade.terminal import render
from nasblade.terminal.commands import rollout
from nasblade.terminal.errors import TerminalError
from nasblade.terminal.standalone import PROGRAM_LU, StandaloneSource


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--program",
        default=None,
        help="program LU URL (nbd://HOST:PORT/program, nbd+unix:///program?socket=P, or a path);"
        " default: the array of --data-dir, else $NASBLADE_PROGRAM",
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
    ls.add_argument("-o", "--output", choices=("table", "json", "yaml"), default="table",
                    help="output format (default: table)")
    ls.add_argument("--json", action="store_true", help="deprecated: use -o json")
    s = sub.add_parser("select", help="make a version the one blades boot")
    s.add_argument("version")
    r = sub.add_parser("remove", help="drop a version from the catalog")
    r.add_argument("version")
    for action in (p, ls, s, r):
        _add_array_arguments(action)
    sub.add_parser("running", help="print the version and location of the code running this command")
    rollout.add_parser(sub)


def _add_array_arguments(parser: argparse.ArgumentParser) -> None:
    t = parser.add_argument_group("target (a standalone array, as for every terminal command)")
    t.add_argument("--data-dir", type=Path, default=None,
                   help="data directory of a standalone array (`nasblade up --data-dir`); default $NASBLADE_DATA_DIR")
    t.add_argument("--config", type=Path, default=None,
                   help="the array's configuration file (as given to `nasblade up`); default $NASBLADE_CONFIG")


def program_url(args: argparse.Namespace) -> str:
    """Where the program LU is: ``--program``, else the array of ``--data-dir`` (its
    ``endpoints.json``), else ``$NASBLADE_PROGRAM``, else ``$NASBLADE_DATA_DIR``'s array."""
    if args.program:
        return str(args.program)
    data_dir = getattr(args, "data_dir", None)
    if data_dir is None and os.environ.get("NASBLADE_PROGRAM"):
        return os.environ["NASBLADE_PROGRAM"]
    if data_dir is None and os.environ.get("NASBLADE_DATA_DIR"):
        data_dir = Path(os.environ["NASBLADE_DATA_DIR"])
    if data_dir is None:
        raise ProgramError("no program LU: give --data-dir DIR (a standalone array) or --program URL"
                           " (or set NASBLADE_DATA_DIR / NASBLADE_PROGRAM)")
    config = getattr(args, "config", None) or (Path(os.environ["NASBLADE_CONFIG"]) if os.environ.get("NASBLADE_CONFIG") else None)
    try:
        source = StandaloneSource(Path(data_dir).resolve(), config=config)
    except TerminalError as exc:
        raise ProgramError(str(exc)) from exc
    return f"nbd://{source.endpoints.nbd}/{PROGRAM_LU}"


def _store(args: argparse.Namespace) -> ProgramStore:
    return ProgramStore(devices.open_device(program_url(args)))


def run(args: argparse.Namespace) -> int:
    if args.action == "rollout":
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
        sys.stderr.write("nasblade software list: --json is deprecated; use -o json\n")
        args.output = "json"
    if args.output != "table":
        render.write_data(catalog.to_json(), fmt=args.output, stream=sys.stdout)
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
