"""Holding the background destager (``POST /v1/cache/hold``) never weakens durability.

While held, cached writes stay dirty; an NBD FLUSH still destages and fsyncs everything and a
FUA write is still on the devices before its reply (checked with ``kill -9`` + restart).
Releasing the hold lets the destager drain the cache. The API needs the admin token.
"""

from __future__ import annotations

import os
import time

import pytest
from ctlharness import Controller
from nasblade.controller.apiclient import ControlAPIError, ControlClient
from nasblade.nbd.client import NBDBlockDevice

pytestmark = pytest.mark.component

#: several destager intervals (0.2 s): long enough that an unheld destager would have run
HELD_FOR = 0.8


def test_flush_and_fua_while_held_are_durable(controller: Controller) -> None:
    controller.client.create_lu("h", 16 << 20)
    assert controller.admin.hold_destage(True)["hold"] is True
    cached = [os.urandom(4096) for _ in range(16)]
    with NBDBlockDevice.connect(controller.url("h")) as dev:
        for i, data in enumerate(cached):
            dev.pwrite(i * 65536, data)
        time.sleep(HELD_FOR)
        # held: nothing was written back behind the client's back
        assert controller.client.cache()["dirtyBytes"] == 16 * 4096
        assert controller.client.cache()["destageHeld"] is True
        dev.flush()
        # the FLUSH destaged although the destager is still held
        assert controller.client.cache_hold() == {"hold": True, "dirtyBytes": 0}
    controller.kill()
    controller.restart()
    assert controller.client.cache_hold()["hold"] is False  # the hold is not persisted
    controller.admin.hold_destage(True)
    fua = os.urandom(8192)
    with NBDBlockDevice.connect(controller.url("h")) as dev:
        for i, data in enumerate(cached):
            assert dev.pread(i * 65536, 4096) == data
        dev.pwrite(8 << 20, os.urandom(4096))  # cached and held: may be lost by the kill
        dev.pwrite(4 << 20, fua, fua=True)
        assert controller.client.cache()["dirtyBytes"] == 4096
    controller.kill()
    controller.restart()
    with NBDBlockDevice.connect(controller.url("h")) as dev:
        assert dev.pread(4 << 20, 8192) == fua


def test_release_lets_the_destager_drain(controller: Controller) -> None:
    controller.client.create_lu("r", 16 << 20)
    controller.admin.hold_destage(True)
    with NBDBlockDevice.connect(controller.url("r")) as dev:
        dev.pwrite(0, b"r" * 65536)
    time.sleep(HELD_FOR)
    assert controller.client.cache_directory("r")["ranges"] == [
        {"offset": 0, "length": 65536, "state": "dirty"}]
    assert controller.admin.hold_destage(False)["hold"] is False
    deadline = time.monotonic() + 10  # the destager runs every 0.2 s
    while controller.client.cache()["dirtyBytes"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert controller.client.cache()["dirtyBytes"] == 0
    assert all(r["state"] == "clean" for r in controller.client.cache_directory("r")["ranges"])


@pytest.mark.parametrize(
    ("who", "body", "status"),
    [("user", {"hold": True}, 403), ("nobody", {"hold": True}, 401),
     ("admin", {"hold": 1}, 400), ("admin", {}, 400), ("admin", {"hold": "yes"}, 400)],
)
def test_hold_needs_the_admin_token_and_a_boolean(
    shared_controller: Controller, who: str, body: dict[str, object], status: int
) -> None:
    c = shared_controller
    client = {"user": c.client, "admin": c.admin, "nobody": ControlClient(c.api, "wrong")}[who]
    with pytest.raises(ControlAPIError) as err:
        client.request("POST", "/v1/cache/hold", body)
    assert err.value.status == status
    assert "error" in err.value.body
    assert c.client.cache_hold()["hold"] is False  # reading needs only the user token
    paths = c.client.openapi()["paths"]
    assert set(paths["/v1/cache/hold"]) == {"get", "post"}
