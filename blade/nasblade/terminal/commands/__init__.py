"""One module per terminal subcommand, each with ``add_arguments(parser)`` and ``run(args)``.

They are listed in ``nasblade.cli.COMMANDS`` (for ``nasblade``) and in
``nasblade.terminal.kubectl.COMMANDS`` (for ``kubectl nas``); the bodies read a
``Source`` (``nasblade.terminal.target.open_source``) and draw with ``render`` / ``svgmap``.
"""

from __future__ import annotations

import argparse


def examples(parser: argparse.ArgumentParser, text: str) -> None:
    """Show ``text`` (example invocations) under the option list of ``--help``."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = "examples:\n" + text.rstrip() + "\n"


def name(args: argparse.Namespace) -> str:
    """``nasblade status`` or ``kubectl nas status``: how errors name the command."""
    return f"{getattr(args, 'prog_name', 'nasblade')} {getattr(args, 'command', '')}".strip()
