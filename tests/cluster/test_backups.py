"""Processor-information backups (claims 4, 8, 9, 13, 15-19) and area failover (claims 5, 11,
20), in standalone mode with the controller's copy engine and fault injection.

- on demand through the blade management API, with a cross-group copy (group g1's blade
  backs up portions g1 and g2), and the backup area equal to the portion as of the copy;
- at the interval, deferred while fio (a real NBD client) loads the controller but never
  longer than the maximum age (started anyway, throttled), and started as soon as the load
  drops;
- area failover: faults on the portion switch the group to its backup area, heartbeats and a
  takeover keep working there, clearing the fault re-forms the portion from the backup area
  and the blades switch back, with no ownership or heartbeat record lost.
"""

from __future__ import annotations

import http.client
import signal
import subprocess
import time
from typing import Any
from urllib.parse import urlparse

import pytest
from conftest import ArrayUp, base_config, expect
from nasblade.nbd.client import NBDBlockDevice
from nasblade.procinfo.portion import GROUP_OFFSET, SLOTS_OFFSET, PortionStore
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.component

PORTION = 1 << 20
TWO_GROUPS = {
    "clusterGroups": [
        {"name": "g1", "blades": 2, "heartbeatInterval": "100ms", "failureTimeout": "3s",
         "backup": {"interval": "2s", "loadThreshold": 0.5, "maxAge": "8s", "crossGroup": ["g2"]}},
        {"name": "g2", "blades": 1, "heartbeatInterval": "100ms", "failureTimeout": "1s",
         "backup": {"interval": "1h", "maxAge": "2h"}},
    ],
}


QUIET = {"clusterGroups": [{**g, "backup": {**g["backup"], "interval": "1h", "maxAge": "2h"}}
                           for g in TWO_GROUPS["clusterGroups"]]}


def store(arr: ArrayUp, lu: str, index: int) -> tuple[NBDBlockDevice, PortionStore]:
    dev = NBDBlockDevice.connect(arr.nbd_url(lu))
    return dev, PortionStore(dev, offset=index * PORTION, size=PORTION)


def records(arr: ArrayUp, blade: str = "g1-0") -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = arr.api(blade, "GET", "/v1/cluster/backups")["backups"]
    return result


def test_on_demand_cross_group_point_in_time(make_array: Any) -> None:
    arr: ArrayUp = make_array(**QUIET)
    frozen = [(b, "fp") for b in ("g1-0", "g1-1", "g2-0")]
    for b, part in frozen:  # no slot writes while the portions are compared
        arr.kill(b, part, signal.SIGSTOP)
    try:
        time.sleep(0.3)
        out = arr.api("g1-1", "POST", "/v1/cluster/backups", {"crossGroup": ["g2"]})["backups"]
        compared = {}
        for index in (0, 1):
            pdev, _ = store(arr, "procinfo", index)
            bdev, _ = store(arr, "backup", index)
            with pdev, bdev:
                base = index * PORTION
                # header and every slot, byte for byte
                compared[index] = (pdev.pread(base, GROUP_OFFSET) == bdev.pread(base, GROUP_OFFSET)
                                   and pdev.pread(base + SLOTS_OFFSET, PORTION - SLOTS_OFFSET)
                                   == bdev.pread(base + SLOTS_OFFSET, PORTION - SLOTS_OFFSET))
    finally:
        for b, part in frozen:
            arr.kill(b, part, signal.SIGCONT)
    assert [(r["portion"], r["trigger"], r["result"], r["bytes"]) for r in out] == [
        ("g1", "on-demand", "succeeded", PORTION), ("g2", "on-demand", "succeeded", PORTION)]
    assert compared == {0: True, 1: True}
    # the group record of the copy is the portion's as of the copy: same ownership, and the
    # history the portion has now is that of the copy plus the records of this backup
    pdev, primary = store(arr, "procinfo", 0)
    bdev, backup = store(arr, "backup", 0)
    with pdev, bdev:
        now, copy = primary.read_group(), backup.read_group()
        assert copy.ownership == now.ownership and now.ownership["fs1"].blade == "g1-0"
        ids_now = {r.get("id") for r in now.backups}
        ids_copy = {r.get("id") for r in copy.backups}
        ours = {o["id"] for o in out}
        # (the interval scheduler may have added records since; none of ours is in the copy)
        assert ids_copy <= ids_now and ours <= ids_now and not ours & ids_copy
        # a blade of g1 never wrote g2's portion: its group record has no g1 entries
        _g2dev, g2 = store(arr, "procinfo", 1)
        with _g2dev:
            assert g2.read_group().backups == [] and g2.header().group == "g2"
    # the history is visible through the management API of every blade of the group
    for b in ("g1-0", "g1-1"):
        expect(arr, lambda b=b: {r["id"] for r in records(arr, b)} >= {o["id"] for o in out}, timeout=10,
               what=f"the backup history through {b}'s management API")
    with pytest.raises(RuntimeError) as err:
        arr.api("g1-0", "POST", "/v1/cluster/backups", {"crossGroup": ["nope"]})
    assert "not a cross-group backup target" in str(err.value)


def test_interval_and_load_aware_backups(make_array: Any) -> None:
    # NBD in plaintext for this array only: the load comes from fio's nbd engine, which cannot
    # present a client certificate (libnbd refuses tls-certificates in fio's URI)
    net = {**base_config()["network"], "nbdTLS": False}
    arr: ArrayUp = make_array(**TWO_GROUPS, network=net)
    expect(arr, lambda: any(r["trigger"] == "interval" and r["result"] == "succeeded" for r in records(arr)),
           timeout=60, what="an interval backup")
    arr.control.create_lu("loadlu", 256 << 20)

    def load_on() -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            ["fio", "--name=load", "--ioengine=nbd", f"--uri=nbd://{arr.nbd}/loadlu", "--rw=randwrite",
             "--bs=64k", "--iodepth=32", "--size=256M", "--time_based", "--runtime=60"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def load_off(fio: subprocess.Popen[bytes]) -> None:
        fio.send_signal(signal.SIGINT)
        _out, err = fio.communicate(timeout=60)
        assert b"error" not in err.lower(), err

    # under a sustained load the backup is deferred, and never past the maximum age: the
    # scheduler never defers when the last backup is maxAge old (it starts one, throttled),
    # so backups go on under the load; a backup that had been deferred runs while it lasts
    fio = load_on()
    try:
        expect(arr, lambda: arr.cluster("g1-0")["backup"]["scheduler"]["action"] == "defer",
               timeout=30, what="the scheduler defers under load")
        loaded_from = time.time()
        during = expect(arr, lambda: [r for r in records(arr) if r["portion"] == "g1" and r["result"] == "succeeded"
                                      and r["start"] >= loaded_from and r["deferrals"] > 0 and fio.poll() is None],
                        timeout=50, what="a deferred backup runs while the load lasts")
    finally:
        load_off(fio)
    sched = arr.cluster("g1-0")["backup"]["scheduler"]
    assert 0 < sched["maxDeferredAge"] < 8.0, sched  # maxAge of TWO_GROUPS' g1
    forced = [r for r in during if r["trigger"] == "max-age"]
    assert all(r["loadAtStart"] >= 0.5 and r["rateLimit"] > 0 for r in forced), forced
    # deferred again under load; as soon as the load drops, it runs
    fio = load_on()
    try:
        expect(arr, lambda: (st := arr.cluster("g1-0")["backup"]["scheduler"])["action"] == "defer"
               and st["deferrals"] > 0, timeout=60, what="deferred again")
    finally:
        load_off(fio)
    after = expect(arr, lambda: [r for r in records(arr) if r["trigger"] == "load"], timeout=60,
                   what="a deferred backup starts once the load drops")[0]
    assert after["deferrals"] > 0 and after["loadAtStart"] < 0.5 and after["result"] == "succeeded"
    assert all(r["portion"] in ("g1", "g2") for r in records(arr))


def test_area_failover_and_reform(make_array: Any) -> None:
    # power fencing off: the owner's block processor stays up (in backup mode) while its file
    # processor is restarted, so the re-form by the group's leader is what is tested
    arr: ArrayUp = make_array(clusterGroups=[{**base_config()["clusterGroups"][0], "powerFencing": False}])
    owner, epoch = expect(arr, arr.owner, what="fs1 owned")
    peer = "g1-1" if owner == "g1-0" else "g1-0"
    fault = arr.admin.add_fault("procinfo", 0, PORTION, ops=["read", "write"])
    for b in arr.blades:
        expect(arr, lambda b=b: arr.api(b, "GET", "/v1/cluster/area")["activeArea"] == "backup",
               timeout=10, what=f"{b} switches to the backup area")
        assert arr.api(b, "GET", "/v1/status")["activeArea"] == "backup"  # reported by the blade too
    # heartbeats go on in the backup area
    bdev, backup = store(arr, "backup", 0)
    with bdev:
        first = [s.heartbeat_counter if s else 0 for s in (backup.read_slot(0), backup.read_slot(1))]
        time.sleep(0.5)
        later = [s.heartbeat_counter if s else 0 for s in (backup.read_slot(0), backup.read_slot(1))]
    assert all(b > a for a, b in zip(first, later, strict=True)), (first, later)
    # a takeover works on the backup area: ownership is recorded there
    killed = arr.kill(owner, "fp")
    new = expect(arr, lambda: (o := arr.owner()) is not None and o[0] == peer and o, what="takeover in backup mode")
    assert new[1] > epoch

    def recorded() -> bool:
        with NBDBlockDevice.connect(arr.nbd_url("backup")) as dev:
            own = PortionStore(dev, offset=0, size=PORTION).read_group().ownership["fs1"]
        return (own.blade, own.epoch) == new

    expect(arr, recorded, timeout=10, what="the new ownership is recorded in the backup area")
    arr.restarted(owner, "fp", killed)  # and nasblade up gives fs1 back to it when it is back
    # the portion comes back: it is re-formed from the backup area and the blades switch back
    arr.admin.delete_fault(fault["id"])
    for b in arr.blades:
        expect(arr, lambda b=b: arr.api(b, "GET", "/v1/cluster/area")["activeArea"] == "primary",
               timeout=20, what=f"{b} switches back to the portion")
    now = expect(arr, lambda: (o := arr.owner()) is not None and o[0] == owner and o, timeout=60,
                 what="give-back to the restarted blade")
    assert now[1] > new[1]

    def primary_owner() -> tuple[str, int]:
        with NBDBlockDevice.connect(arr.nbd_url("procinfo")) as dev:
            own = PortionStore(dev, offset=0, size=PORTION).read_group().ownership["fs1"]
        return own.blade, own.epoch

    expect(arr, lambda: primary_owner() == now, timeout=10, what="the portion records the give-back")
    pdev, primary = store(arr, "procinfo", 0)
    with pdev:
        group = primary.read_group()
        restores = [r for r in group.backups if r.get("kind") == "restore"]
        assert restores and restores[-1]["result"] == "succeeded"
        c0 = [s.heartbeat_counter for s in (primary.read_slot(0), primary.read_slot(1)) if s]
        time.sleep(0.5)
        c1 = [s.heartbeat_counter for s in (primary.read_slot(0), primary.read_slot(1)) if s]
    assert len(c0) == 2 and all(b != a for a, b in zip(c0, c1, strict=True))
    events = arr.api(peer, "GET", "/v1/cluster/area")["events"]
    assert [e["to"] for e in events] == ["backup", "primary"]
    expect(arr, lambda: arr.served_by(owner), what="the home blade serves fs1")


def metrics(arr: ArrayUp, blade: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """The blade's ``GET /v1/metrics`` (with the blade token), parsed."""
    u = urlparse(arr.blades[blade].api)
    conn = http.client.HTTPConnection(u.hostname or "", u.port, timeout=30)
    conn.request("GET", "/v1/metrics", headers={"Authorization": f"Bearer {arr.token}"})
    resp = conn.getresponse()
    body = resp.read().decode()
    conn.close()
    assert resp.status == 200, body
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(body) for s in family.samples}


def test_backup_state_in_blade_metrics(make_array: Any) -> None:
    """The cluster member's part of ``GET /v1/metrics`` (``nasblade.cluster.metrics``): the
    group's last backup and its age, on every blade of the group; and which blade serves fs1."""
    arr: ArrayUp = make_array()
    me = {"group": "g1", "blade": "g1-1"}

    def one(got: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float | None:
        return got.get((name, frozenset({**me, **labels}.items())))

    arr.api("g1-1", "POST", "/v1/cluster/backups", {})
    got = metrics(arr, "g1-1")
    assert one(got, "nasblade_blade_backup_running") == 0
    assert one(got, "nasblade_blade_group_backup_last_succeeded") == 1
    age = one(got, "nasblade_blade_group_backup_age_seconds")
    assert age is not None and 0 <= age < 30
    # the home blade serves fs1, its peer may serve it; both report it
    assert one(got, "nasblade_blade_filesystem_served", fs="fs1") == 0
    home = metrics(arr, "g1-0")
    assert home[("nasblade_blade_filesystem_served", frozenset({"group": "g1", "blade": "g1-0", "fs": "fs1"}.items()))] == 1
