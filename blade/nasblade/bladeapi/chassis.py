"""``ChassisClient``: the caller's side of the chassis API of ``nasblade up`` (power fencing and
software restarts; the server is ``nasblade.standalone.chassis``).

Used by the cluster member's takeover (``nasblade.cluster.takeover``: power a silent peer off
before binding its address, when the cluster configuration names a chassis) and by
``nasblade.standalone.rollout`` and the terminal (software restarts). HTTP/JSON on the chassis'
Unix socket through the client base ``nasblade.bladeapi.http``; any non-2xx reply raises
``ChassisError``.
"""

from __future__ import annotations

from typing import Any

from nasblade.bladeapi.http import HTTPAPIError, JSONClient


class ChassisError(HTTPAPIError):
    def __str__(self) -> str:
        return f"chassis: HTTP {self.status}: {self.message}"


class ChassisClient(JSONClient):
    """Caller side of the chassis API at the Unix socket ``path``."""

    def __init__(self, path: str, *, timeout: float = 30.0) -> None:
        super().__init__(unix=path, timeout=timeout)
        self.path = path

    def error(self, status: int, body: dict[str, Any]) -> Exception:
        return ChassisError(status, str(body.get("error")))

    def _dict(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        result: dict[str, Any] = self.request(method, path, body)
        return result

    def power_off(self, blade: str, *, requested_by: str, reason: str) -> dict[str, Any]:
        return self._dict("POST", f"/v1/blades/{blade}/power-off", {"requestedBy": requested_by, "reason": reason})

    def restart(self, blade: str, *, software_version: str, requested_by: str) -> dict[str, Any]:
        """Restart ``blade`` on ``software_version``; returns once its processes stopped."""
        return self._dict("POST", f"/v1/blades/{blade}/restart",
                          {"softwareVersion": software_version, "requestedBy": requested_by})

    def status(self) -> dict[str, Any]:
        return self._dict("GET", "/v1/chassis")
