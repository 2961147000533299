"""Bad input to the blade management API (issue 16): LU names checked on the path, bodies
bounded, every reply a JSON 4xx -- never a 500 -- and no traceback in the block processor's log.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from conftest import BladeProc
from nasblade.controller import luname

pytestmark = pytest.mark.component


BAD = [
    ("POST", "/v1/lus/..%2Fprocinfo/takeover", None, 400),
    ("POST", "/v1/lus/%2e%2e/takeover", None, 400),
    ("POST", "/v1/lus/-/takeover", None, 400),
    ("POST", "/v1/lus/a%0Ab/release", None, 400),
    ("POST", "/v1/lus/nope/takeover", None, 404),
    ("POST", "/v1/backups", b"[" * 10000 + b"]" * 10000, 400),
    ("POST", "/v1/backups", b'{"portions": [0], "pad": "' + b"x" * (2 << 20) + b'"}', 413),
    ("POST", "/v1/backups", b"\xff\xfe", 400),
    ("POST", "/v1/backups", b'{"portions": "all"}', 400),
    ("POST", "/v1/filesystems/..%2Ffs1/takeover", None, 404),
    ("GET", "/v1/filesystems/nope/directories", None, 404),
    ("PUT", "/v1/filesystems/nope/directories/pv-a", b'{"quotaBytes": 1}', 404),
    ("DELETE", "/v1/filesystems/..%2Ffs1/directories/pv-a", None, 404),
]


def test_bad_input_is_a_json_4xx(start_bp: Callable[..., BladeProc]) -> None:
    bp = start_bp(blade="b0", own=())
    for method, path, body, status in BAD:
        got, reply = bp.call(method, path, body)
        assert (got, isinstance(reply, dict) and isinstance(reply.get("error"), str)) == (status, True), (path, reply)
        if status == 400 and "/lus/" in path:
            assert luname.RULE in reply["error"]
    got, reply = bp.call("GET", "/v1/status")
    assert got == 200
