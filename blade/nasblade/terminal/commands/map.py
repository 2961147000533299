"""Draw the array as an SVG picture (and a PNG where a converter is installed): devices, LUs
and their extents, processor-info portions and backup areas, blades coloured by health and the
file systems they serve (``nasblade.terminal.svgmap``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from nasblade.terminal import render, svgmap
from nasblade.terminal.commands import examples, name
from nasblade.terminal.errors import TerminalError
from nasblade.terminal.target import add_target_arguments, guarded, open_source


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--svg", type=Path, default=Path("nasblade-map.svg"), metavar="FILE",
                        help="where to write the SVG (default nasblade-map.svg)")
    png = parser.add_mutually_exclusive_group()
    png.add_argument("--png", type=Path, metavar="FILE",
                     help="also write a PNG here (default: next to the SVG when rsvg-convert is installed)")
    png.add_argument("--no-png", action="store_true", help="do not write a PNG")
    add_target_arguments(parser)
    examples(parser, """\
  nasblade map --data-dir ./nasblade-data --svg array.svg
  kubectl nas map -n storage --svg storage.svg --png storage.png
""")


def run(args: argparse.Namespace) -> int:
    def body() -> int:
        snap = open_source(args).snapshot()
        svgmap.write(snap, args.svg)
        written = {"svg": str(args.svg), "png": None}
        png = args.png
        if png is None and not args.no_png and svgmap.png_converter() is not None:
            png = args.svg.with_suffix(".png")
        if png is not None:
            try:
                svgmap.to_png(args.svg, png)
            except (RuntimeError, OSError) as exc:
                raise TerminalError(f"SVG written to {args.svg}; PNG failed: {exc}") from exc
            written["png"] = str(png)
        if args.output == "table":
            sys.stdout.write("".join(f"{k.upper()} written to {v}\n" for k, v in written.items() if v))
        else:
            render.write_data(written, fmt=args.output, stream=sys.stdout)
        return 0

    return guarded(name(args), body)
