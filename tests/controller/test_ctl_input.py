"""Input handling of the control API (issue 16): bounded bodies, the LU name rule, explicit
not-found errors and a 500 (with a logged traceback) for a handler's own bug.

The first tests hit a real controller (``shared_controller``); the last ones build the aiohttp
application in-process around a stand-in engine, to make a handler fail the way a bug would.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any
from urllib.parse import quote

import pytest
from aiohttp.test_utils import TestClient, TestServer
from ctlharness import ADMIN, TOKEN, Controller
from nasblade import httpjson
from nasblade.controller import api, luname
from test_ctl_api import raw


@pytest.mark.component
@pytest.mark.parametrize(("body", "status"), [
    (b'{"name": "deep", "size": 4096, "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", 400),
    (b'{"name": "deep", "size": 4096, "x": ' + b'{"a": ' * 5000 + b"1" + b"}" * 5000 + b"}", 400),
    (b'{"name": "big", "size": 4096, "pad": "' + b"x" * (2 << 20) + b'"}', 413),
    (b'{"name": "bad utf8 \xff", "size": 4096}', 400),
    (b"", 400),
], ids=["nested-arrays", "nested-objects", "too-large", "not-utf8", "empty"])
def test_bodies_are_bounded(shared_controller: Controller, body: bytes, status: int) -> None:
    got, reply = raw(shared_controller, "POST", "/v1/lus", body)
    assert got == status
    assert isinstance(reply, dict) and reply["error"]
    got, _ = raw(shared_controller, "GET", "/v1/lus/deep")
    assert got == 404


BAD_NAMES = [".", "..", "-", "", "a/b", "../procinfo", "a\nb", "a\x00b", "a\tb", " a", "a b", "x" * 65,
             "-rf", ".hidden", "lu;holder=x", "é"]


@pytest.mark.component
@pytest.mark.parametrize("name", BAD_NAMES, ids=[repr(n) for n in BAD_NAMES])
def test_bad_lu_names_are_refused_with_the_rule(shared_controller: Controller, name: str) -> None:
    got, reply = raw(shared_controller, "POST", "/v1/lus", json.dumps({"name": name, "size": 4096}).encode())
    assert got == 400
    assert isinstance(reply, dict) and reply["field"] == "name" and luname.RULE in reply["error"]
    if name:
        got, reply = raw(shared_controller, "GET", f"/v1/lus/{quote(name, safe='')}")
        assert got == 400 and isinstance(reply, dict) and luname.RULE in reply["error"]


@pytest.mark.component
def test_dot_dot_is_not_served(shared_controller: Controller) -> None:
    for path in ("/v1/lus/%2e%2e", "/v1/lus/%2e", "/v1/lus/-", "/v1/lus/%2e%2e/reservation"):
        got, _ = raw(shared_controller, "GET", path)
        assert got == 400, path


@pytest.mark.component
def test_names_the_product_makes_stay_valid(controller: Controller) -> None:
    for name in ("program", "procinfo", "backup", "fs-fs1", "fs-a-b-9", "lu12345", "A.b_c-1", "x" * 64):
        assert luname.check(name) == name
        controller.client.create_lu(name, 1 << 20)
        assert controller.client.get_lu(name)["name"] == name


@pytest.mark.parametrize("name", [*BAD_NAMES, None, 5])
def test_luname_check_refuses(name: Any) -> None:
    with pytest.raises(ValueError, match="LU name"):
        luname.check(name)


def test_httpjson_depth_skips_strings() -> None:
    assert httpjson.depth(b'{"a": "[[[[{{{{\\"[[", "b": [[1]]}') == 3
    assert httpjson.parse(b'{"a": "' + b"[" * 1000 + b'"}') == {"a": "[" * 1000}
    with pytest.raises(httpjson.BodyError) as err:
        httpjson.parse(b"[" * 33 + b"]" * 33)
    assert err.value.status == 400
    with pytest.raises(httpjson.BodyError) as err:
        httpjson.parse(b"{}" + b" " * 100, max_bytes=100)
    assert err.value.status == 413
    assert httpjson.parse(b"  ", optional=True) == {}


# -- in-process: NotFound is a 404, a KeyError from a bug is a 500 with a traceback -------------


class _Engine:
    """Stands in for ``engine.Engine``: no clients, and an array that fails like a bug."""

    clients: dict[str, Any] = {}

    @property
    def array(self) -> Any:
        raise KeyError("a bug, not a missing object")


async def _call(method: str, path: str) -> tuple[int, dict[str, Any]]:
    app = api.build_app(_Engine(), None, token=TOKEN, admin_token=ADMIN)  # type: ignore[arg-type]
    async with TestClient(TestServer(app)) as client:
        resp = await client.request(method, path, headers={"Authorization": f"Bearer {TOKEN}"})
        return resp.status, await resp.json()


def test_not_found_is_explicit() -> None:
    status, body = asyncio.run(_call("GET", "/v1/clients/nope"))
    assert status == 404 and body["error"] == "not found: client nope"


def test_a_keyerror_from_a_bug_is_a_500_with_a_traceback(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="nasblade.controller.api"):
        status, body = asyncio.run(_call("GET", "/v1/array"))
    assert status == 500 and "internal error" in body["error"]
    [record] = [r for r in caplog.records if r.name == "nasblade.controller.api"]
    assert record.exc_info is not None and record.exc_info[0] is KeyError
