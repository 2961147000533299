"""The devices' health of a DiskArray (diskarray/devices.py): the status it writes, the Events it
posts on transitions only, the Degraded condition; and the CRD accepting that status shape.
No I/O: the controller's ``GET /v1/array`` answers are built here (docs/control-api.md, "Array")."""

from __future__ import annotations

import copy
import datetime
from pathlib import Path
from typing import Any

import yaml
from nasblade_operator import conditions
from nasblade_operator.diskarray import devices

ROOT = Path(__file__).resolve().parents[2]
NOW = datetime.datetime(2026, 12, 4, 12, 0, tzinfo=datetime.UTC)


def device(index: int, state: str = "ok", **extra: Any) -> dict[str, Any]:
    d: dict[str, Any] = {"index": index, "path": f"/data/dev-{index}/device.img", "size": 1 << 30, "state": state,
                         "reason": "", "rebuilt": None, "readErrors": 0, "writeErrors": 0, "checksumErrors": 0,
                         "repaired": 0, "virtualDevice": index // 2}
    d.update(extra)
    return d


def answer(*devs: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """A mirror-2 array's ``GET /v1/array`` (devices 0,1 | 2,3 …)."""
    count = len(devs)
    degraded = any(d["state"] != "ok" for d in devs)
    a: dict[str, Any] = {
        "uuid": "u", "version": 2, "protection": "mirror-2", "copies": 2, "checksums": True,
        "state": "degraded" if degraded else "ok", "survives": 1, "repairedBlocks": 0, "lostBlocks": 0,
        "checksumErrors": sum(d["checksumErrors"] for d in devs),
        "rebuild": [{"device": d["index"], "done": d["rebuilt"], "total": 1 << 29} for d in devs if d["state"] == "rebuilding"],
        "virtualDevices": [{"index": v, "devices": [2 * v, 2 * v + 1]} for v in range(count // 2)],
        "scrub": {"running": False, "done": 0, "total": 0, "repaired": 0, "lost": 0, "last": None},
        "devices": list(devs),
    }
    a.update(extra)
    return a


class Array:
    """A DiskArray's status as the timer leaves it: each poll applies the patch like the API server."""

    def __init__(self) -> None:
        self.status: dict[str, Any] = {"conditions": [{"type": "Ready", "status": "True", "reason": "Ready",
                                                       "message": "", "lastTransitionTime": "2026-12-04T10:00:00Z",
                                                       "observedGeneration": 1}]}
        self.events: list[devices.Event] = []

    def poll(self, a: dict[str, Any]) -> devices.Assessment:
        found = devices.assess(a, name="a1", namespace="ns", status=copy.deepcopy(self.status), generation=1, now=NOW)
        for key, value in found.patch.items():
            if isinstance(value, dict) and isinstance(self.status.get(key), dict):  # merge patch
                merged = {**self.status[key], **value}
                self.status[key] = {k: v for k, v in merged.items() if v is not None}
            else:
                self.status[key] = value
        self.events += found.events
        return found

    def reasons(self) -> list[str]:
        return [e.reason for e in self.events]

    def degraded(self) -> dict[str, Any]:
        c = conditions.get_condition(self.status["conditions"], conditions.DEGRADED)
        assert c is not None
        return dict(c)


def test_a_healthy_array_is_written_once_then_costs_nothing() -> None:
    arr = Array()
    first = arr.poll(answer(device(0), device(1)))
    assert set(first.patch) == {"redundancy", "devices", "conditions"} and first.events == []
    assert arr.status["redundancy"] == {"protection": "mirror-2", "copies": 2, "survives": 1, "state": "ok", "rebuild": [],
                                        "lostBlocks": 0, "repairedBlocks": 0, "checksumErrors": 0,
                                        "parityMismatches": 0}
    assert arr.status["devices"][1] == {"index": 1, "state": "ok", "reason": "", "readErrors": 0, "writeErrors": 0,
                                        "checksumErrors": 0, "repaired": 0}
    assert arr.degraded()["status"] == "False" and arr.degraded()["reason"] == "AllDevicesOk"
    assert arr.degraded()["message"] == "all 2 devices ok (protection mirror-2)"
    assert conditions.is_true(arr.status["conditions"], conditions.READY)  # the other conditions are kept
    for _ in range(3):
        again = arr.poll(answer(device(0), device(1)))
        assert again.patch == {} and again.events == []


def test_a_failed_device_is_reported_once_with_what_it_means() -> None:
    arr = Array()
    arr.poll(answer(device(0), device(1), device(2), device(3)))
    failed = answer(device(0), device(1, "failed", reason="write error", writeErrors=1), device(2), device(3))
    found = arr.poll(failed)
    assert [(e.type, e.reason) for e in found.events] == [("Warning", "DeviceFailed")]
    assert found.events[0].message == ("device 1 failed: write error; data is at risk: device 0 holds the only good copy "
                                       "of mirror set 0 until device 1 is replaced and rebuilt")
    assert arr.status["redundancy"]["state"] == "degraded"
    assert arr.status["devices"][1]["state"] == "failed" and arr.status["devices"][1]["writeErrors"] == 1
    c = arr.degraded()
    assert (c["status"], c["reason"]) == ("True", "DeviceFailed")
    assert c["lastTransitionTime"] == "2026-12-04T12:00:00Z"
    assert c["message"].startswith("device 1 failed (write error): data is at risk: device 0 holds the only good copy")
    assert "kubectl -n ns delete pvc dev-1-a1-controller-0" in c["message"]
    assert "kubectl -n ns delete pod a1-controller-0" in c["message"]
    for _ in range(3):  # still failed: nothing new to say or write
        again = arr.poll(failed)
        assert again.patch == {} and again.events == []
    assert arr.reasons() == ["DeviceFailed"]


def test_a_three_way_mirror_survives_one_more() -> None:
    a = answer(device(0), device(1, "failed", reason="missing"), device(2), protection="mirror-3", copies=3, survives=2,
               virtualDevices=[{"index": 0, "devices": [0, 1, 2]}])
    found = Array().poll(a)
    assert found.events[0].message == "device 1 failed: missing; mirror set 0 survives 1 more device failure(s)"


def test_failed_then_rebuilding_then_ok() -> None:
    arr = Array()
    arr.poll(answer(device(0), device(1)))
    arr.poll(answer(device(0), device(1, "failed", reason="write error")))
    found = arr.poll(answer(device(0), device(1, "rebuilding", reason="replaced", rebuilt=1 << 20)))
    assert [(e.type, e.reason) for e in found.events] == [("Normal", "DeviceRebuilding")]
    assert arr.status["redundancy"]["rebuild"] == [{"device": 1, "done": 1 << 20, "total": 1 << 29}]
    assert arr.status["devices"][1]["rebuilt"] == 1 << 20
    c = arr.degraded()
    assert (c["status"], c["reason"]) == ("True", "Rebuilding")
    assert c["message"] == "device 1 is rebuilding (replaced): progress in status.redundancy.rebuild"
    progress = arr.poll(answer(device(0), device(1, "rebuilding", reason="replaced", rebuilt=1 << 28)))
    assert set(progress.patch) == {"redundancy", "devices"} and progress.events == []  # progress: no Event
    found = arr.poll(answer(device(0), device(1)))
    assert [(e.type, e.reason) for e in found.events] == [("Normal", "DeviceRebuilt")]
    assert arr.status["redundancy"]["rebuild"] == [] and "rebuilt" not in arr.status["devices"][1]
    c = arr.degraded()
    assert (c["status"], c["reason"]) == ("False", "AllDevicesOk")
    assert arr.reasons() == ["DeviceFailed", "DeviceRebuilding", "DeviceRebuilt"]
    assert arr.poll(answer(device(0), device(1))).patch == {}


def test_lost_blocks_and_checksum_errors_are_reported_when_they_grow() -> None:
    arr = Array()
    arr.poll(answer(device(0), device(1)))
    found = arr.poll(answer(device(0), device(1, checksumErrors=3, repaired=3), repairedBlocks=3))
    assert [(e.type, e.reason) for e in found.events] == [("Warning", "ChecksumErrors")]
    assert found.events[0].message == "3 checksum error(s) on device(s) 1 (3 in all); 3 block(s) repaired from the other copies"
    found = arr.poll(answer(device(0), device(1, checksumErrors=3, repaired=3), repairedBlocks=3, lostBlocks=2))
    assert [(e.type, e.reason) for e in found.events] == [("Warning", "DataLost")]
    assert found.events[0].message.startswith("2 block(s) lost: no copy held them correctly (2 in all)")
    assert arr.status["redundancy"]["lostBlocks"] == 2
    assert arr.poll(answer(device(0), device(1, checksumErrors=3, repaired=3), repairedBlocks=3, lostBlocks=2)).events == []
    # a restarted controller counts from 0 again: the status follows, and no Event
    restarted = arr.poll(answer(device(0), device(1)))
    assert restarted.events == [] and arr.status["redundancy"]["lostBlocks"] == 0
    assert arr.degraded()["status"] == "False"  # lost blocks are Events and figures, not a device state


def test_first_sight_of_a_failed_device_is_reported_and_the_scrub_result_kept() -> None:
    last = {"started": "2026-12-04T01:00:00Z", "finished": "2026-12-04T01:10:00Z", "bytes": 1 << 30,
            "repaired": 1, "lost": 0}
    arr = Array()
    found = arr.poll(answer(device(0, "failed", reason="16 read errors"), device(1),
                            scrub={"running": False, "last": last}))
    assert [e.reason for e in found.events] == ["DeviceFailed"]
    assert arr.status["redundancy"]["lastScrub"] == {**last, "parityMismatches": 0}  # none reported: 0


def test_a_spec_change_moves_only_the_conditions_generation() -> None:
    arr = Array()
    a = answer(device(0), device(1))
    arr.poll(a)
    found = devices.assess(a, name="a1", namespace="ns", status=arr.status, generation=2, now=NOW)
    assert set(found.patch) == {"conditions"} and found.events == []
    c = conditions.get_condition(found.patch["conditions"], conditions.DEGRADED)
    assert c is not None and c["observedGeneration"] == 2


def _status_schema(path: Path) -> dict[str, Any]:
    crd = yaml.safe_load(path.read_text())
    version = crd["spec"]["versions"][0]
    return dict(version["schema"]["openAPIV3Schema"]["properties"]["status"])


def _accepts(schema: dict[str, Any], value: Any, where: str = "status") -> list[str]:
    """Structural check of ``value`` against an OpenAPI v3 schema (the subset the CRD uses):
    types, enums, required keys, and no field the schema does not declare (the API server
    would prune it)."""
    kind = schema.get("type")
    errors: list[str] = []
    types = {"object": dict, "array": list, "string": str, "integer": int, "boolean": bool, "number": (int, float)}
    if kind and not isinstance(value, types[kind]):  # type: ignore[arg-type]
        return [f"{where}: {value!r} is not {kind}"]
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{where}: {value!r} not in {schema['enum']}")
    if kind == "object":
        props = schema.get("properties", {})
        errors += [f"{where}.{k}: required" for k in schema.get("required", []) if k not in value]
        for k, v in value.items():
            if k not in props:
                errors.append(f"{where}.{k}: not in the schema (pruned)")
            else:
                errors += _accepts(props[k], v, f"{where}.{k}")
    if kind == "array":
        for n, item in enumerate(value):
            errors += _accepts(schema["items"], item, f"{where}[{n}]")
    return errors


def test_the_crd_schema_takes_the_status_it_writes() -> None:
    arr = Array()
    last = {"started": "s", "finished": "f", "bytes": 1, "repaired": 0, "lost": 0}
    arr.poll(answer(device(0), device(1, "rebuilding", reason="replaced", rebuilt=4096, checksumErrors=1, repaired=1),
                    device(2, "failed", reason="write error", writeErrors=1), device(3),
                    scrub={"last": last}, lostBlocks=1, repairedBlocks=1))
    assert "rebuilt" in arr.status["devices"][1] and "lastScrub" in arr.status["redundancy"]
    paths = [ROOT / "crds/diskarray.yaml", ROOT / "charts/nasblade/files/crds/diskarray.yaml"]
    for path in paths:
        schema = _status_schema(path)
        assert _accepts(schema, arr.status) == [], path
        assert _accepts(schema, {"devices": [{"index": 0, "state": "lost"}]}) != []  # the check is real
        crd = yaml.safe_load(path.read_text())
        columns = {c["name"]: c["jsonPath"] for c in crd["spec"]["versions"][0]["additionalPrinterColumns"]}
        assert columns["Redundancy"] == ".status.redundancy.state"
    assert paths[0].read_bytes() == paths[1].read_bytes()


def test_replace_refusal_names_what_to_do() -> None:
    answer = {"devices": [{"index": 0, "state": "ok"}, {"index": 1, "state": "failed"},
                          {"index": 2, "state": "rebuilding"}]}
    assert devices.replace_refusal("1", answer) is None
    assert "not a device index" in str(devices.replace_refusal("one", answer))
    assert "no device 7: the array has devices [0, 1, 2]" in str(devices.replace_refusal("7", answer))
    assert "device 0 is ok, not failed" in str(devices.replace_refusal("0", answer))
    assert "device 2 is rebuilding, not failed" in str(devices.replace_refusal("2", answer))


def test_parity_mismatches_reach_the_status() -> None:
    """A parity array's scrub found parity disagreeing with its data: the count is in
    ``status.redundancy`` and in the last scrub's record."""
    arr = Array()
    got = arr.poll(answer(device(0), device(1), parityMismatches=2,
                          scrub={"last": {"started": "a", "finished": "b", "bytes": 8, "repaired": 2, "lost": 0,
                                          "parityMismatches": 2}}))
    assert got.patch["redundancy"]["parityMismatches"] == 2
    assert got.patch["redundancy"]["lastScrub"]["parityMismatches"] == 2
