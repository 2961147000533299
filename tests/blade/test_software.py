"""Program storage through the controller: ``nasblade software`` and the block processor's boot.

Push two versions with the real CLI over NBD, select each, and the blade reports what it
booted; a corrupted bundle is refused and the blade keeps the version it had.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import BLADE_TOKEN, NASBLADE, BladeProc, Controller, stop
from nasblade.bladeapi.client import BladeClient
from nasblade.nbd.client import NBDBlockDevice

pytestmark = pytest.mark.component


def software(controller: Controller, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*NASBLADE, "software", "--program", f"nbd://{controller.nbd}/program", *args],
        capture_output=True, text=True, timeout=120, check=False,
    )


def test_push_select_boot_and_refuse_a_corrupted_bundle(
    tmp_path: Path, controller: Controller, start_bp: Callable[..., BladeProc]
) -> None:
    for v in ("1.0", "2.0", "3.0"):
        out = software(controller, "build", "--version", v, "--output", str(tmp_path / f"{v}.pyz"))
        assert out.returncode == 0, out.stderr
    assert software(controller, "push", str(tmp_path / "1.0.pyz"), "--version", "1.0").returncode == 0
    assert software(controller, "push", str(tmp_path / "2.0.pyz"), "--version", "2.0").returncode == 0
    listing = json.loads(software(controller, "list", "--json").stdout)
    assert [b["version"] for b in listing["bundles"]] == ["1.0", "2.0"]
    assert listing["current"] == "1.0"
    assert "* 1.0" in software(controller, "list").stdout

    bp = start_bp(blade="b0")
    assert BladeClient(bp.api, BLADE_TOKEN).status()["software"]["version"] == "1.0"
    stop(bp.proc)

    assert software(controller, "select", "2.0").returncode == 0
    bp = start_bp(blade="b0")
    assert BladeClient(bp.api, BLADE_TOKEN).status()["software"]["version"] == "2.0"
    assert (bp.rundir / "software" / "2.0.pyz").read_bytes() == (tmp_path / "2.0.pyz").read_bytes()
    stop(bp.proc)

    # push 3.0, then damage its bytes on the program LU and select it
    entry = json.loads(software(controller, "push", str(tmp_path / "3.0.pyz"), "--version", "3.0").stdout)
    with NBDBlockDevice.connect(f"nbd://{controller.nbd}/program") as dev:
        dev.pwrite(entry["offset"] + 100, b"\xff" * 16, fua=True)
    assert software(controller, "select", "3.0").returncode == 0
    bp = start_bp(blade="b0")
    status = BladeClient(bp.api, BLADE_TOKEN).status()
    assert status["software"]["version"] == "2.0"  # kept
    assert "bundle 3.0 is corrupted" in status["software"]["error"]
    assert not (bp.rundir / "software" / "3.0.pyz").exists()

    missing = software(controller, "select", "9.9")
    assert missing.returncode == 1 and "version 9.9 is not in the program catalog" in missing.stderr
