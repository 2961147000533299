"""Print the version of the terminal (``nasblade version``, ``kubectl nas version``; also
``nasblade --version``): the package version, and with ``-o json|yaml`` the software version
of this code (``dev-…`` or the bundle's), Python and the platform, as kubectl plugins and
longhornctl do.
"""

from __future__ import annotations

import argparse
import platform
import sys
from typing import Any

import nasblade
from nasblade.program import bundle
from nasblade.terminal import render
from nasblade.terminal.commands import examples


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-o", "--output", choices=("table", "json", "yaml"), default="table",
                        help="output format (default: table, one line)")
    examples(parser, """\
  nasblade version
  nasblade --version
  kubectl nas version -o json
""")


def info() -> dict[str, Any]:
    return {"version": nasblade.__version__, "software": bundle.running_version(),
            "python": platform.python_version(), "platform": platform.platform()}


def run(args: argparse.Namespace) -> int:
    data = info()
    if args.output == "table":
        prog = getattr(args, "prog_name", "nasblade")
        sys.stdout.write(f"{prog} {data['version']} (software {data['software']}, "
                         f"Python {data['python']}, {data['platform']})\n")
    else:
        render.write_data(data, fmt=args.output, stream=sys.stdout)
    return 0
