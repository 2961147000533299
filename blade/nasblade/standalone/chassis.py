"""The chassis API of ``nasblade up``: power fencing for the blades of the standalone array.

When a blade takes over a file system from a silent peer, the peer may only be paused
(SIGSTOP, a long GC, a stuck kernel call) and still hold the file system's address, so clients
would hang on it although the controller already refuses its I/O (epoch fencing, the data
guarantee). A NAS chassis solves this by cutting the silent blade's power before the survivor
takes its address; this module is that power switch for standalone mode.

``ChassisServer`` serves HTTP/JSON on a Unix socket (``DATA/run/chassis.sock``, mode 0600 in a
directory only the array's user can enter: reaching the socket is the authorisation) in a
thread of ``nasblade up``, over ``nasblade.standalone.supervisor.Supervisor``:

    POST /v1/blades/<blade>/power-off   {"requestedBy": "g1-1", "reason": "..."}
         → 200 {"blade", "poweredOff": true, "killed": [pids], ...}   (after the processes are reaped)
    POST /v1/blades/<blade>/restart     {"softwareVersion": "1.2.0", "requestedBy": "rollout"}
         → 200 {"blade", "softwareVersion", "stopped": {name: pid}, ...}   (after both processes
           stopped gracefully; the supervisor starts them again on that version, see
           ``Supervisor.restart``); 409 while the blade is being started or restarted already
    GET  /v1/chassis                    → the supervisor's status (per blade: pids, restarts, ...)

``nasblade.bladeapi.chassis.ChassisClient`` is the caller's side: the cluster member's takeover
(``nasblade.cluster.takeover``) uses it when its cluster configuration names a chassis
(``chassis`` in ``nasblade.cluster.config``), and ``nasblade.standalone.rollout`` for the
software restarts of a rollout. In Kubernetes there
is no chassis: the operator deletes the failed blade's pod instead.
"""

from __future__ import annotations

import http.server
import json
import logging
import os
import re
import socketserver
import threading
from pathlib import Path
from typing import Any

from nasblade.program.catalog import VERSION_RE
from nasblade.standalone.supervisor import Busy, Supervisor

log = logging.getLogger(__name__)

_BLADE_ACTION = re.compile(r"^/v1/blades/([A-Za-z0-9._-]+)/(power-off|restart)$")


def _handler(sup: Supervisor) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def address_string(self) -> str:  # Unix-socket peers have no address
            return "chassis-client"

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("chassis: " + format, *args)

        def _reply(self, status: int, body: Any) -> None:
            data = json.dumps(body, sort_keys=True).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _body(self) -> dict[str, Any]:
            n = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(n) if n else b""
            body = json.loads(raw) if raw else {}
            if not isinstance(body, dict):
                raise ValueError("the request body must be a JSON object")
            return body

        def do_GET(self) -> None:
            if self.path == "/v1/chassis":
                self._reply(200, sup.status())
            else:
                self._reply(404, {"error": f"no such resource: {self.path}"})

        def do_POST(self) -> None:
            m = _BLADE_ACTION.match(self.path)
            if m is None:
                self._reply(404, {"error": f"no such resource: {self.path}"})
                return
            try:
                body = self._body()
            except ValueError as exc:
                self._reply(400, {"error": f"bad request body: {exc}"})
                return
            by, reason = str(body.get("requestedBy") or "unknown"), str(body.get("reason") or "")
            blade, action = m.group(1), m.group(2)
            version = body.get("softwareVersion")
            if action == "restart" and not (isinstance(version, str) and VERSION_RE.match(version)):
                self._reply(400, {"error": f"softwareVersion: a version is required, got {version!r}"})
                return
            try:
                if action == "power-off":
                    self._reply(200, sup.power_off(blade, by=by, reason=reason))
                else:
                    self._reply(200, sup.restart(blade, version=str(version), by=by))
            except KeyError:
                self._reply(404, {"error": f"no blade {blade} in this chassis"})
            except Busy as exc:
                self._reply(409, {"error": f"blade {blade} cannot be restarted now: {exc}"})

    return Handler


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


class ChassisServer:
    """The chassis API on ``path`` (see the module doc); ``start()`` / ``close()``."""

    def __init__(self, sup: Supervisor, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists() or path.is_symlink():
            path.unlink()
        old = os.umask(0o177)
        try:
            self._server = _Server(str(path), _handler(sup))
        finally:
            os.umask(old)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True, name="chassis")

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self.path.exists():
            self.path.unlink()
