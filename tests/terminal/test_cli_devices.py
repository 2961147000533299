"""``nasblade devices`` / ``nasblade scrub``: registered, and the device table says what the
controller reports (states, rebuild progress, reasons, counters)."""

from __future__ import annotations

import io
from typing import Any

from nasblade import cli
from nasblade.terminal.commands import devices


def test_commands_are_registered() -> None:
    text = cli.build_parser().format_help()
    assert "\n  devices " in text and "\n  scrub " in text


def test_device_table() -> None:
    array = {"protection": "mirror-2", "state": "degraded", "size": 100 << 20, "rawSize": 256 << 20,
             "checksums": True, "repairedBlocks": 3, "lostBlocks": 0,
             "rebuild": [{"device": 1, "done": 64 << 20, "total": 128 << 20}],
             "devices": [
                 {"index": 0, "path": "/d/dev0", "size": 128 << 20, "state": "ok", "readErrors": 0,
                  "writeErrors": 0, "checksumErrors": 2, "repaired": 3},
                 {"index": 1, "path": "/d/dev1", "size": 128 << 20, "state": "rebuilding",
                  "rebuilt": 64 << 20},
                 {"index": 2, "path": "/d/dev2", "size": 128 << 20, "state": "failed",
                  "reason": "device file is gone"}],
             "scrub": {"running": False, "last": {"finished": "T", "repaired": 1, "lost": 0}}}
    out = devices.table(array)
    assert "protection mirror-2, state degraded, capacity 100 MiB of 256 MiB raw" in out
    assert "rebuilding 50%" in out and "failed (device file is gone)" in out
    assert "errors r/w/checksum 0/0/2  repaired 3" in out
    assert "last scrub T: 1 repaired, 0 lost" in out


def test_status_shows_protection_and_device_states(snapshot: Any) -> None:
    from nasblade.terminal import render
    from nasblade.terminal.standalone import _device

    raw = {"rebuild": [{"device": 1, "done": 1, "total": 4}]}
    a = snapshot["arrays"][0]
    a["redundancy"] = {"protection": "mirror-2", "state": "degraded", "repairedBlocks": 7, "lostBlocks": 0}
    a["devices"] = [_device({"index": 0, "size": 1 << 30, "path": "/d0", "state": "failed",
                             "reason": "device file is gone"}, raw),
                    _device({"index": 1, "size": 1 << 30, "path": "/d1", "state": "rebuilding",
                             "rebuilt": 2}, raw)]
    console = render.console(io.StringIO(), width=200)
    console.print(render.status_tables(snapshot))
    out = console.file.getvalue()  # type: ignore[attr-defined]
    assert "mirror-2, degraded, repaired 7 block(s), lost 0" in out
    assert "failed (device file is gone)" in out and "rebuilding (50%)" in out
