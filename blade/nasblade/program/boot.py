"""``nasblade boot``: the file processor container's boot shim.

Usage::

    nasblade boot --software-dir DIR [--wait SECONDS] -- ROLE [ARGS...]

It waits (bounded) for the block processor to have installed a bundle in ``DIR`` (see
``nasblade.program.install``), verifies the installed file's sha256, and replaces itself with
``python DIR/<version>.pyz ROLE ARGS...`` — normally ``file-processor ...``. The environment
variable ``NASBLADE_SOFTWARE_VERSION`` tells the program which version it is. Nothing
installed, or a corrupted file, is refused with a message and exit status 2.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from nasblade.program import install
from nasblade.program.catalog import ProgramError

_POLL = 0.05


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--software-dir", required=True, type=Path, help="where the block processor installs bundles")
    parser.add_argument("--wait", type=float, default=30.0, help="seconds to wait for a first install (default 30)")
    parser.add_argument("program_args", nargs=argparse.REMAINDER, help="role and arguments for the bundle (after --)")


def run(args: argparse.Namespace) -> int:
    argv = list(args.program_args)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        sys.stderr.write("nasblade boot: give the role to run after --, e.g. -- file-processor ...\n")
        return 2
    deadline = time.monotonic() + args.wait
    try:
        inst = install.current(args.software_dir)
        # the block processor installs before it announces readiness; a short bounded wait
        # covers the case where both containers start together
        while inst is None and time.monotonic() < deadline:
            time.sleep(_POLL)
            inst = install.current(args.software_dir)
        if inst is None:
            raise ProgramError(f"no blade software installed in {args.software_dir}")
        install.verify(inst)
    except ProgramError as exc:
        sys.stderr.write(f"nasblade boot: {exc}\n")
        return 2
    env = dict(os.environ, NASBLADE_SOFTWARE_VERSION=inst.version)
    os.execve(sys.executable, [sys.executable, str(inst.path), *argv], env)
