"""A synchronous Python client for the controller's control API (docs/control-api.md).

Used by the block processor, the cluster member (both through the typed asyncio face
``nasblade.controller.asyncclient``), the standalone array and the management terminal. On the
blade side's one HTTP client base (``nasblade.bladeapi.http.JSONClient``); one method per
endpoint, returning the decoded JSON (``None`` for ``204``). Any non-2xx reply raises
``ControlAPIError`` carrying the status and the JSON error body.
"""

from __future__ import annotations

import base64
import ssl
import time
from collections.abc import Iterable, Sequence
from typing import Any
from urllib.parse import quote

from nasblade.bladeapi.http import JSONClient

#: The ``"reason"`` of the controller's ``409`` for an LU the devices have no room for
#: (``api.NO_SPACE``; the API's server side is not imported by its clients).
NO_SPACE = "NoSpace"


class ControlAPIError(Exception):
    """A non-2xx reply: ``status``, the JSON error ``body``, its ``message`` and its
    machine-readable ``reason`` (``""`` when it has none). A controller from before the reason
    answered no space with ``507``: that reads as ``reason`` ``NoSpace`` too (a rolling
    upgrade), so ``no_space`` is the one test for it -- never ``status`` alone, since ``409``
    also means "exists", "busy" and the like."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        self.status = status
        self.body = body
        self.message = str(body.get("error", ""))
        reason = body.get("reason")
        self.reason = NO_SPACE if status == 507 else reason if isinstance(reason, str) else ""
        super().__init__(f"HTTP {status}: {self.message}")

    @property
    def no_space(self) -> bool:
        """The controller refused an LU (created or grown) for want of room on the devices."""
        return self.reason == NO_SPACE


class ControlClient(JSONClient):
    def __init__(self, url: str, token: str, *, timeout: float = 30.0,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        super().__init__(url=url, token=token, timeout=timeout, ssl_context=ssl_context)

    def error(self, status: int, body: dict[str, Any]) -> Exception:
        return ControlAPIError(status, body)

    @staticmethod
    def _p(name: str) -> str:
        return quote(name, safe="")

    # --- array and LUs -------------------------------------------------------------------------

    def array(self) -> dict[str, Any]:
        return self.request("GET", "/v1/array")  # type: ignore[no-any-return]

    def openapi(self) -> dict[str, Any]:
        return self.request("GET", "/v1/openapi.json")  # type: ignore[no-any-return]

    def list_lus(self) -> list[dict[str, Any]]:
        return self.request("GET", "/v1/lus")["lus"]  # type: ignore[no-any-return]

    def create_lu(self, name: str, size: int, *, read_only: bool = False) -> dict[str, Any]:
        return self.request("POST", "/v1/lus", {"name": name, "size": size, "readOnly": read_only})  # type: ignore[no-any-return]

    def get_lu(self, name: str) -> dict[str, Any]:
        return self.request("GET", f"/v1/lus/{self._p(name)}")  # type: ignore[no-any-return]

    def update_lu(self, name: str, *, size: int | None = None, read_only: bool | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {}
        if size is not None:
            body["size"] = size
        if read_only is not None:
            body["readOnly"] = read_only
        return self.request("PATCH", f"/v1/lus/{self._p(name)}", body)  # type: ignore[no-any-return]

    def delete_lu(self, name: str) -> None:
        self.request("DELETE", f"/v1/lus/{self._p(name)}")

    # --- reservations ---------------------------------------------------------------------------

    def reserve(self, lu: str, holder: str, *, epoch: int | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"holder": holder}
        if epoch is not None:
            body["epoch"] = epoch
        return self.request("POST", f"/v1/lus/{self._p(lu)}/reservation", body)  # type: ignore[no-any-return]

    def get_reservation(self, lu: str) -> dict[str, Any]:
        return self.request("GET", f"/v1/lus/{self._p(lu)}/reservation")  # type: ignore[no-any-return]

    def release(self, lu: str) -> None:
        self.request("DELETE", f"/v1/lus/{self._p(lu)}/reservation")

    def compare_and_write(self, lu: str, *, compare_offset: int, compare_length: int, expect_sha256: str,
                          write_offset: int, data: bytes) -> dict[str, Any]:
        """Atomic compare-and-write; ``ControlAPIError`` 409 (body ``current``, base64) when
        the compared range no longer hashes to ``expect_sha256``."""
        body = {"compareOffset": compare_offset, "compareLength": compare_length, "expectSha256": expect_sha256,
                "writeOffset": write_offset, "data": base64.b64encode(data).decode()}
        return self.request("POST", f"/v1/lus/{self._p(lu)}/compare-and-write", body)  # type: ignore[no-any-return]

    # --- clients ----------------------------------------------------------------------------------

    def list_clients(self) -> list[dict[str, Any]]:
        return self.request("GET", "/v1/clients")["clients"]  # type: ignore[no-any-return]

    def get_client(self, name: str) -> dict[str, Any]:
        return self.request("GET", f"/v1/clients/{self._p(name)}")  # type: ignore[no-any-return]

    def register_client(self, name: str, *, group: str | None = None, role: str | None = None,
                        address: str | None = None, attrs: dict[str, Any] | None = None) -> dict[str, Any]:
        body = {"name": name, "group": group, "role": role, "address": address, "attrs": attrs or {}}
        return self.request("POST", "/v1/clients", body)  # type: ignore[no-any-return]

    def unregister_client(self, name: str) -> None:
        self.request("DELETE", f"/v1/clients/{self._p(name)}")

    # --- cache and load ---------------------------------------------------------------------------

    def cache(self) -> dict[str, Any]:
        return self.request("GET", "/v1/cache")  # type: ignore[no-any-return]

    def cache_directory(self, lu: str) -> dict[str, Any]:
        return self.request("GET", "/v1/cache/directory", query={"lu": lu})  # type: ignore[no-any-return]

    def add_cache_records(self, client: str, lu: str, ranges: Iterable[Sequence[int]], *,
                          state: str = "dirty") -> dict[str, Any]:
        body = {"client": client, "lu": lu, "ranges": [[int(o), int(n)] for o, n in ranges], "state": state}
        return self.request("POST", "/v1/cache/records", body)  # type: ignore[no-any-return]

    def clear_cache_records(self, client: str, *, lu: str | None = None) -> None:
        query = {"client": client}
        if lu is not None:
            query["lu"] = lu
        self.request("DELETE", "/v1/cache/records", query=query)

    def cache_hold(self) -> dict[str, Any]:
        """``{"hold": bool, "dirtyBytes": int}``: whether background destaging is held."""
        return self.request("GET", "/v1/cache/hold")  # type: ignore[no-any-return]

    def hold_destage(self, hold: bool = True) -> dict[str, Any]:
        """Hold (or with ``False`` release) background destaging; needs the admin token."""
        return self.request("POST", "/v1/cache/hold", {"hold": hold})  # type: ignore[no-any-return]

    def load(self) -> dict[str, Any]:
        return self.request("GET", "/v1/load")  # type: ignore[no-any-return]

    # --- copy jobs -------------------------------------------------------------------------------

    def create_copy_job(self, source: str, target: str, length: int, *, source_offset: int = 0,
                        target_offset: int = 0, rate_limit: int = 0) -> dict[str, Any]:
        body = {"source": source, "sourceOffset": source_offset, "target": target,
                "targetOffset": target_offset, "length": length, "rateLimit": rate_limit}
        return self.request("POST", "/v1/copy-jobs", body)  # type: ignore[no-any-return]

    def list_copy_jobs(self) -> list[dict[str, Any]]:
        return self.request("GET", "/v1/copy-jobs")["jobs"]  # type: ignore[no-any-return]

    def get_copy_job(self, job_id: str) -> dict[str, Any]:
        return self.request("GET", f"/v1/copy-jobs/{self._p(job_id)}")  # type: ignore[no-any-return]

    def cancel_copy_job(self, job_id: str) -> dict[str, Any]:
        return self.request("DELETE", f"/v1/copy-jobs/{self._p(job_id)}")  # type: ignore[no-any-return]

    def wait_copy_job(self, job_id: str, *, timeout: float = 60.0, interval: float = 0.05) -> dict[str, Any]:
        """Poll until the job leaves ``running``; raise ``TimeoutError`` after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.get_copy_job(job_id)
            if job["state"] != "running":
                return job
            if time.monotonic() > deadline:
                raise TimeoutError(f"copy job {job_id} still running after {timeout}s")
            time.sleep(interval)

    # --- faults (admin token) ---------------------------------------------------------------------

    def add_fault(self, lu: str, offset: int, length: int, *,
                  ops: Sequence[str] = ("read", "write")) -> dict[str, Any]:
        body = {"lu": lu, "offset": offset, "length": length, "ops": list(ops)}
        return self.request("POST", "/v1/faults", body)  # type: ignore[no-any-return]

    def list_faults(self) -> list[dict[str, Any]]:
        return self.request("GET", "/v1/faults")["faults"]  # type: ignore[no-any-return]

    def clear_faults(self) -> None:
        self.request("DELETE", "/v1/faults")

    def delete_fault(self, fault_id: str) -> None:
        self.request("DELETE", f"/v1/faults/{self._p(fault_id)}")
