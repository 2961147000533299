"""The array's devices and their redundancy: states, errors, rebuild; replace or fail one.

``nasblade devices`` lists the protection level, each device's state (ok, rebuilding with
progress, failed with the reason) and its read/write/checksum error and repair counters, from
the controller's ``GET /v1/array``. ``nasblade devices replace N`` puts a new device (by
default a new, empty file at the failed device's path) in the place of failed device N; the
controller rebuilds it online from the other copies. ``nasblade devices fail N`` stops using
a device (refused for the last copy of its data). Standalone arrays only (``--data-dir``); on
Kubernetes a lost device PVC comes back blank when its pod restarts and is rebuilt.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from nasblade.terminal import render
from nasblade.terminal.commands import examples, name
from nasblade.terminal.errors import UsageError
from nasblade.terminal.target import add_target_arguments, guarded, open_source


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", nargs="?", choices=("list", "replace", "fail"), default="list")
    parser.add_argument("index", nargs="?", type=int, metavar="N", help="device index (replace, fail)")
    parser.add_argument("--path", help="replace: the new device (default: a new file at the old path)")
    add_target_arguments(parser)
    examples(parser, """\
  nasblade devices --data-dir ./nasblade-data
  nasblade devices replace 1 --data-dir ./nasblade-data
  nasblade devices -o json --data-dir ./nasblade-data | jq '.devices[] | {index, state}'
""")


def admin_client(args: argparse.Namespace) -> Any:
    """The controller's control API with the admin token (standalone arrays)."""
    source = open_source(args)
    control = getattr(source, "control", None)
    if control is None:
        raise UsageError("device commands need a standalone array (--data-dir)")
    client = control()
    client.token = source._secret("admin-token")  # type: ignore[attr-defined]
    return client


def _size(n: int) -> str:
    return f"{n / (1 << 20):.0f} MiB"


def table(array: dict[str, Any]) -> str:
    lines = [f"protection {array.get('protection', 'none')}, state {array.get('state', 'ok')}, "
             f"capacity {_size(array['size'])} of {_size(array.get('rawSize', array['size']))} raw, "
             f"checksums {'on' if array.get('checksums') else 'off'}, "
             f"repaired {array.get('repairedBlocks', 0)} block(s), lost {array.get('lostBlocks', 0)}"]
    for d in array["devices"]:
        state = d.get("state", "ok")
        if state == "rebuilding":
            total = next((r["total"] for r in array.get("rebuild", []) if r["device"] == d["index"]), 0)
            state += f" {100 * (d.get('rebuilt') or 0) / max(total, 1):.0f}%"
        elif state == "failed":
            state += f" ({d.get('reason', '')})"
        lines.append(f"  {d['index']}  {d['path']}  {_size(d['size'])}  {state}  "
                     f"errors r/w/checksum {d.get('readErrors', 0)}/{d.get('writeErrors', 0)}/"
                     f"{d.get('checksumErrors', 0)}  repaired {d.get('repaired', 0)}")
    scrub = array.get("scrub") or {}
    last = scrub.get("last")
    if scrub.get("running"):
        lines.append(f"scrub running: {100 * scrub['done'] / max(scrub['total'], 1):.0f}%")
    elif last:
        lines.append(f"last scrub {last['finished']}: {last['repaired']} repaired, {last['lost']} lost")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    def body() -> int:
        client = admin_client(args)
        if args.action in ("replace", "fail"):
            if args.index is None:
                raise UsageError(f"{args.action}: give the device index N")
            payload: dict[str, Any] = {"path": args.path} if args.path else {}
            client.request("POST", f"/v1/array/devices/{args.index}/{args.action}", payload)
        array = client.array()
        if args.output == "table":
            sys.stdout.write(table(array) + "\n")
        else:
            render.write_data(array, fmt=args.output, stream=sys.stdout)
        return 0

    return guarded(name(args), body)
