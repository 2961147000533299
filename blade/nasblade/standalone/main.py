"""``nasblade up``: run a whole array on this machine (see ``nasblade.standalone.array``).

    nasblade up [--config FILE] [--data-dir DIR]

Prints one ready line (``role: "array"``) whose ``endpoints`` list every NFS endpoint (host,
NFS port, MOUNT port, export path, a libnfs URL, owning blade and its pid) and the controller
endpoints; then supervises the blades like a chassis (``nasblade.standalone.supervisor``:
crashed blade processes are restarted, ``DATA/run/chassis.sock`` powers a blade off for the
peer that takes it over) until SIGTERM or Ctrl-C, and shuts everything down cleanly. Starting again
on the same data directory brings the same data back. A bad configuration is refused before
anything starts, with the field path (exit status 2).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from nasblade import ready
from nasblade.standalone.array import Array, ArrayError
from nasblade.standalone.chassis import ChassisServer
from nasblade.standalone.config import ConfigError, load
from nasblade.standalone.supervisor import Supervisor


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="YAML configuration (default: one group of two blades, one file system)")
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path(os.environ.get("NASBLADE_DATA_DIR", "nasblade-data")),
        help="where devices, secrets, logs and sockets live (default ./nasblade-data)",
    )


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s up %(levelname)s %(message)s")
    try:
        config = load(args.config)
    except (ConfigError, OSError) as exc:
        sys.stderr.write(f"nasblade up: invalid configuration: {exc}\n")
        return 2
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    array = Array(config=config, data_dir=args.data_dir.resolve())
    try:
        summary = array.start()
    except (ArrayError, OSError, RuntimeError) as exc:
        sys.stderr.write(f"nasblade up: {exc}\n")
        return 1
    sup = Supervisor(array)
    chassis = ChassisServer(sup, array.chassis_socket)
    chassis.start()
    endpoints = write_endpoints(array.data_dir, summary)
    ready.announce("array", summary, dataDir=str(array.data_dir))
    while not stop.wait(0.2):
        try:
            sup.poll()
        except Exception:  # the chassis must outlive any one bad pass: log it, go on supervising
            logging.getLogger(__name__).exception("supervision pass failed; continuing")
    sup.stopping = True
    chassis.close()
    with sup.lock:
        array.stop()
    endpoints.unlink(missing_ok=True)
    return 0


def write_endpoints(data_dir: Path, summary: dict[str, Any]) -> Path:
    """``DATA/endpoints.json``: the controller's and the blades' endpoints of the running array
    (the ready line's ``controller`` and ``blades``), where ``nasblade status`` and the other
    terminal commands find them (``nasblade.terminal.standalone``). Written atomically; removed
    when the array stops."""
    path = data_dir / "endpoints.json"
    doc = {"controller": summary["controller"], "blades": summary["blades"], "nfs": summary["nfs"]}
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    os.replace(tmp, path)
    return path
