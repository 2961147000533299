"""The management terminal against a real standalone array (``nasblade up``), driven as an
administrator would: the ``nasblade`` command line, compared with what the controller and the
blades report through their own APIs. Tests that change the array (killing a blade) run last."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from nasblade.controller.apiclient import ControlClient
from nasblade.terminal.model import Snapshot

NASBLADE = [sys.executable, "-m", "nasblade"]
# fixtures from conftest.py: ``array`` (an Array) and ``cli`` (run nasblade against it)
Array = Any
Cli = Callable[..., "subprocess.CompletedProcess[str]"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port

pytestmark = pytest.mark.component
SVG = "{http://www.w3.org/2000/svg}"


def status(cli: Cli) -> Snapshot:
    out = cli("status", "-o", "json")
    assert out.returncode == 0, out.stderr
    snap: Snapshot = json.loads(out.stdout)
    return snap


def test_status_json_is_the_real_state(array: Array, cli: Cli) -> None:
    snap = status(cli)
    ctl = array.control
    [view] = snap["arrays"]
    real_lus = {lu["name"]: lu for lu in ctl.list_lus()}
    assert {lu["name"]: lu["size"] for lu in view["lus"]} == {n: lu["size"] for n, lu in real_lus.items()}
    assert {lu["name"]: lu["reservation"] for lu in view["lus"]} == {n: lu["reservation"] for n, lu in real_lus.items()}
    real = ctl.array()
    assert view["size"] == real["size"] and [d["size"] for d in view["devices"]] == [d["size"] for d in real["devices"]]
    assert view["cache"]["size"] == ctl.cache()["size"]
    assert view["software"]["current"] == array.endpoints["blades"][0]["software"]
    groups = {g["name"]: g for g in snap["groups"]}
    assert {g: [b["name"] for b in groups[g]["blades"]] for g in groups} == {"g1": ["g1-0", "g1-1"], "g2": ["g2-0"]}
    for g in snap["groups"]:
        for b in g["blades"]:
            real_b = array.blade(b["name"]).status()
            assert b["state"] == "ok", b
            assert b["fileSystems"] == real_b["fileSystems"]
            assert b["softwareVersion"] == real_b["software"]["version"]
            assert b["slot"] == real_b["slot"]
            assert 0 <= b["heartbeatAge"] < 1.0
    owners = {f["name"]: f for f in snap["fileSystems"]}
    assert owners["fs1"]["blade"] == "g1-0" and owners["fs2"]["blade"] == "g2-0"
    assert owners["fs1"]["epoch"] == real_lus["fs-fs1"]["reservation"]["epoch"]
    assert [a["group"] for a in view["areas"] if a["role"] == "portion"] == ["g1", "g2"]


def test_status_yaml_and_table(cli: Cli) -> None:
    as_yaml = cli("status", "-o", "yaml")
    assert as_yaml.returncode == 0, as_yaml.stderr
    doc = yaml.safe_load(as_yaml.stdout)
    assert [g["name"] for g in doc["groups"]] == ["g1", "g2"]
    table = cli("status")
    assert table.returncode == 0, table.stderr
    for word in ("g1-0", "g1-1", "g2-0", "fs-fs1", "fs-fs2", "procinfo", "backup", "program", "Cluster group g2"):
        assert word in table.stdout
    assert "Traceback" not in table.stderr


def test_map_svg_parses_and_names_every_blade_and_lu(array: Array, cli: Cli, tmp_path: Path) -> None:
    svg, png = tmp_path / "array.svg", tmp_path / "array.png"
    out = cli("map", "--svg", str(svg), "--png", str(png))
    assert out.returncode == 0, out.stderr
    root = ET.parse(svg).getroot()
    assert root.tag == f"{SVG}svg"
    named: dict[str, set[str]] = {}
    for g in root.iter(f"{SVG}g"):
        named.setdefault(g.get("data-kind", ""), set()).add(g.get("data-name", ""))
    assert named["blade"] == {"g1-0", "g1-1", "g2-0"}
    assert named["lu"] == {lu["name"] for lu in array.control.list_lus()}
    assert {"procinfo[0]", "procinfo[1]", "backup[0]", "backup[1]"} <= named["area"]
    # every extent of every LU, where the controller says it is, drawn to scale on its device
    rects = {(g.get("data-kind"), g.get("data-name"), g.get("data-device"), g.get("data-offset")): (g, g.find(f"{SVG}rect"))
             for g in root.iter(f"{SVG}g")}
    drawn = {(g.get("data-name"), int(g.get("data-device", -1)), int(g.get("data-offset", -1)), int(g.get("data-length", -1)))
             for g, _ in rects.values() if g.get("data-kind") == "lu-extent"}
    lus = array.control.list_lus()
    assert drawn == {(lu["name"], e["device"], e["offset"], e["length"]) for lu in lus for e in lu["extents"]}
    sizes = {d["index"]: d["size"] for d in array.control.array()["devices"]}
    for name, device, offset, length in drawn:
        dev = rects[("device", str(device), None, None)][1]
        ext = rects[("lu-extent", name, str(device), str(offset))][1]
        assert dev is not None and ext is not None
        dx, dw = float(dev.get("x", 0)), float(dev.get("width", 0))
        assert abs(float(ext.get("x", 0)) - (dx + dw * offset / sizes[device])) < 0.2
        assert abs(float(ext.get("width", 0)) - max(dw * length / sizes[device], 0.5)) < 0.2
    text = "".join(t.text or "" for t in root.iter(f"{SVG}text"))
    assert "fs1" in text and "fs2" in text
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000
    # the PNG is the SVG's size (IHDR width/height)
    assert int.from_bytes(data[16:20], "big") == int(root.get("width", "0"))


def test_takeover_dry_run(cli: Cli) -> None:
    # the dry run is an instant verdict: under load a heartbeat can lapse or a cluster tick fail
    # for a moment (a true "not possible now"), so ask until the array is settled, bounded
    deadline = time.monotonic() + 60
    while True:
        ok = cli("takeover", "fs1", "--to", "g1-1", "--dry-run", "-o", "json")
        if ok.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert ok.returncode == 0, (ok.stdout, ok.stderr)
    verdict = json.loads(ok.stdout)
    assert verdict["possible"] is True and verdict["from"] == "g1-0" and verdict["reasons"] == []
    other = cli("takeover", "fs1", "--to", "g2-0", "--dry-run")
    assert other.returncode == 1
    assert "g2-0 is in cluster group g2, fs1 belongs to g1" in other.stdout
    same = cli("takeover", "fs1", "--to", "g1-0", "--dry-run")
    assert same.returncode == 1 and "g1-0 already serves fs1" in same.stdout
    home = cli("giveback", "fs1", "--dry-run")  # giving back what is home is a no-op, not a failure
    assert home.returncode == 0 and "fs1 is home already" in home.stdout


@pytest.mark.parametrize(("args", "message"), [
    (("takeover", "nofs", "--to", "g1-1", "--dry-run"), "no file system 'nofs' (known: fs1, fs2)"),
    (("takeover", "fs1", "--to", "noblade", "--dry-run"), "no blade 'noblade'"),
    (("backup", "nogroup"), "no cluster group 'nogroup'"),
    (("backup", "g1", "--cross-group", "nogroup"), "no cluster group 'nogroup'"),
])
def test_unknown_names_exit_2(cli: Cli, args: tuple[str, ...], message: str) -> None:
    out = cli(*args)
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert message in out.stderr and "Traceback" not in out.stderr


def test_unreachable_controller_exits_3(cli: Cli) -> None:
    port = free_port()
    out = cli("status", "--controller", f"http://127.0.0.1:{port}")
    assert out.returncode == 3
    assert f"controller http://127.0.0.1:{port} does not answer" in out.stderr and "Traceback" not in out.stderr


def test_not_an_array_directory_exits_2(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("NASBLADE_DATA_DIR", "KUBECONFIG")}
    out = subprocess.run([*NASBLADE, "status", "--data-dir", str(tmp_path)], env=env, capture_output=True, text=True,
                         timeout=60, check=False)
    assert out.returncode == 2
    assert "is not the data directory of an array" in out.stderr


def test_endpoints_file_is_where_the_terminal_finds_the_array(array: Array, tmp_path: Path) -> None:
    """``nasblade up`` writes DATA/endpoints.json; with it the terminal needs no fixed ports."""
    saved = json.loads((array.data_dir / "endpoints.json").read_text())
    assert saved["controller"]["api"] == array.endpoints["controller"]["api"]
    assert saved["controller"]["nbd"] == array.endpoints["controller"]["nbd"]
    assert {b["name"]: (b["group"], b["api"]) for b in saved["blades"]} == \
        {b["name"]: (b["group"], b["api"]) for b in array.endpoints["blades"]}
    # A configuration that does not fix the control API port, and a data directory with only
    # the secrets: the terminal asks for --controller, until endpoints.json is there too.
    cfg = yaml.safe_load(array.config.read_text())
    cfg["network"]["apiPort"] = 0
    loose = tmp_path / "loose.yaml"
    loose.write_text(yaml.safe_dump(cfg))
    data = tmp_path / "data"
    (data / "secrets").mkdir(parents=True)
    for secret in (array.data_dir / "secrets").iterdir():
        (data / "secrets" / secret.name).write_bytes(secret.read_bytes())
    env = {k: v for k, v in os.environ.items() if k not in ("NASBLADE_DATA_DIR", "KUBECONFIG")}
    env["NASBLADE_CONFIG"] = str(loose)

    def status() -> subprocess.CompletedProcess[str]:
        return subprocess.run([*NASBLADE, "status", "--data-dir", str(data), "-o", "json"], env=env,
                              capture_output=True, text=True, timeout=120, check=False)

    without = status()
    assert without.returncode == 2 and "pass --controller URL" in without.stderr
    (data / "endpoints.json").write_bytes((array.data_dir / "endpoints.json").read_bytes())
    found = status()
    assert found.returncode == 0, found.stderr
    snap = json.loads(found.stdout)
    assert snap["target"]["controller"] == array.endpoints["controller"]["api"]
    assert {b["name"] for g in snap["groups"] for b in g["blades"]} == {"g1-0", "g1-1", "g2-0"}


def test_backup_with_cross_group_is_followed_to_the_end(array: Array, cli: Cli) -> None:
    out = cli("backup", "g1", "--cross-group", "g2", "-o", "json", "--timeout", "120")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["succeeded"] is True and result["groups"] == ["g1", "g2"]
    assert {c["group"] for c in result["copies"]} == {"g1", "g2"}
    assert result["bytesDone"] == result["bytesTotal"] > 0
    jobs = {j["id"]: j for j in array.control.list_copy_jobs()}
    for copy in result["copies"]:  # the controller's copy engine did them, block by block
        job = jobs[copy["id"]]
        assert job["state"] == "succeeded" and job["source"] == "procinfo" and job["target"] == "backup"
    # the history lives in g1's group record: status shows it, with who asked
    snap = status(cli)
    recorded = {b["id"]: b for b in snap["backups"]}
    for copy in result["copies"]:
        assert recorded[copy["id"]]["state"] == "succeeded"
        assert (recorded[copy["id"]]["trigger"] or "").startswith("on-demand")
    groups = {g["name"]: g for g in snap["groups"]}
    assert groups["g2"]["lastBackup"] is not None and groups["g2"]["lastBackup"]["state"] == "succeeded"


def test_backup_of_a_group_without_that_cross_group_exits_2(cli: Cli) -> None:
    out = cli("backup", "g2", "--cross-group", "g1")
    assert out.returncode == 2
    assert "g1 is not a cross-group backup target of g2" in out.stderr


def test_software_rollout_of_a_version_not_in_the_catalog_exits_2(cli: Cli, array: Array) -> None:
    out = cli("software", "rollout", "9.9.9-nowhere")  # a real rollout: tests/terminal/test_cli_rollout_standalone.py
    assert out.returncode == 2
    assert "9.9.9-nowhere is not in the program catalog" in out.stderr and "push" in out.stderr
    listed = cli("software", "--program", f"nbd://{array.endpoints['controller']['nbd']}/program", "list", "--json")
    assert listed.returncode == 0 and json.loads(listed.stdout)["current"]


def test_events_and_follow(cli: Cli) -> None:
    out = cli("events", "-o", "json")
    assert out.returncode == 0, out.stderr
    owners = {e["object"]: e["message"] for e in json.loads(out.stdout) if e["kind"] == "Owner"}
    assert "served by g1-0" in owners["fs1"] and "served by g2-0" in owners["fs2"]
    follow = cli("events", "--follow", "--for", "2", "--interval", "0.5", "-o", "json")
    assert follow.returncode == 0, follow.stderr
    lines = [json.loads(line) for line in follow.stdout.splitlines()]
    assert {e["object"] for e in lines if e["kind"] == "Owner"} == {"fs1", "fs2"}


def test_watch_renders_and_stops(cli: Cli) -> None:
    out = cli("watch", "--for", "1.5", "--interval", "0.5")
    assert out.returncode == 0, out.stderr
    assert "g1-0" in out.stdout and "Events" in out.stdout


def test_giveback_of_a_file_system_at_home_is_a_no_op(cli: Cli) -> None:
    out = cli("giveback", "fs2")
    assert out.returncode == 0, out.stderr
    assert "fs2 is home already" in out.stdout
    out = cli("giveback", "fs2", "-o", "json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) | {"epoch": 0} == {"fileSystem": "fs2", "blade": "g2-0", "epoch": 0, "alreadyHome": True}


def test_software_list_takes_data_dir_and_output(array: Array, cli: Cli) -> None:
    direct = cli("software", "--program", f"nbd://{array.endpoints['controller']['nbd']}/program", "list", "--json")
    assert direct.returncode == 0, direct.stderr
    catalog = json.loads(direct.stdout)
    assert "deprecated" in direct.stderr
    for fmt, load in (("json", json.loads), ("yaml", yaml.safe_load)):
        out = cli("software", "list", "--data-dir", str(array.data_dir), "-o", fmt)
        assert out.returncode == 0, out.stderr
        assert load(out.stdout) == catalog
    table = cli("software", "list", "--data-dir", str(array.data_dir))
    assert table.returncode == 0 and "VERSION" in table.stdout
    missing = cli("software", "list", "--data-dir", "/nonexistent")
    assert missing.returncode == 1 and "not the data directory of an array" in missing.stderr


def test_completion_names_come_from_the_array(array: Array, cli: Cli) -> None:
    expect = {"filesystems": ["fs1", "fs2"], "blades": ["g1-0", "g1-1", "g2-0"], "groups": ["g1", "g2"]}
    for kind, names in expect.items():
        out = cli("__complete", kind, "--data-dir", str(array.data_dir))
        assert (out.returncode, out.stdout.split(), out.stderr) == (0, names, "")
    nothing = cli("__complete", "blades", "--data-dir", "/nonexistent")
    assert (nothing.returncode, nothing.stdout, nothing.stderr) == (0, "", "")


def test_status_says_portion_like_kubernetes(cli: Cli) -> None:
    snap = status(cli)
    assert {g["activeArea"] for g in snap["groups"]} == {"portion"}
    assert {b["activeArea"] for g in snap["groups"] for b in g["blades"]} == {"portion"}


BAD_BLADE_INPUT = [
    ("/v1/cluster/filesystems/fs2/takeover", b"[" * 10000 + b"]" * 10000, 400),
    ("/v1/cluster/filesystems/fs2/takeover", b'{"force": true, "pad": "' + b"x" * (2 << 20) + b'"}', 413),
    ("/v1/cluster/filesystems/fs2/takeover", b'{"force": "yes"}', 400),
    ("/v1/cluster/filesystems/fs2/takeover", b"\xff", 400),
    ("/v1/cluster/filesystems/fs2/release", b'{"for": 5}', 400),
    ("/v1/cluster/backups", b'{"crossGroup": 5}', 400),
    ("/v1/cluster/backups", b'{"rateLimit": -1}', 400),
    ("/v1/lus/..%2Fprocinfo/takeover", b"", 400),
    ("/v1/lus/%2e%2e/release", b"", 400),
    ("/v1/backups", b'{"portions": [0], "x": ' + b'{"a":' * 100 + b"1" + b"}" * 100 + b"}", 400),
]


def test_blade_and_cluster_routes_answer_bad_input_with_a_json_4xx(array: Array) -> None:
    """The blade management API with its cluster routes (issue 16): bounded bodies, LU names
    checked, never a 500; the blade keeps serving."""
    import http.client
    from urllib.parse import urlparse

    [ep] = [b for b in array.endpoints["blades"] if b["name"] == "g2-0"]
    u = urlparse(ep["api"])
    token = (array.data_dir / "secrets" / "blade-token").read_text().strip()
    for path, body, status in BAD_BLADE_INPUT:
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
        conn.request("POST", path, body=body, headers={"Authorization": f"Bearer {token}",
                                                       "Content-Type": "application/json"})
        resp = conn.getresponse()
        reply = json.loads(resp.read())
        conn.close()
        assert (resp.status, isinstance(reply.get("error"), str)) == (status, True), (path, reply)
    assert "fs2" in array.blade("g2-0").status()["fileSystems"]


def test_takeover_and_giveback_move_the_file_system(array: Array, cli: Cli) -> None:
    before = {f["name"]: f for f in status(cli)["fileSystems"]}["fs1"]
    assert before["blade"] == "g1-0"
    out = cli("takeover", "fs1", "--to", "g1-1", "-o", "json")
    assert out.returncode == 0, out.stderr
    moved = json.loads(out.stdout)
    assert moved["blade"] == "g1-1" and moved["epoch"] > before["epoch"]
    assert array.control.get_lu("fs-fs1")["reservation"] == {"holder": "g1-1", "epoch": moved["epoch"]}
    assert "fs1" in array.blade("g1-1").status()["fileSystems"]
    assert "fs1" not in array.blade("g1-0").status()["fileSystems"]
    [ep] = [e for e in array.endpoints["nfs"] if e["fileSystem"] == "fs1"]
    listing = subprocess.run(["nfs-ls", ep["url"]], capture_output=True, text=True, timeout=60, check=False)
    assert listing.returncode == 0, listing.stderr  # same address, now served by g1-1
    away = cli("status", "-o", "json")
    assert {f["name"]: f["homeBlade"] for f in json.loads(away.stdout)["fileSystems"]}["fs1"] == "g1-0"
    back = cli("giveback", "fs1", "-o", "json")
    assert back.returncode == 0, back.stderr
    returned = json.loads(back.stdout)
    assert returned["blade"] == "g1-0" and returned["epoch"] > moved["epoch"]
    events = json.loads(cli("events", "-o", "json").stdout)
    moves = [(e["kind"], e["message"]) for e in events if e["object"] == "fs1" and e["kind"] == "Takeover"]
    assert any("by g1-1 from g1-0" in m for _, m in moves) and any("by g1-0 from g1-1" in m for _, m in moves)


def test_area_failover_is_shown_in_status_map_and_events(array: Array, cli: Cli, tmp_path: Path) -> None:
    """A fault on g1's portion: its blades run from backup area 0; status, map and events say so,
    g2 stays on its portion; without the fault g1 goes back to its portion."""
    admin = ControlClient(array.endpoints["controller"]["api"],
                          (array.data_dir / "secrets" / "admin-token").read_text().strip())
    admin.add_fault("procinfo", 0, 1 << 20)
    try:
        def areas() -> dict[str, str | None]:
            return {g["name"]: g["activeArea"] for g in status(cli)["groups"]}

        deadline = time.monotonic() + 60
        while (now := areas()) != {"g1": "backup", "g2": "portion"}:
            assert time.monotonic() < deadline, now
            time.sleep(0.5)
        snap = status(cli)
        assert all(b["state"] == "ok" for g in snap["groups"] for b in g["blades"])  # heartbeats read from the backup area
        svg = tmp_path / "area.svg"
        assert cli("map", "--svg", str(svg), "--no-png").returncode == 0
        titles = {g.get("data-name"): "".join(t.text or "" for t in g.iter(f"{SVG}title"))
                  for g in ET.parse(svg).getroot().iter(f"{SVG}g") if g.get("data-kind") == "area"}
        assert "(in use)" in titles["backup[0]"] and "(in use)" not in titles["procinfo[0]"]
        assert "(in use)" in titles["procinfo[1]"]
        events = json.loads(cli("events", "-o", "json").stdout)
        assert any(e["kind"] == "ActiveArea" and e["object"] == "g1" and "backup area" in e["message"] for e in events)
    finally:
        admin.clear_faults()
    deadline = time.monotonic() + 60
    while status(cli)["groups"][0]["activeArea"] != "portion":
        assert time.monotonic() < deadline
        time.sleep(0.5)


def test_a_hung_blade_turns_dead_and_cannot_take_over(array: Array, cli: Cli) -> None:
    """Last: SIGSTOP g1-1's block and file processors (a hung blade: the chassis of ``nasblade
    up`` restarts blades that exit, not ones that hang, and g1-1 owns nothing a peer would take
    over and power it off for); the terminal reports it dead from its stale heartbeat and its
    silent API, the dry run says why it cannot take fs1; SIGCONT and it is ok again."""
    chassis = json.loads((array.data_dir / "run" / "chassis.json").read_text())["blades"]["g1-1"]
    pids = [chassis[part]["pid"] for part in ("fileProcessor", "blockProcessor")]
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        deadline = time.monotonic() + 120
        while True:
            snap = status(cli)
            [b] = [b for g in snap["groups"] for b in g["blades"] if b["name"] == "g1-1"]
            if b["state"] == "dead":
                break
            assert time.monotonic() < deadline, b
            time.sleep(0.5)
        assert "heartbeat" in b["reason"]
        others = {b["name"]: b["state"] for g in snap["groups"] for b in g["blades"] if b["name"] != "g1-1"}
        assert others == {"g1-0": "ok", "g2-0": "ok"}
        out = cli("takeover", "fs1", "--to", "g1-1", "--dry-run")
        assert out.returncode == 1 and "g1-1 is dead" in out.stdout
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
    deadline = time.monotonic() + 120
    while True:
        states = {b["name"]: b["state"] for g in status(cli)["groups"] for b in g["blades"]}
        if states == {"g1-0": "ok", "g1-1": "ok", "g2-0": "ok"}:
            break
        assert time.monotonic() < deadline, states
        time.sleep(0.5)
