"""A stand-in for the blades' management API, for tier 1 where blade pods do not run.

One aiohttp server on loopback answers for every blade under ``/b/<pod>/v1/...`` (the
operator is pointed at it with NASBLADE_ENDPOINT_OVERRIDES ``{"*": {"blade":
"http://127.0.0.1:PORT/b/{name}"}}``) and records each call as ``(blade, action, argument)``.
It implements the calls ``nasblade_operator.bladeapi`` makes: status, take over / release a
file system, run a backup, and get / put the cluster configuration (``configs``); ``backup_result`` sets what backups answer,
``heartbeat_age[blade]`` the heartbeat age a blade reports and ``active_area[blade]`` the
processor-info area it says it runs from (``portion`` unless set; ``backup`` after an area
failover). With ``copy_through`` set (the controller's API URL and the portion size) a backup
really copies its portions into the backup LU through the controller's copy engine, as a
blade does, and with ``backup_gate`` set it answers only once the test sets that event (so a
test sees the backup while it runs).
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import aiohttp
from aiohttp import web


class FakeBlades:
    def __init__(self, token: str) -> None:
        self.token = token
        self.calls: list[tuple[str, str, Any]] = []
        self.backup_result = "Succeeded"
        self.heartbeat_age: dict[str, float] = {}  # blade -> what GET /v1/status reports (default 0.1 s)
        self.copy_through: tuple[str, int] | None = None  # (controller API URL, portion size)
        self.backup_gate: threading.Event | None = None
        self.refuse_takeover: set[str] = set()  # blades whose file-system takeover answers 409
        self.serving: dict[str, list[str]] = {}  # blade -> fileSystems GET /v1/status reports (absent: not reported)
        self.active_area: dict[str, str] = {}  # blade -> what GET /v1/status reports (default portion)
        self.configs: dict[str, dict[str, Any]] = {}  # blade -> cluster configuration PUT to it
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._serve, name="fake-blades", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/b/{{name}}"

    def start(self) -> FakeBlades:
        self._thread.start()
        self._ready.wait(10)
        return self

    def stop(self) -> None:
        async def _down() -> None:
            if self._runner is not None:
                await self._runner.cleanup()
        asyncio.run_coroutine_threadsafe(_down(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def of(self, action: str) -> list[tuple[str, str, Any]]:
        return [c for c in self.calls if c[1] == action]

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_post("/b/{blade}/v1/filesystems/{fs}/{action}", self._fs)
        app.router.add_post("/b/{blade}/v1/backups", self._backup)
        app.router.add_get("/b/{blade}/v1/status", self._status)
        app.router.add_get("/b/{blade}/v1/cluster/config", self._config)
        app.router.add_put("/b/{blade}/v1/cluster/config", self._config)
        self._runner = web.AppRunner(app, access_log=None)
        self._loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        self._loop.run_until_complete(site.start())
        self.port = self._runner.addresses[0][1]
        self._ready.set()
        self._loop.run_forever()

    def _authorised(self, request: web.Request) -> bool:
        return request.headers.get("Authorization") == f"Bearer {self.token}"

    async def _fs(self, request: web.Request) -> web.Response:
        if not self._authorised(request):
            return web.json_response({"error": "unauthorized"}, status=401)
        m = request.match_info
        self.calls.append((m["blade"], m["action"], m["fs"]))
        if m["action"] == "takeover" and m["blade"] in self.refuse_takeover:
            return web.json_response({"error": f"{m['blade']} cannot mount {m['fs']}"}, status=409)
        return web.json_response({"fs": m["fs"], m["action"]: True})

    async def _status(self, request: web.Request) -> web.Response:
        if not self._authorised(request):
            return web.json_response({"error": "unauthorized"}, status=401)
        blade = request.match_info["blade"]
        body: dict[str, Any] = {"blade": blade, "heartbeatAge": self.heartbeat_age.get(blade, 0.1),
                                "activeArea": self.active_area.get(blade, "portion"), "version": "0.1.0"}
        if blade in self.serving:
            body["fileSystems"] = self.serving[blade]
        if blade in self.configs:
            body["knownFileSystems"] = sorted(f["name"] for f in self.configs[blade]["fileSystems"])
        return web.json_response(body)

    async def _config(self, request: web.Request) -> web.Response:
        """GET: the configuration last PUT (a stand-in with no file systems before that); PUT:
        kept, recorded as ``(blade, "configure", [names])``, answered as a blade does."""
        if not self._authorised(request):
            return web.json_response({"error": "unauthorized"}, status=401)
        blade = request.match_info["blade"]
        old = self.configs.get(blade, {"group": "?", "fileSystems": []})
        if request.method == "GET":
            return web.json_response(old)
        new = await request.json()
        self.configs[blade] = new
        names = sorted(f["name"] for f in new["fileSystems"])
        before = sorted(f["name"] for f in old["fileSystems"])
        self.calls.append((blade, "configure", names))
        return web.json_response({"fileSystems": names, "added": sorted(set(names) - set(before)),
                                  "removed": sorted(set(before) - set(names)), "changed": []})

    async def _backup(self, request: web.Request) -> web.Response:
        if not self._authorised(request):
            return web.json_response({"error": "unauthorized"}, status=401)
        body = await request.json()
        self.calls.append((request.match_info["blade"], "backup", body))
        if self.copy_through is not None:
            await self._copy(body["portions"], *self.copy_through)
        return web.json_response({"result": self.backup_result, "message": "copied"})

    async def _copy(self, portions: list[int], api: str, size: int) -> None:
        """Copy each portion procinfo -> backup with the controller's copy engine; wait for the gate, then the jobs."""
        headers = {"Authorization": f"Bearer {self.token}"}
        async with aiohttp.ClientSession(headers=headers) as http:
            ids = []
            for i in portions:
                job = {"source": "procinfo", "sourceOffset": i * size, "target": "backup", "targetOffset": i * size,
                       "length": size, "rateLimit": 0}
                async with http.post(f"{api}/v1/copy-jobs", json=job) as r:
                    ids.append((await r.json())["id"])
            while self.backup_gate is not None and not self.backup_gate.is_set():
                await asyncio.sleep(0.05)
            for job_id in ids:
                while True:
                    async with http.get(f"{api}/v1/copy-jobs/{job_id}") as r:
                        if (await r.json())["state"] != "running":
                            break
                    await asyncio.sleep(0.05)
