"""The control API: authentication, JSON errors, LUs, clients, cache records, load, faults."""

from __future__ import annotations

import asyncio
import errno
import http.client
import itertools
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
from aiohttp import web
from ctlharness import ADMIN, TOKEN, Controller
from nasblade.controller import api, apiclient, metrics
from nasblade.controller.apiclient import ControlAPIError, ControlClient
from nasblade.nbd.client import NBDBlockDevice
from nasblade_csi.array import Array
from nasblade_csi.errors import ArrayError
from nasblade_operator import arrayapi, sessions

pytestmark = pytest.mark.component


def raw(controller: Controller, method: str, path: str, body: bytes | None = None,
        token: str | None = TOKEN) -> tuple[int, object]:
    u = urlparse(controller.api)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    conn.request(method, path, body=body, headers=headers)
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    if resp.headers.get_content_type() != "application/json":
        return resp.status, data.decode()  # the Prometheus text of /v1/metrics
    return resp.status, json.loads(data) if data else None


@pytest.mark.parametrize(("method", "path"), [("GET", "/v1/lus"), ("GET", "/v1/array"), ("POST", "/v1/lus"),
                                              ("GET", "/v1/openapi.json"), ("DELETE", "/v1/faults")])
def test_no_or_wrong_token_is_401(shared_controller: Controller, method: str, path: str) -> None:
    controller = shared_controller
    for token in (None, "wrong"):
        status, body = raw(controller, method, path, b"{}", token=token)
        assert status == 401 and isinstance(body, dict) and body["error"] == "unauthorized"


@pytest.mark.parametrize(("method", "path", "body", "status"), [
    ("POST", "/v1/lus", b"{not json", 400),
    ("POST", "/v1/lus", b"[1, 2]", 400),
    ("POST", "/v1/lus", b'{"name": "x"}', 400),
    ("POST", "/v1/lus", b'{"name": "x", "size": "big"}', 400),
    ("POST", "/v1/lus", b'{"name": "x", "size": -5}', 400),
    ("POST", "/v1/lus", b'{"name": "bad/name", "size": 4096}', 400),
    ("POST", "/v1/lus", b'{"name": "huge", "size": 1099511627776}', 409),  # no space: a refusal, not a 5xx
    ("GET", "/v1/lus/nope", None, 404),
    ("PATCH", "/v1/lus/nope", b'{"size": 1}', 404),
    ("DELETE", "/v1/lus/nope", None, 404),
    ("POST", "/v1/lus/nope/reservation", b'{"holder": "a"}', 404),
    ("GET", "/v1/cache/directory?lu=nope", None, 404),
    ("GET", "/v1/cache/directory", None, 400),
    ("POST", "/v1/cache/records", b'{"client": "c", "lu": "nope", "ranges": []}', 404),
    ("GET", "/v1/copy-jobs/nope", None, 404),
    ("POST", "/v1/copy-jobs", b'{"source": "nope", "target": "nope", "length": 1}', 404),
    ("GET", "/v1/clients/nope", None, 404),
    ("GET", "/v1/no-such-thing", None, 404),
])
def test_errors_are_json_4xx(shared_controller: Controller, method: str, path: str, body: bytes | None,
                             status: int) -> None:
    controller = shared_controller
    got, reply = raw(controller, method, path, body)
    assert got == status
    assert isinstance(reply, dict) and isinstance(reply["error"], str)


def test_no_space_is_a_409_with_a_reason_the_clients_read(shared_controller: Controller) -> None:
    """An LU created or grown beyond the devices is a refusal the caller can act on, not a
    server failure: ``409 {"error": "no space: …", "reason": "NoSpace"}``. Every client of the
    control API reads it by the reason, and none takes it for the other 409s (an LU that
    exists, a busy one): the Python client (``no_space``), the operator (``ensure_lus`` must
    not fetch the LU as if it had been "created meanwhile"), the CSI driver (``nospace``:
    RESOURCE_EXHAUSTED, not ``busy`` nor "it exists")."""
    c = shared_controller
    for method, path, body in (("POST", "/v1/lus", {"name": "huge", "size": 1 << 40}),
                               ("PATCH", "/v1/lus/shared", {"size": 1 << 40})):
        status, reply = raw(c, method, path, json.dumps(body).encode())
        assert status == 409 and isinstance(reply, dict), (status, reply)
        assert reply["reason"] == "NoSpace" and reply["error"].startswith("no space: "), reply
    status, reply = raw(c, "POST", "/v1/lus", json.dumps({"name": "shared", "size": 4096}).encode())
    assert status == 409 and isinstance(reply, dict) and "reason" not in reply, reply  # exists: no reason
    assert "huge" not in {lu["name"] for lu in c.client.list_lus()}
    assert c.client.get_lu("shared")["size"] == 64 << 20

    with pytest.raises(ControlAPIError) as refused:
        c.client.create_lu("huge", 1 << 40)
    assert refused.value.no_space and refused.value.reason == "NoSpace"
    with pytest.raises(ControlAPIError) as refused:
        c.client.create_lu("shared", 4096)
    assert refused.value.status == 409 and not refused.value.no_space and refused.value.reason == ""

    array = Array(c.client, c.nbd)
    for call in (lambda: array.create_lu("huge", 1 << 40), lambda: array.grow("shared", 1 << 40)):
        with pytest.raises(ArrayError) as failed:
            call()
        assert failed.value.kind == "nospace", failed.value

    async def operator() -> None:
        http = sessions.Sessions()
        try:
            for wanted in ({"huge": 1 << 40}, {"shared": 1 << 40}):
                with pytest.raises(arrayapi.ArrayRefused) as refused:
                    await arrayapi.ArrayAPI(http, c.api, token=TOKEN).ensure_lus(wanted)
                assert refused.value.status == 409 and refused.value.no_space, refused.value
                assert refused.value.reason == "NoSpace" and "no space" in str(refused.value)
            ensured = await arrayapi.ArrayAPI(http, c.api, token=TOKEN).ensure_lus({"shared": 4096})
            assert ensured.changed == [] and ensured.lus["shared"].size == 64 << 20
        finally:
            await http.close()

    asyncio.run(operator())


def test_an_older_controllers_507_still_reads_as_no_space() -> None:
    """During a rolling upgrade a controller from before the reason answers no space with
    ``507``: the clients take it for no space too (and the server's, the Python client's and
    the operator's names for the reason agree)."""
    assert api.NO_SPACE == apiclient.NO_SPACE == arrayapi.NO_SPACE == "NoSpace"
    assert ControlAPIError(507, {"error": "no space: 1 more bytes needed"}).no_space
    assert ControlAPIError(409, {"error": "no space: x", "reason": "NoSpace"}).no_space
    for other in (ControlAPIError(409, {"error": "already exists: x"}), ControlAPIError(409, {"reason": 7}),
                  ControlAPIError(503, {"error": "I/O error"})):
        assert not other.no_space and other.reason == ""

    async def old_controller(request: web.Request) -> web.Response:
        if request.method == "GET":
            return web.json_response({"lus": []})
        return web.json_response({"error": "no space: 1 more bytes needed, no free extent left"}, status=507)

    async def operator() -> None:
        app = web.Application()
        app.router.add_route("*", "/v1/lus", old_controller)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        http = sessions.Sessions()
        try:
            with pytest.raises(arrayapi.ArrayRefused) as refused:
                await arrayapi.ArrayAPI(http, f"http://127.0.0.1:{port}", token=TOKEN).ensure_lus({"huge": 1 << 40})
            assert refused.value.status == 507 and refused.value.no_space, refused.value
        finally:
            await http.close()
            await runner.cleanup()

    asyncio.run(operator())
    new: Any = arrayapi.ArrayRefused.from_reply(409, {"error": "no space: x", "reason": "NoSpace"}, "POST /lus")
    assert new.no_space and str(new) == "POST /lus: HTTP 409 no space: x"
    for data in ({"error": "already exists: x"}, ["not", "an", "object"], None, {"reason": 7}):
        assert not arrayapi.ArrayRefused.from_reply(409, data, "POST /lus").no_space


def test_faults_need_the_admin_token(controller: Controller, lu: str) -> None:
    status, body = raw(controller, "POST", "/v1/faults", json.dumps({"lu": lu}).encode())
    assert status == 403 and body == {"error": "admin token required"}
    status, _ = raw(controller, "GET", "/v1/faults", token=ADMIN)
    assert status == 200


def test_fault_injection_is_off_unless_the_controller_is_started_with_it(
        controller_factory: Callable[..., Controller]) -> None:
    """Without ``--faults`` (the operator's default: DiskArray ``spec.faultInjection`` false) the
    admin token injects nothing; the other admin routes stay open to it."""
    controller = controller_factory(faults=False)
    controller.client.create_lu("victim", 1 << 20)
    for method, path, body in (("POST", "/v1/faults", json.dumps({"lu": "victim"}).encode()),
                               ("GET", "/v1/faults", None)):
        status, reply = raw(controller, method, path, body, token=ADMIN)
        assert status == 403 and "fault injection is off" in reply["error"], reply
    assert raw(controller, "GET", "/v1/cache/hold", token=ADMIN)[0] == 200
    assert "fault injection is ON" not in controller.log()


def test_the_metrics_token_reads_the_metrics_and_nothing_else(
        controller_factory: Callable[..., Controller], tmp_path: Path) -> None:
    """The read-only credential a scraper gets (the ``metrics-token`` key of the array's token
    Secret): ``GET /v1/metrics``, and 403 for every other route, reads included."""
    (tmp_path / "metrics-token").write_text("metrics-token-for-tests\n")
    controller = controller_factory(extra=["--metrics-token-file", str(tmp_path / "metrics-token")])
    controller.client.create_lu("seen", 1 << 20)
    status, text = raw(controller, "GET", "/v1/metrics", token="metrics-token-for-tests")
    assert status == 200 and 'nasblade_controller_lu_size_bytes{lu="seen"}' in str(text)
    for method, path, body in (("GET", "/v1/lus", None), ("GET", "/v1/array", None),
                               ("POST", "/v1/lus", json.dumps({"name": "x", "size": 4096}).encode()),
                               ("DELETE", "/v1/lus/seen", None)):
        status, reply = raw(controller, method, path, body, token="metrics-token-for-tests")
        assert status == 403 and reply == {"error": "the metrics token reads GET /v1/metrics only"}, (path, reply)
    assert raw(controller, "GET", "/v1/metrics", token="not-the-metrics-token")[0] == 401
    assert [lu["name"] for lu in controller.client.list_lus()] == ["seen"]
    assert raw(controller, "GET", "/v1/metrics", token=TOKEN)[0] == 200  # the user token reads them too


def test_a_missing_admin_token_file_leaves_the_admin_routes_closed(
        controller_factory: Callable[..., Controller], tmp_path: Path) -> None:
    """An array whose token Secret has no admin key (made by an older operator): the controller
    starts, serves the data path, and refuses every admin route to every token."""
    controller = controller_factory(extra=["--admin-token-file", str(tmp_path / "no-such-file")])
    assert isinstance(controller.client.array(), dict)  # the data path answers
    status, body = raw(controller, "GET", "/v1/faults", token=TOKEN)
    assert status == 403 and body == {"error": "admin token required"}
    assert raw(controller, "GET", "/v1/faults", token=ADMIN)[0] == 401  # no such token here
    assert "no admin token" in controller.log()


def test_lu_lifecycle_and_array(controller: Controller) -> None:
    cl = controller.client
    before = cl.array()
    lu = cl.create_lu("life", 10 << 20)
    assert lu["size"] == 10 << 20 and lu["reservation"] is None and lu["devices"] == [0, 1]
    with pytest.raises(ControlAPIError) as exc:
        cl.create_lu("life", 1 << 20)
    assert exc.value.status == 409
    assert cl.update_lu("life", size=30 << 20)["size"] == 30 << 20
    with pytest.raises(ControlAPIError) as exc:
        cl.update_lu("life", size=1 << 20)
    assert exc.value.status == 409
    assert cl.update_lu("life", read_only=True)["readOnly"] is True
    assert cl.array()["free"] < before["free"]
    cl.delete_lu("life")
    assert cl.array()["free"] == before["free"]
    assert cl.list_lus() == []


def test_lu_extents_say_where_the_lu_lives(controller: Controller) -> None:
    """``extents``: one run per device and segment, inside the devices, never shared, summing to
    ``allocated``; the first stripe unit of the LU is at the first extent (read from the device file)."""
    cl = controller.client
    cl.create_lu("ext", 4 << 20)
    cl.create_lu("other", 6 << 20)
    lu = cl.update_lu("ext", size=12 << 20)  # a second segment
    assert len({e["segment"] for e in lu["extents"]}) == 2
    assert sum(e["length"] for e in lu["extents"]) == lu["allocated"] >= lu["size"]
    assert lu["devices"] == sorted({e["device"] for e in lu["extents"]})
    devices = {d["index"]: d for d in cl.array()["devices"]}
    runs: dict[int, list[tuple[int, int]]] = {}
    for listed in cl.list_lus():
        assert listed["extents"] == cl.get_lu(listed["name"])["extents"]
        for e in listed["extents"]:
            assert e["offset"] > 0 and e["offset"] + e["length"] <= devices[e["device"]]["size"]
            runs.setdefault(e["device"], []).append((e["offset"], e["offset"] + e["length"]))
    for spans in runs.values():
        spans.sort()
        assert all(a_end <= b_start for (_, a_end), (b_start, _) in itertools.pairwise(spans))
    first = lu["extents"][0]
    with NBDBlockDevice.connect(controller.url("ext")) as d:
        d.pwrite(0, b"EXTENT00" * 512, fua=True)
    with open(devices[first["device"]]["path"], "rb") as f:
        f.seek(first["offset"])
        assert f.read(4096) == b"EXTENT00" * 512
    schema = controller.client.openapi()["components"]["schemas"]
    assert "extents" in schema["LU"]["required"] and schema["Extent"]["properties"].keys() >= {"device", "offset", "length"}


def test_grown_lu_keeps_data_and_new_space_reads_zero(controller: Controller) -> None:
    cl = controller.client
    cl.create_lu("g", 4 << 20)
    with NBDBlockDevice.connect(controller.url("g")) as d:
        d.pwrite(0, b"keep" * 1024, fua=True)
    cl.update_lu("g", size=12 << 20)
    with NBDBlockDevice.connect(controller.url("g")) as d:
        assert d.size == 12 << 20
        assert d.pread(0, 4096) == b"keep" * 1024
        assert d.pread(8 << 20, 4096) == bytes(4096)


def test_clients_registry(controller: Controller) -> None:
    cl = controller.client
    rec = cl.register_client("blade-a", group="g1", role="blade", address="127.0.0.2", attrs={"k": 1})
    assert rec["name"] == "blade-a" and rec["group"] == "g1" and rec["registered"]
    cl.register_client("blade-b", group="g2")
    assert sorted(c["name"] for c in cl.list_clients()) == ["blade-a", "blade-b"]
    assert cl.get_client("blade-a")["attrs"] == {"k": 1}
    cl.unregister_client("blade-a")
    assert [c["name"] for c in cl.list_clients()] == ["blade-b"]


def test_cache_directory_records_and_destage(controller: Controller, lu: str) -> None:
    cl = controller.client
    with NBDBlockDevice.connect(controller.url(lu)) as d:
        d.pwrite(65536, b"c" * 8192)
        assert d.pread(65536, 8192) == b"c" * 8192
        rec = cl.add_cache_records("blade-a", lu, [[65536, 8192]])
        assert rec["state"] == "dirty" and rec["ranges"] == [[65536, 8192]]
        directory = cl.cache_directory(lu)
        assert {"offset": 65536, "length": 8192, "state": "dirty"} in directory["ranges"] or \
            directory["records"] == []  # the destager may already have run
        d.flush()
    after = cl.cache_directory(lu)
    assert after["records"] == []  # cleared once destaged
    assert all(r["state"] == "clean" for r in after["ranges"])
    cl.add_cache_records("blade-a", lu, [[0, 4096]], state="clean")
    assert len(cl.cache_directory(lu)["records"]) == 1
    cl.clear_cache_records("blade-a")
    assert cl.cache_directory(lu)["records"] == []
    cache = cl.cache()
    assert cache["size"] == 64 << 20 and cache["dirtyBytes"] == 0 and cache["hits"] + cache["misses"] > 0


def test_load_figures(controller: Controller, lu: str) -> None:
    with NBDBlockDevice.connect(controller.url(lu)) as d:
        for i in range(200):
            d.pwrite(i * 4096, b"l" * 4096)
            d.pread(i * 4096, 4096)
    time.sleep(1.1)
    load = controller.client.load()
    assert set(load) >= {"iops", "readIops", "writeIops", "mbps", "queueDepth", "dirtyRatio", "windowSeconds"}
    assert load["readIops"] > 0 and load["writeIops"] > 0 and load["mbps"]["write"] > 0


def test_fault_injection(controller: Controller, lu: str) -> None:
    admin = controller.admin
    with NBDBlockDevice.connect(controller.url(lu)) as d:
        d.pwrite(0, b"f" * 65536)
        fault = admin.add_fault(lu, 8192, 4096, ops=["read"])
        assert admin.list_faults() == [fault]
        with pytest.raises(OSError) as exc:
            d.pread(0, 65536)
        assert exc.value.errno == errno.EIO
        assert d.pread(0, 8192) == b"f" * 8192  # outside the range
        d.pwrite(8192, b"w" * 4096)  # writes are not affected by a read fault
        admin.add_fault(lu, 1 << 20, 4096, ops=["write"])
        with pytest.raises(OSError) as exc:
            d.pwrite(1 << 20, b"x" * 512)
        assert exc.value.errno == errno.EIO
        admin.delete_fault(fault["id"])
        assert d.pread(8192, 4096) == b"w" * 4096
        admin.clear_faults()
        d.pwrite(1 << 20, b"x" * 512)
        assert admin.list_faults() == []


def test_openapi_document(controller: Controller) -> None:
    doc = controller.client.openapi()
    assert doc["openapi"].startswith("3.")
    for path in ("/v1/lus", "/v1/lus/{name}/reservation", "/v1/cache/directory", "/v1/copy-jobs/{id}", "/v1/faults"):
        assert path in doc["paths"]
    # no space is a declared 409 of create and grow (the Error schema's optional reason), no 5xx
    assert "409" in doc["paths"]["/v1/lus"]["post"]["responses"]
    assert "409" in doc["paths"]["/v1/lus/{name}"]["patch"]["responses"]
    assert doc["components"]["schemas"]["Error"]["properties"]["reason"]["type"] == "string"
    assert doc["components"]["schemas"]["Error"]["required"] == ["error"]
    server_errors = {(p, m, s) for p, ops in doc["paths"].items() for m, op in ops.items()
                     for s in op["responses"] if s.startswith("5")}
    assert server_errors == {("/v1/lus/{name}/compare-and-write", "post", "503")}
    assert ControlClient(controller.api, "bad").request  # constructible without contact


def test_metrics_count_each_lus_io_and_show_the_devices(controller: Controller) -> None:
    """``GET /v1/metrics`` (Prometheus text, the user token): per-LU I/O counters that grow with
    what a client did, the cache, and each device's state; no token, no metrics."""
    cl = controller.client
    cl.create_lu("met", 8 << 20)
    with NBDBlockDevice.connect(controller.url("met")) as dev:
        for i in range(3):
            dev.pwrite(i * 65536, b"m" * 65536)
        dev.flush()
        assert dev.pread(0, 4096) == b"m" * 4096
    u = urlparse(controller.api)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
    conn.request("GET", "/v1/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    resp = conn.getresponse()
    text = resp.read().decode()
    conn.close()
    assert resp.status == 200 and resp.getheader("Content-Type", "").startswith("text/plain"), text
    samples = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
               for line in text.splitlines() if line and not line.startswith("#")}
    assert samples['nasblade_controller_lu_written_bytes_total{lu="met"}'] == 3 * 65536
    assert samples['nasblade_controller_lu_writes_total{lu="met"}'] == 3
    assert samples['nasblade_controller_lu_read_bytes_total{lu="met"}'] >= 4096
    assert samples['nasblade_controller_lu_size_bytes{lu="met"}'] == 8 << 20
    assert samples['nasblade_controller_device_state{device="0",state="ok"}'] == 1.0
    assert samples['nasblade_controller_device_errors_total{device="1",kind="read"}'] == 0.0
    assert "nasblade_controller_cache_dirty_bytes" in samples
    # how long each request took, per LU and command: every request counted once
    hist = 'nasblade_controller_request_seconds_{}{{lu="met",op="{}"}}'
    assert samples[hist.format("count", "write")] == 3 and samples[hist.format("count", "flush")] == 1
    assert samples[hist.format("count", "read")] >= 1 and samples[hist.format("sum", "write")] > 0
    assert samples['nasblade_controller_request_seconds_bucket{le="+Inf",lu="met",op="write"}'] == 3
    # capacity: devices, and what LUs can still get (this LU's 8 MiB are taken)
    assert samples['nasblade_controller_device_size_bytes{device="0"}'] > 0
    capacity, free = samples["nasblade_controller_array_capacity_bytes"], samples["nasblade_controller_array_free_bytes"]
    assert capacity - free >= 8 << 20 and free > 0
    # a copy job, counted by state once it ended
    cl.create_lu("met-copy", 8 << 20)
    job = cl.create_copy_job("met", "met-copy", 1 << 20)
    assert cl.wait_copy_job(job["id"])["state"] == "succeeded"
    status, body = raw(controller, "GET", "/v1/metrics")
    assert status == 200 and isinstance(body, str) and 'nasblade_controller_copy_jobs{state="succeeded"} 1.0' in body, body
    # the families are the ones the module declares (the chart's alerts are checked against them)
    types = dict(line.split()[2:4] for line in body.splitlines() if line.startswith("# TYPE "))
    assert {n.removesuffix("_total") if k == "counter" else n: k for n, k in types.items()} == metrics.FAMILIES
    assert raw(controller, "GET", "/v1/metrics", token=None)[0] == 401
