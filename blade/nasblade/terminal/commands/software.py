"""``kubectl nas software list|rollout``: the software versions of an array on Kubernetes.

``list`` shows the versions seeded into the program LU (``DiskArray.status.software``) and
what each blade runs; ``rollout`` is ``nasblade.terminal.commands.rollout``.
"""

from __future__ import annotations

import argparse
import sys

from nasblade.terminal import plan, render
from nasblade.terminal.commands import examples, name, rollout
from nasblade.terminal.target import add_target_arguments, guarded, open_source


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    ls = sub.add_parser("list", help="software versions of each array and what each blade runs")
    add_target_arguments(ls)
    rollout.add_parser(sub)
    examples(parser, """\
  kubectl nas software list -n storage
  kubectl nas software rollout 1.2.0 -n storage
""")


def run(args: argparse.Namespace) -> int:
    if args.action == "rollout":
        return rollout.run(args)

    def body() -> int:
        snap = open_source(args).snapshot()
        arrays = {a["name"]: a["software"] for a in snap["arrays"]}
        blades = {b["name"]: b["softwareVersion"] for b in plan.all_blades(snap)}
        data = {"arrays": arrays, "blades": blades}
        if args.output == "table":
            out = render.console(sys.stdout)
            for arr, sw in arrays.items():
                out.print(f"{arr}: current {sw.get('current') or '-'}; available {', '.join(sw.get('versions') or []) or '-'}")
            for blade, v in blades.items():
                out.print(f"  {blade}: {v or '-'}")
        else:
            render.write_data(data, fmt=args.output, stream=sys.stdout)
        return 0

    return guarded(name(args), body)
