"""The file processor and the tools on an LU reached over NBD on a Unix socket (how a blade's
file processor talks to its block processor): mkfs, serve, copy in and out, fsck."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from nfs_harness import Controller, FileProcessor, export, nasblade

pytestmark = pytest.mark.component


def test_mkfs_serve_fsck_over_nbd_unix(controller: Controller, fp_factory: Callable[..., FileProcessor], tmp_path: Path) -> None:
    url = controller.unix_url(controller.new_lu(256 << 20, mkfs=False))
    made = subprocess.run(nasblade("mkfs", url), capture_output=True, timeout=120, check=True)
    assert json.loads(made.stdout)["dataBlocks"] > 0
    again = subprocess.run(nasblade("mkfs", url), capture_output=True, timeout=120)
    assert again.returncode == 1  # refuses to overwrite without --force
    fp = fp_factory(url, [export("/u", rootSquash=False)])
    src = tmp_path / "in.bin"
    src.write_bytes(os.urandom(3 << 20))
    subprocess.run(["nfs-cp", str(src), fp.url("/u", "f")], check=True, capture_output=True, timeout=120)
    out = subprocess.run(["nfs-cat", fp.url("/u", "f")], check=True, capture_output=True, timeout=120).stdout
    assert out == src.read_bytes()
    assert fp.stop() == 0
    check = subprocess.run(nasblade("fsck", url), capture_output=True, timeout=120)
    assert check.returncode == 0, check.stdout + check.stderr
    rep = json.loads(check.stdout)
    assert rep["clean"] and rep["files"] == 1 and rep["used_blocks"] == (3 << 20) // 4096
