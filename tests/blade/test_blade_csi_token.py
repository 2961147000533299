"""The CSI driver's token on the blade management API (``--csi-token-sha256-file``).

The CSI driver's controller plugin asks the blade serving a shared file system for directory
volumes and their snapshots with its csi token (``nasblade.grants.csi_token``); the blade holds
only the token's SHA-256. That token opens the directory-volume and snapshot routes alone
(``403`` on takeover, release, backups, status, metrics); a blade started without the digest
takes no csi token (``401``).
"""

from __future__ import annotations

import argparse
import hashlib
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import BLADE_TOKEN, BladeProc
from nasblade import grants
from nasblade.blockproc import api as blade_api
from nasblade.blockproc import main as blade_main

pytestmark = pytest.mark.component

CSI_TOKEN = grants.csi_token("the-array's-control-token")
DIRECTORY_ROUTES = [("GET", "/v1/filesystems/fs1/directories", None),
                    ("PUT", "/v1/filesystems/fs1/directories/pv-a", b'{"quotaBytes": 1048576}'),
                    ("DELETE", "/v1/filesystems/fs1/directories/pv-a", None),
                    ("GET", "/v1/filesystems/fs1/snapshots", None),
                    ("PUT", "/v1/filesystems/fs1/snapshots/sn-a", b'{"directory": "pv-a"}'),
                    ("DELETE", "/v1/filesystems/fs1/snapshots/sn-a", None)]
OTHER_ROUTES = [("POST", "/v1/lus/fs1/takeover", None), ("POST", "/v1/lus/fs1/release", None),
                ("POST", "/v1/filesystems/fs1/takeover", None), ("POST", "/v1/filesystems/fs1/release", None),
                ("POST", "/v1/backups", b'{"portions": [0]}'), ("GET", "/v1/status", None),
                ("GET", "/v1/slots", None), ("GET", "/v1/metrics", None)]


def _digest_file(tmp_path: Path, token: str = CSI_TOKEN) -> Path:
    path = tmp_path / "csi-token-sha256"
    path.write_text(hashlib.sha256(token.encode()).hexdigest() + "\n")
    return path


def test_the_csi_token_opens_the_directory_routes_alone(tmp_path: Path, start_bp: Callable[..., BladeProc]) -> None:
    bp = start_bp(blade="b0", own=(), extra=("--csi-token-sha256-file", str(_digest_file(tmp_path))))
    for method, path, body in DIRECTORY_ROUTES:
        # past the credential check: the blade does not serve fs1, so the route answers 404
        status, reply = bp.call(method, path, body, token=CSI_TOKEN)
        assert status == 404 and "csi" not in reply["error"].lower(), (path, status, reply)
    for method, path, body in OTHER_ROUTES:
        status, reply = bp.call(method, path, body, token=CSI_TOKEN)
        assert status == 403 and reply["error"].startswith("the CSI driver's token reaches"), (path, status, reply)
    # not the digest itself, not another array's csi token; the blade token still opens everything
    assert bp.call("GET", "/v1/filesystems/fs1/directories", None,
                   token=hashlib.sha256(CSI_TOKEN.encode()).hexdigest())[0] == 401
    assert bp.call("GET", "/v1/filesystems/fs1/directories", None, token=grants.csi_token("another array"))[0] == 401
    assert bp.call("GET", "/v1/status", None, token=BLADE_TOKEN)[0] == 200


def test_without_the_digest_the_csi_token_is_unknown(tmp_path: Path, start_bp: Callable[..., BladeProc]) -> None:
    bp = start_bp(blade="b0", own=())
    for method, path, body in DIRECTORY_ROUTES[:1] + OTHER_ROUTES[:1]:
        assert bp.call(method, path, body, token=CSI_TOKEN)[0] == 401
    # a missing digest file (a Secret without the key yet): the blade serves, takes no csi token
    bp = start_bp(blade="b1", slot=1, own=(), extra=("--csi-token-sha256-file", str(tmp_path / "missing")))
    assert bp.call("GET", "/v1/filesystems/fs1/directories", None, token=CSI_TOKEN)[0] == 401
    assert bp.call("GET", "/v1/status", None, token=BLADE_TOKEN)[0] == 200


def test_the_digest_file_is_checked(tmp_path: Path) -> None:
    def read(path: Path | None) -> str | None:
        return blade_main._csi_token_sha256(argparse.Namespace(csi_token_sha256_file=str(path) if path else None))

    assert read(None) is None
    assert read(tmp_path / "missing") is None
    assert read(_digest_file(tmp_path)) == hashlib.sha256(CSI_TOKEN.encode()).hexdigest()
    for bad in ("", CSI_TOKEN, "ab" * 31, "AB" * 32, "zz" * 32):
        (tmp_path / "bad").write_text(bad)
        with pytest.raises(ValueError):
            read(tmp_path / "bad")
    with pytest.raises(ValueError):
        blade_api.blade_app(None, token="t", csi_token_sha256="not-hex")  # type: ignore[arg-type]
