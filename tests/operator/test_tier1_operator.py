"""The real operator (kopf.testing.KopfRunner) against the tier-1 API server.

Pod life is played by ``FakeKubelet``; the controller is a real ``nasblade controller``
process; the blades' management API is ``FakeBlades`` (see conftest.py).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from conftest import Controller, Kubectl, assert_clean
from fakeblade import FakeBlades
from nasblade_operator import naming
from podlife import FakeKubelet

pytestmark = pytest.mark.tier1

FS = [
    {"name": "home", "size": "64Mi", "clusterGroup": "g1", "exports": [{"clients": ["10.0.0.0/8"]}]},
    {"name": "scratch", "size": "48Mi", "clusterGroup": "g1"},  # mkfs needs at least 48 MiB
]


def array(name: str = "a1", **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "devices": {"count": 2, "size": "1Gi"},
        "areas": {"programSize": "16Mi", "processorInfoSize": "8Mi", "backupSize": "8Mi", "portions": 4},
        "fileSystems": FS,
    }
    body.update(spec)
    return {"apiVersion": "nasblade.io/v1alpha1", "kind": "DiskArray", "metadata": {"name": name}, "spec": body}


def group(name: str = "g1", **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"diskArrayRef": {"name": "a1"}, "blades": {"count": 2},
                            "heartbeat": {"interval": "200ms", "failureTimeout": "1s"}}
    body.update(spec)
    return {"apiVersion": "nasblade.io/v1alpha1", "kind": "ClusterGroup", "metadata": {"name": name}, "spec": body}


def wait_until(what: str, fn: Callable[[], Any], timeout: float = 60) -> Any:
    """Poll ``fn`` (a cheap kubectl read) until it returns something truthy; bounded."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


def condition(obj: dict[str, Any] | None, type_: str) -> dict[str, Any]:
    for c in (obj or {}).get("status", {}).get("conditions", []):
        if c["type"] == type_:
            return dict(c)
    return {}


def events(kubectl: Kubectl, name: str) -> list[tuple[str, str]]:
    items = kubectl.list("events")
    return [(e["type"], e["reason"]) for e in items if e["involvedObject"]["name"] == name]


def service_blade(kubectl: Kubectl, fs: str) -> str:
    svc = kubectl.get("service", f"a1-{fs}-nfs")
    return str((svc or {}).get("spec", {}).get("selector", {}).get("nasblade.io/blade", ""))


def test_array_and_group_come_up(
    kubectl: Kubectl, operator: Callable[[], Any], controller: Controller, token_secret: Callable[[str], None],
) -> None:
    token_secret("a1")
    with operator() as runner:
        kubectl.apply(array())
        kubectl.apply(group())
        kubectl.wait("diskarray/a1", "condition=Ready", timeout=90)
        kubectl.wait("clustergroup/g1", "condition=Ready", timeout=60)
        a = kubectl.get("diskarray", "a1")
        g = kubectl.get("clustergroup", "g1")
        # A changed cache size reaches the controller's pod template.
        kubectl("patch", "diskarray", "a1", "--type=merge", "-p", json.dumps({"spec": {"controller": {"cacheSize": "64Mi"}}}))
        wait_until("new template", lambda: str(64 << 20) in
                   (kubectl.get("statefulset", "a1-controller") or {})["spec"]["template"]["spec"]["containers"][0]["args"])
        kubectl.wait("diskarray/a1", "condition=Ready", timeout=60)
        a = kubectl.get("diskarray", "a1")
    assert_clean(runner)
    assert a is not None and g is not None
    # DiskArray children and status.
    sts = kubectl.get("statefulset", "a1-controller")
    assert sts is not None and sts["spec"]["replicas"] == 1
    assert [c["metadata"]["name"] for c in sts["spec"]["volumeClaimTemplates"]] == ["dev-0", "dev-1"]
    assert sts["metadata"]["ownerReferences"][0]["name"] == "a1"
    assert kubectl.get("service", "a1-controller") is not None
    assert a["status"]["fileSystemsReady"] == "2/2"
    assert {f["name"]: (f["formatted"], bool(f["luCreated"])) for f in a["status"]["fileSystems"]} == \
        {"home": (True, True), "scratch": (True, True)}
    # each file system its own NFS slot, kept in the status (diskarray.nfsslots)
    assert {f["name"]: f["nfsSlot"] for f in a["status"]["fileSystems"]} == {"home": 0, "scratch": 1}
    assert a["status"]["software"] == {"version": "0.1.0", "seeded": ["0.1.0"]}
    assert condition(a, "Ready")["observedGeneration"] == a["metadata"]["generation"]
    assert [{k: p[k] for k in ("index", "group")} for p in a["status"]["portions"]] == [{"index": 0, "group": "g1"}]
    # The LUs exist on the real controller, and the program LU holds the bundled software.
    from nasblade.controller.apiclient import ControlClient

    listed = ControlClient(controller.api, controller.token).list_lus()
    lus = {lu["name"]: lu["size"] for lu in (listed["lus"] if isinstance(listed, dict) else listed)}
    assert lus == {"program": 16 << 20, "procinfo": 8 << 20, "backup": 8 << 20, "fs-home": 64 << 20, "fs-scratch": 48 << 20}
    from nasblade.devices import open_device
    from nasblade.program.catalog import ProgramStore

    dev = open_device(f"nbd://{controller.nbd}/program")
    try:
        assert ProgramStore(dev).catalog().versions() == ["0.1.0"]
    finally:
        dev.close()
    # ClusterGroup children and status.
    pods = kubectl.list("pods", "nasblade.io/cluster-group=g1")
    assert sorted(p["metadata"]["name"] for p in pods) == ["g1-blade-0", "g1-blade-1"]
    assert {p["metadata"]["labels"]["nasblade.io/software-version"] for p in pods} == {"0.1.0"}
    assert service_blade(kubectl, "home") == "g1-blade-0" and service_blade(kubectl, "scratch") == "g1-blade-1"
    # each Service maps the standard NFS ports onto its file system's own container ports
    svc = kubectl.get("service", "a1-scratch-nfs")
    assert svc is not None
    assert {(p["protocol"], p["port"], p["targetPort"]) for p in svc["spec"]["ports"]} == {
        (proto, port, target) for proto in ("TCP", "UDP")
        for port, target in zip((2049, 20048, 111), naming.nfs_container_ports(1), strict=True)}
    assert g["status"]["portion"] == 0 and g["status"]["bladesReady"] == "2/2"
    assert {b["name"]: b["fileSystems"] for b in g["status"]["blades"]} == {"g1-blade-0": ["home"], "g1-blade-1": ["scratch"]}
    assert condition(g, "Degraded")["status"] == "False"
    got = events(kubectl, "a1")
    assert ("Normal", "Created") in got and ("Normal", "LUsCreated") in got and ("Normal", "Ready") in got
    assert ("Normal", "BladeCreated") in events(kubectl, "g1")
    assert ("Normal", "Updated") in events(kubectl, "a1")

    # Restart: nothing is created twice, status stays Ready.
    before = {(p["metadata"]["name"], p["metadata"]["uid"]) for p in kubectl.list("pods")}
    n_events = len(kubectl.list("events"))
    with operator() as runner:
        time.sleep(4)  # give the resumed handlers and the daemon time to (not) act
    assert_clean(runner)
    assert {(p["metadata"]["name"], p["metadata"]["uid"]) for p in kubectl.list("pods")} == before
    again = [e for e in kubectl.list("events")[n_events:] if e["reason"] in ("Created", "Updated", "BladeCreated", "LUsCreated")]
    assert again == []
    assert condition(kubectl.get("diskarray", "a1"), "Ready")["status"] == "True"


def test_blades_wait_until_their_file_systems_are_formatted(
    kubectl: Kubectl, operator: Callable[[], Any], token_secret: Callable[[str], None], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """mkfs of fs-home fails (the operator "crashed" before it): no blade pod is created until a
    later reconcile has formatted it and recorded that; then the group comes up."""
    from nasblade_operator import arrayapi

    failing = threading.Event()
    failing.set()
    attempts: list[str] = []
    real = arrayapi._mkfs_sync

    def mkfs(nbd: str, lu: str, *, root_mode: int) -> None:
        if lu == "fs-home" and failing.is_set():
            attempts.append(lu)
            raise ConnectionResetError("interrupted before mkfs")
        real(nbd, lu, root_mode=root_mode)

    monkeypatch.setattr(arrayapi, "_mkfs_sync", mkfs)
    token_secret("a1")
    with operator() as runner:
        kubectl.apply(array())
        kubectl.apply(group())
        wait_until("g1 claimed a portion", lambda: (kubectl.get("clustergroup", "g1") or {}).get("status", {}).get("portion") == 0)
        n = len(attempts)
        wait_until("two more failed formats", lambda: len(attempts) >= n + 2)
        a = kubectl.get("diskarray", "a1")
        assert kubectl.list("pods", "nasblade.io/cluster-group=g1") == []
        failing.clear()
        kubectl.wait("clustergroup/g1", "condition=Ready", timeout=90)
        done = kubectl.get("diskarray", "a1")
    assert_clean(runner)
    assert a is not None and done is not None
    assert condition(a, "Ready")["status"] == "False" and "interrupted before mkfs" in condition(a, "Ready")["message"]
    assert {f["name"]: f["formatted"] for f in a["status"]["fileSystems"]} == {"home": False, "scratch": False}
    assert {f["name"]: f["formatted"] for f in done["status"]["fileSystems"]} == {"home": True, "scratch": True}
    assert len(kubectl.list("pods", "nasblade.io/cluster-group=g1")) == 2


def test_file_systems_change_while_the_blades_run(
    kubectl: Kubectl, operator: Callable[[], Any], blades: FakeBlades, token_secret: Callable[[str], None],
) -> None:
    """A file system added to a running DiskArray is formatted, written into every blade pod's
    cluster configuration (the annotation a restarted container reads) and sent to every blade
    (PUT /v1/cluster/config), its LU into the NBD access file (the controller pod annotated with
    the file's digest), and gets its NFS Service on its home blade; once removed, the
    blades are told again and its Service goes. No blade pod is replaced for either."""
    token_secret("a1")
    extra = {"name": "data", "size": "48Mi", "clusterGroup": "g1", "exports": [{"clients": ["10.1.0.0/16"]}]}

    def annotated(pod: str) -> list[str]:
        p = kubectl.get("pod", pod) or {}
        config = json.loads(p.get("metadata", {}).get("annotations", {}).get("nasblade.io/cluster-config", "{}"))
        return sorted(f["name"] for f in config.get("fileSystems", []))

    def told(names: list[str]) -> set[str]:
        return {b for b, _, fs in blades.of("configure") if fs == names}

    blade_pods = {"g1-blade-0", "g1-blade-1"}
    with operator() as runner:
        kubectl.apply(array())
        kubectl.apply(group())
        kubectl.wait("clustergroup/g1", "condition=Ready", timeout=90)
        uids = {p["metadata"]["name"]: p["metadata"]["uid"] for p in kubectl.list("pods", "nasblade.io/cluster-group=g1")}
        assert blades.of("configure") == []  # the pods were made with the group's file systems

        def access_digest() -> str | None:
            pod = kubectl.get("pod", "a1-controller-0") or {}
            return pod.get("metadata", {}).get("annotations", {}).get("nasblade.io/nbd-access")

        before = access_digest()
        kubectl("patch", "diskarray", "a1", "--type=merge", "-p", json.dumps({"spec": {"fileSystems": [*FS, extra]}}))
        wait_until("both blades told of data", lambda: told(["data", "home", "scratch"]) == blade_pods, timeout=90)
        # the new access file: the controller pod annotated with its digest (the kubelet syncs it now)
        assert access_digest() not in (None, before)
        assert all(annotated(p) == ["data", "home", "scratch"] for p in blade_pods)
        wait_until("data's NFS Service on its home blade", lambda: service_blade(kubectl, "data") == "g1-blade-0")
        config = blades.configs["g1-blade-1"]
        data = next(f for f in config["fileSystems"] if f["name"] == "data")
        assert data["lu"] == "fs-data" and data["home"] == "g1-blade-0"
        assert data["serve"]["exports"][0]["clients"] == ["10.1.0.0/16"]
        a = kubectl.get("diskarray", "a1") or {}
        assert {f["name"]: f["formatted"] for f in a["status"]["fileSystems"]}["data"] is True

        kubectl("patch", "diskarray", "a1", "--type=merge", "-p", json.dumps({"spec": {"fileSystems": FS}}))
        wait_until("both blades told data is gone", lambda: told(["home", "scratch"]) == blade_pods, timeout=60)
        assert all(annotated(p) == ["home", "scratch"] for p in blade_pods)
        wait_until("data's NFS Service deleted", lambda: kubectl.get("service", "a1-data-nfs") is None)
        time.sleep(2)  # later passes see the blades agree: nothing more is sent
        n = len(blades.of("configure"))
        time.sleep(3)
        assert len(blades.of("configure")) == n
        assert {p["metadata"]["name"]: p["metadata"]["uid"]
                for p in kubectl.list("pods", "nasblade.io/cluster-group=g1")} == uids
    assert_clean(runner)
    assert ("Normal", "FileSystemsChanged") in events(kubectl, "g1")


def test_invalid_spec_gives_condition_and_warning(kubectl: Kubectl, operator: Callable[[], Any]) -> None:
    too_big = array(fileSystems=[{"name": "huge", "size": "5Gi", "clusterGroup": "g1"}])
    with operator() as runner:
        kubectl.apply(too_big)
        kubectl.apply(group("g2", diskArrayRef={"name": "nope"}))
        a = wait_until("Ready=False", lambda: condition(kubectl.get("diskarray", "a1"), "Ready").get("reason") == "InvalidSpec"
                       and kubectl.get("diskarray", "a1"))
        g = wait_until("g2 refused", lambda: condition(kubectl.get("clustergroup", "g2"), "Ready").get("reason") == "DiskArrayMissing"
                       and kubectl.get("clustergroup", "g2"))
    assert_clean(runner)
    assert "spec.fileSystems" in condition(a, "Ready")["message"] and "add devices" in condition(a, "Ready")["message"]
    assert ("Warning", "InvalidSpec") in events(kubectl, "a1")
    assert ("Warning", "DiskArrayMissing") in events(kubectl, "g2")
    assert "fix spec.diskArrayRef.name" in condition(g, "Ready")["message"]
    assert kubectl.get("statefulset", "a1-controller") is None


def test_failover_backup_rollout_and_deletion(
    kubectl: Kubectl, operator: Callable[[], Any], kubelet: FakeKubelet, blades: FakeBlades,
    token_secret: Callable[[str], None], namespace: str,
) -> None:
    token_secret("a1")
    with operator() as runner:
        kubectl.apply(array(deletionPolicy="Delete"))
        kubectl.apply(group(backup={"interval": "10s", "maxAge": "1h", "loadThreshold": 100},
                            failover={"giveBack": "Manual"}))
        kubectl.wait("clustergroup/g1", "condition=Ready", timeout=90)

        # Failover: blade 0 stops being Ready; after failureTimeout its file system moves.
        kubelet.fail(namespace, "g1-blade-0")
        wait_until("home served by blade 1", lambda: service_blade(kubectl, "home") == "g1-blade-1", timeout=30)
        assert ("g1-blade-1", "takeover", "home") in blades.calls
        g = wait_until("failover recorded", lambda: (kubectl.get("clustergroup", "g1") or {}).get("status", {}).get("failovers")
                       and kubectl.get("clustergroup", "g1"))
        assert g["status"]["failovers"][-1]["reason"] == "Failover"
        assert g["status"]["failovers"][-1]["durationSeconds"] >= 1.0  # failureTimeout
        # The failed pod is replaced; with giveBack Manual the file system stays on blade 1 ...
        wait_until("replacement Ready", lambda: (kubectl.get("clustergroup", "g1") or {}).get("status", {}).get("bladesReady") == "2/2")
        assert service_blade(kubectl, "home") == "g1-blade-1"
        # ... and goes home as soon as giveBack is Automatic.
        kubectl("patch", "clustergroup", "g1", "--type=merge", "-p", json.dumps({"spec": {"failover": {"giveBack": "Automatic"}}}))
        wait_until("give-back", lambda: service_blade(kubectl, "home") == "g1-blade-0", timeout=30)
        assert ("g1-blade-1", "release", "home") in blades.calls
        assert ("g1-blade-0", "takeover", "home") in blades.calls
        got = events(kubectl, "g1")
        assert ("Normal", "FailedOver") in got and ("Normal", "GaveBack") in got
        assert ("Warning", "BladeFailed") in got and ("Normal", "BladeReplaced") in got

        # On-demand backup through a blade; the annotation goes away, the result is in status.
        kubectl("annotate", "clustergroup", "g1", "nasblade.io/backup-now=1")
        wait_until("on-demand backup", lambda: any(c[1] == "backup" and c[2]["trigger"] == "OnDemand" for c in blades.calls))
        wait_until("annotation removed", lambda: "nasblade.io/backup-now" not in
                   ((kubectl.get("clustergroup", "g1") or {})["metadata"].get("annotations") or {}))
        g = wait_until("BackedUp", lambda: condition(kubectl.get("clustergroup", "g1"), "BackedUp").get("status") == "True"
                       and kubectl.get("clustergroup", "g1"))
        assert g["status"]["backups"]["history"][-1]["portions"] == [0]
        assert ("Normal", "BackupSucceeded") in events(kubectl, "g1")
        # Interval backup (interval 10s).
        wait_until("interval backup", lambda: any(c[1] == "backup" and c[2]["trigger"] == "Interval" for c in blades.calls),
                   timeout=30)

        # Rollout: one blade at a time, each first handing its file systems to the peer.
        blades.calls.clear()
        kubectl("patch", "diskarray", "a1", "--type=merge", "-p", json.dumps({"spec": {"software": {"version": "0.2.0"}}}))
        seen: list[tuple[int, ...]] = []

        def upgraded() -> bool:
            pods = kubectl.list("pods", "nasblade.io/cluster-group=g1")
            versions = tuple(sorted(int(p["metadata"]["labels"]["nasblade.io/software-version"] == "0.2.0") for p in pods))
            seen.append((len(pods), *versions))
            return len(pods) == 2 and all(versions)
        wait_until("rollout", upgraded, timeout=90)
        # Never both blades away at once (at most one missing at a time).
        assert min(s[0] for s in seen) >= 1
        releases = [c for c in blades.calls if c[1] == "release"]
        assert ("g1-blade-0", "release", "home") in releases and ("g1-blade-1", "release", "scratch") in releases
        kubectl.wait("clustergroup/g1", "condition=Ready", timeout=60)
        assert ("Normal", "Upgraded") in events(kubectl, "g1")
        # The Prometheus metrics saw it all.
        from nasblade_operator import metrics
        from prometheus_client import generate_latest

        text = generate_latest(metrics.REGISTRY).decode()
        for line in ('nasblade_operator_failovers_total{reason="Failover"}', 'nasblade_operator_failovers_total{reason="Rollout"}',
                     'nasblade_operator_backups_total{result="Succeeded",trigger="OnDemand"}',
                     f'nasblade_operator_blades{{group="g1",namespace="{namespace}",state="Running"}} 2.0'):
            assert line in text, line
        assert "nasblade_operator_failover_seconds_count" in text and 'nasblade_operator_api_requests_total{verb="create"}' in text

        # Deleting the group is refused while it serves file systems ...
        kubectl("delete", "clustergroup", "g1", "--wait=false")
        wait_until("deletion blocked", lambda: ("Warning", "DeletionBlocked") in events(kubectl, "g1"))
        assert kubectl.get("clustergroup", "g1") is not None
        # ... and deleting the array takes everything down, PVCs included (policy Delete).
        pvcs = wait_until("PVCs", lambda: kubectl.list("pvc"))
        assert sorted(p["metadata"]["name"] for p in pvcs) == ["dev-0-a1-controller-0", "dev-1-a1-controller-0"]
        kubectl("delete", "diskarray", "a1", "--wait=false")
        wait_until("array gone", lambda: kubectl.get("diskarray", "a1") is None, timeout=60)
        assert kubectl.get("clustergroup", "g1") is None
        wait_until("PVCs deleted", lambda: all(p["metadata"].get("deletionTimestamp") for p in kubectl.list("pvc")) or not kubectl.list("pvc"))
    assert_clean(runner)


def test_deletion_retains_data(
    kubectl: Kubectl, operator: Callable[[], Any], token_secret: Callable[[str], None],
) -> None:
    token_secret("a1")
    with operator() as runner:
        kubectl.apply(array(fileSystems=[]))
        kubectl.wait("diskarray/a1", "condition=Ready", timeout=90)
        wait_until("PVCs", lambda: len(kubectl.list("pvc")) == 2)
        kubectl("delete", "diskarray", "a1", "--wait=false")
        wait_until("array gone", lambda: kubectl.get("diskarray", "a1") is None, timeout=60)
        wait_until("statefulset gone", lambda: kubectl.get("statefulset", "a1-controller") is None)
    assert_clean(runner)
    pvcs = kubectl.list("pvc")
    assert len(pvcs) == 2 and not any(p["metadata"].get("deletionTimestamp") for p in pvcs)
    assert ("Normal", "DataRetained") in events(kubectl, "a1")


def test_heartbeat_loss_fails_over(
    kubectl: Kubectl, operator: Callable[[], Any], blades: FakeBlades, token_secret: Callable[[str], None],
) -> None:
    """A blade whose pod stays Ready but whose heartbeat stops is failed over and replaced."""
    token_secret("a1")
    with operator() as runner:
        kubectl.apply(array())
        kubectl.apply(group(failover={"giveBack": "Manual"}))
        kubectl.wait("clustergroup/g1", "condition=Ready", timeout=90)
        uid = (kubectl.get("pod", "g1-blade-1") or {})["metadata"]["uid"]
        blades.heartbeat_age["g1-blade-1"] = 30.0
        wait_until("scratch on blade 0", lambda: service_blade(kubectl, "scratch") == "g1-blade-0", timeout=30)
        blades.heartbeat_age.clear()
        wait_until("blade 1 replaced", lambda: (kubectl.get("pod", "g1-blade-1") or {}).get("metadata", {}).get("uid") not in (None, uid))
        g = kubectl.get("clustergroup", "g1")
    assert_clean(runner)
    assert g is not None and g["status"]["activeArea"] == "portion"
    assert ("g1-blade-0", "takeover", "scratch") in blades.calls


def test_group_deletion_waits_until_its_file_systems_move(
    kubectl: Kubectl, operator: Callable[[], Any], token_secret: Callable[[str], None],
) -> None:
    token_secret("a1")
    with operator() as runner:
        kubectl.apply(array())
        kubectl.apply(group("g1"))
        kubectl.apply(group("g2"))
        kubectl.wait("clustergroup/g1", "condition=Ready", timeout=90)
        kubectl("delete", "clustergroup", "g1", "--wait=false")
        wait_until("deletion blocked", lambda: ("Warning", "DeletionBlocked") in events(kubectl, "g1"))
        # Move both file systems to g2: g1 goes, its pods and Services with it, and its portion is free.
        moved = [dict(fs, clusterGroup="g2") for fs in FS]
        kubectl("patch", "diskarray", "a1", "--type=merge", "-p", json.dumps({"spec": {"fileSystems": moved}}))
        wait_until("g1 gone", lambda: kubectl.get("clustergroup", "g1") is None, timeout=60)
        wait_until("services on g2", lambda: service_blade(kubectl, "home") == "g2-blade-0"
                   and service_blade(kubectl, "scratch") == "g2-blade-1", timeout=60)
        wait_until("g1 pods gone", lambda: not kubectl.list("pods", "nasblade.io/cluster-group=g1"))
        portions = wait_until("portion released", lambda: [p for p in (kubectl.get("diskarray", "a1") or {})
                                                           .get("status", {}).get("portions", []) if p["group"] == "g1"] == []
                              and kubectl.get("diskarray", "a1"))
    assert_clean(runner)
    assert {p["group"] for p in portions["status"]["portions"]} == {"g2"}


def area_of_portions(kubectl: Kubectl) -> dict[str, str]:
    status = (kubectl.get("diskarray", "a1") or {}).get("status", {})
    return {str(p["group"]): str(p.get("activeArea")) for p in status.get("portions", [])}


def test_area_failover_shows_in_the_diskarray(
    kubectl: Kubectl, operator: Callable[[], Any], blades: FakeBlades, token_secret: Callable[[str], None],
) -> None:
    """A group whose blades run from the backup area after an area failover: the DiskArray shows
    it per portion and in its printer column, and shows the portion again when they switch back."""
    token_secret("a1")
    with operator() as runner:
        kubectl.apply(array())
        kubectl.apply(group("g1"))
        kubectl.apply(group("g2"))
        kubectl.wait("clustergroup/g1", "condition=Ready", timeout=90)
        wait_until("portions mirrored", lambda: area_of_portions(kubectl) == {"g1": "portion", "g2": "portion"})
        blades.active_area.update({"g1-blade-0": "backup", "g1-blade-1": "backup"})
        wait_until("g1 on its backup area", lambda: area_of_portions(kubectl) == {"g1": "backup", "g2": "portion"})
        a = kubectl.get("diskarray", "a1")
        table = kubectl("get", "diskarray", "a1").stdout
        blades.active_area.clear()
        wait_until("g1 back on its portion", lambda: area_of_portions(kubectl) == {"g1": "portion", "g2": "portion"})
        back = kubectl.get("diskarray", "a1")
    assert_clean(runner)
    assert a is not None and back is not None
    assert a["status"]["areas"]["activeProcessorInfoArea"] == "backup"
    assert back["status"]["areas"]["activeProcessorInfoArea"] == "portion"
    header, row = table.splitlines()[:2]
    # by the column's position: a cell may be empty (Redundancy before the controller's first
    # answer), and whitespace splitting would then shift every later column
    assert row[header.index("PI-AREA"):].split()[0] == "backup", table
    assert {p["index"] for p in back["status"]["portions"]} == {0, 1}


def test_ready_waits_until_the_owner_serves(
    kubectl: Kubectl, operator: Callable[[], Any], blades: FakeBlades, token_secret: Callable[[str], None],
) -> None:
    """Ready=True means NFS is served: while the owning blade reports that its file processor
    does not serve the file system yet, the group says FileSystemsStarting and names it."""
    token_secret("a1")
    blades.serving.update({"g1-blade-0": [], "g1-blade-1": []})
    with operator() as runner:
        kubectl.apply(array())
        kubectl.apply(group("g1"))
        wait_until("FileSystemsStarting", lambda: condition(kubectl.get("clustergroup", "g1"), "Ready").get(
            "reason") == "FileSystemsStarting", timeout=120)
        starting = condition(kubectl.get("clustergroup", "g1"), "Ready")
        status = kubectl.get("clustergroup", "g1")
        assert status is not None
        for fs in status["status"]["fileSystems"]:
            blades.serving[fs["blade"]] = [*blades.serving[fs["blade"]], fs["name"]]
        kubectl.wait("clustergroup/g1", "condition=Ready", timeout=90)
    assert_clean(runner)
    assert starting["status"] == "False"
    assert all(f"{fs['name']} (on {fs['blade']})" in starting["message"] for fs in status["status"]["fileSystems"])


def covered(extents: list[dict[str, Any]]) -> dict[int, list[tuple[int, int]]]:
    """Per device, the byte ranges ``[start, end)`` the runs cover, touching ranges joined."""
    out: dict[int, list[tuple[int, int]]] = {}
    for e in sorted(extents, key=lambda e: (e["device"], e["offset"])):
        runs = out.setdefault(int(e["device"]), [])
        start, end = int(e["offset"]), int(e["offset"]) + int(e["length"])
        if runs and runs[-1][1] == start:
            runs[-1] = (runs[-1][0], end)
        else:
            runs.append((start, end))
    return out


def test_diskarray_status_lists_every_lu_where_the_controller_placed_it(
    kubectl: Kubectl, operator: Callable[[], Any], controller: Controller, token_secret: Callable[[str], None],
) -> None:
    from nasblade.controller.apiclient import ControlClient

    control = ControlClient(controller.api, controller.token)
    token_secret("a1")

    def in_step() -> dict[str, Any] | None:
        """``status.lus`` when it says what ``GET /v1/lus`` says now (names, sizes, covered bytes)."""
        lus = (kubectl.get("diskarray", "a1") or {}).get("status", {}).get("lus")
        listed = {lu["name"]: (lu["size"], covered(lu["extents"])) for lu in control.list_lus()}
        got = {lu["name"]: (lu["size"], covered(lu["extents"])) for lu in lus or []}
        return {"status": lus} if lus and got == listed else None

    with operator() as runner:
        kubectl.apply(array())
        kubectl.wait("diskarray/a1", "condition=Ready", timeout=90)
        first = wait_until("status.lus equal to the controller's listing", in_step)["status"]
        # An LU grown twice in place (into the free space after it) is three segments on the
        # controller and one run in the status; a new LU appears with the next refresh.
        control.create_lu("extra", 4 << 20)
        control.update_lu("extra", size=8 << 20)
        control.update_lu("extra", size=12 << 20)
        assert len(control.get_lu("extra")["extents"]) == 3
        grown = wait_until("status.lus with the grown LU", lambda: (s := in_step()) and
                           any(lu["name"] == "extra" for lu in s["status"]) and s)["status"]
    assert_clean(runner)
    assert [lu["name"] for lu in first] == ["backup", "fs-home", "fs-scratch", "procinfo", "program"]
    assert all(lu["extents"] and {"device", "offset", "length"} == set(lu["extents"][0]) for lu in first)
    extra = next(lu for lu in grown if lu["name"] == "extra")
    assert extra["size"] == 12 << 20 and len(extra["extents"]) == 1 and extra["extents"][0]["length"] == 12 << 20
