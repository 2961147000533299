"""Start a scrub of the array now and (with ``--wait``) follow it to the end.

A scrub reads every copy of every block that holds data, verifies its checksum and repairs
bad copies from good ones (``docs/controller.md``, "Scrub"). Exit 0 when nothing was lost,
1 when blocks were found that no copy holds correctly. Standalone arrays (``--data-dir``).
"""

from __future__ import annotations

import argparse
import sys
import time

from nasblade.terminal import render
from nasblade.terminal.commands import examples, name
from nasblade.terminal.commands.devices import admin_client
from nasblade.terminal.target import add_target_arguments, guarded


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--wait", action="store_true", help="follow the scrub until it has finished")
    add_target_arguments(parser)
    examples(parser, """\
  nasblade scrub --data-dir ./nasblade-data --wait
""")


def run(args: argparse.Namespace) -> int:
    def body() -> int:
        client = admin_client(args)
        before = (client.request("GET", "/v1/array/scrub").get("last") or {}).get("finished")
        status = client.request("POST", "/v1/array/scrub", {})
        while args.wait:
            status = client.request("GET", "/v1/array/scrub")
            last = status.get("last") or {}
            if not status["running"] and last.get("finished") != before:
                break
            time.sleep(0.5)
        if args.output == "table":
            last = status.get("last") or {}
            if args.wait:
                sys.stdout.write(f"scrub done: {last.get('bytes', 0)} bytes checked, "
                                 f"{last.get('repaired', 0)} block(s) repaired, {last.get('lost', 0)} lost"
                                 + (f", {last['parityMismatches']} parity mismatch(es) rewritten"
                                    if last.get("parityMismatches") else "") + "\n")
            else:
                sys.stdout.write("scrub started\n")
        else:
            render.write_data(status, fmt=args.output, stream=sys.stdout)
        return 1 if args.wait and (status.get("last") or {}).get("lost") else 0

    return guarded(name(args), body)
