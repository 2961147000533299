"""The data plane's figures on the operator's /metrics (datametrics.py): offline from fed
figures and statuses, and from the running operator against a real controller (tier 1)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import prometheus_client as prom
import pytest
from conftest import Kubectl, assert_clean
from nasblade_operator import arrayapi, datametrics, metrics
from podlife import FakeKubelet
from prometheus_client.parser import text_string_to_metric_families


def samples() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = prom.generate_latest(metrics.REGISTRY).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def value(name: str, **labels: str) -> float | None:
    return samples().get((name, tuple(sorted(labels.items()))))


def test_controller_figures_and_forget() -> None:
    f = arrayapi.Figures(iops=120.0, read_mbps=2.5, write_mbps=1.0, queue_depth=3.0, dirty_ratio=0.25,
                         cache_size=1024, cache_used=512, dirty_bytes=256, hit_ratio=0.9)
    datametrics.controller_figures("ns1", "a9", f, lus=7)
    assert value("nasblade_controller_up", namespace="ns1", array="a9") == 1
    assert value("nasblade_controller_bytes_per_second", namespace="ns1", array="a9", direction="read") == 2.5e6
    assert value("nasblade_controller_cache_bytes", namespace="ns1", array="a9", kind="dirty") == 256
    assert value("nasblade_controller_lus", namespace="ns1", array="a9") == 7
    datametrics.array_status("ns1", "a9", {"conditions": [{"type": "Ready", "status": "True"},
                                                          {"type": "Degraded", "status": "False"}]})
    assert value("nasblade_diskarray_condition", namespace="ns1", array="a9", condition="Degraded") == 0
    datametrics.controller_unreachable("ns1", "a9")
    assert value("nasblade_controller_up", namespace="ns1", array="a9") == 0
    datametrics.forget("DiskArray", "ns1", "a9")
    assert not [k for k in samples() if ("array", "a9") in k[1]]


def test_array_health() -> None:
    answer = {"state": "degraded", "repairedBlocks": 3, "lostBlocks": 1,
              "rebuild": [{"device": 2, "done": 256, "total": 1024}],
              "devices": [{"index": 0, "state": "ok", "readErrors": 2, "writeErrors": 0, "checksumErrors": 3},
                          {"index": 1, "state": "failed", "readErrors": 16, "writeErrors": 1, "checksumErrors": 0},
                          {"index": 2, "state": "rebuilding", "readErrors": 0, "writeErrors": 0, "checksumErrors": 0},
                          {"index": 3, "state": "ok"}]}
    datametrics.array_health("ns1", "a8", answer)
    a = {"namespace": "ns1", "array": "a8"}
    assert value("nasblade_array_degraded", **a) == 1
    assert [value("nasblade_array_device_failed", **a, device=str(i)) for i in range(4)] == [0, 1, 0, 0]
    assert [value("nasblade_array_device_rebuilt_ratio", **a, device=str(i)) for i in range(4)] == [1, 0, 0.25, 1]
    assert value("nasblade_array_device_errors", **a, device="1", kind="read") == 16
    assert value("nasblade_array_device_errors", **a, device="0", kind="checksum") == 3
    assert value("nasblade_array_blocks", **a, kind="lost") == 1
    datametrics.array_health("ns1", "a8", {"state": "ok", "devices": [{"index": i, "state": "ok"} for i in range(4)]})
    assert value("nasblade_array_degraded", **a) == 0
    assert value("nasblade_array_device_rebuilt_ratio", **a, device="2") == 1
    datametrics.forget("DiskArray", "ns1", "a8")
    assert not [k for k in samples() if ("array", "a8") in k[1]]


def test_group_status() -> None:
    status = {
        "blades": [{"name": "g9-blade-0", "state": "Running", "fileSystems": ["home"]},
                   {"name": "g9-blade-1", "state": "Failed", "fileSystems": ["data"]}],
        "fileSystems": [{"name": "home", "blade": "g9-blade-0"}, {"name": "data", "blade": "g9-blade-1"}],
        "conditions": [{"type": "Ready", "status": "False"}],
        "backups": {"lastSuccessful": "2026-12-04T10:00:00Z"},
    }
    datametrics.group_status("ns1", "g9", array="a9", status=status, heartbeats={"g9-blade-0": 0.4},
                             backup_max_age=3600)
    served = {fs: value("nasblade_filesystem_served", namespace="ns1", array="a9", group="g9", filesystem=fs)
              for fs in ("home", "data")}
    assert served == {"home": 1, "data": 0}
    assert value("nasblade_blade_up", namespace="ns1", group="g9", blade="g9-blade-1") == 0
    assert value("nasblade_blade_heartbeat_age_seconds", namespace="ns1", group="g9", blade="g9-blade-0") == 0.4
    assert value("nasblade_backup_last_success_timestamp_seconds", namespace="ns1", group="g9") == 1796378400.0
    # scaled down to one blade: the other's series go
    status["blades"] = status["blades"][:1]
    datametrics.group_status("ns1", "g9", array="a9", status=status, heartbeats={}, backup_max_age=3600)
    assert value("nasblade_blade_up", namespace="ns1", group="g9", blade="g9-blade-1") is None
    datametrics.forget("ClusterGroup", "ns1", "g9")
    assert not [k for k in samples() if ("group", "g9") in k[1]]


@pytest.mark.tier1
def test_running_operator_exports_the_data_plane(
    kubectl: Kubectl, operator: Callable[[], Any], token_secret: Callable[[str], None], kubelet: FakeKubelet,
) -> None:
    """The real operator, a real controller: once the group is Ready the metrics show the
    controller up with its LUs, both file systems served, both blades up; a failed blade's file
    system moves to its partner and stays served."""
    from test_tier1_operator import array, group, wait_until

    ns = kubectl.namespace
    token_secret("a1")
    with operator() as runner:
        kubectl.apply(array())
        kubectl.apply(group(failover={"giveBack": "Manual"}))
        kubectl.wait("clustergroup/g1", "condition=Ready", timeout=90)
        wait_until("controller figures", lambda: value("nasblade_controller_up", namespace=ns, array="a1") == 1,
                   timeout=30)
        wait_until("file systems served", lambda: all(
            value("nasblade_filesystem_served", namespace=ns, array="a1", group="g1", filesystem=fs) == 1
            for fs in ("home", "scratch")), timeout=30)
        lus = value("nasblade_controller_lus", namespace=ns, array="a1")
        assert lus is not None and lus >= 5  # program, procinfo, backup, two file systems
        assert value("nasblade_diskarray_condition", namespace=ns, array="a1", condition="Ready") == 1
        assert value("nasblade_clustergroup_condition", namespace=ns, group="g1", condition="Ready") == 1
        for b in ("g1-blade-0", "g1-blade-1"):
            assert value("nasblade_blade_up", namespace=ns, group="g1", blade=b) == 1
        # blade 0 fails: its file system moves to blade 1 (giveBack Manual keeps it there) and
        # both stay served; the takeover is counted
        before = value("nasblade_operator_failovers_total", reason="Failover") or 0
        kubelet.fail(ns, "g1-blade-0")
        wait_until("everything on blade 1", lambda: value("nasblade_blade_filesystems", namespace=ns, group="g1",
                                                          blade="g1-blade-1") == 2, timeout=60)
        assert all(value("nasblade_filesystem_served", namespace=ns, array="a1", group="g1", filesystem=fs) == 1
                   for fs in ("home", "scratch"))
        assert (value("nasblade_operator_failovers_total", reason="Failover") or 0) >= before + 1
    assert_clean(runner)
