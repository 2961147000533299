"""The ClusterGroup status builder (``clustergroup/status.py``): plain inputs in, status out, no I/O."""

from __future__ import annotations

import dataclasses
import datetime
from typing import Any

from nasblade_operator import conditions
from nasblade_operator.clustergroup import plan as p
from nasblade_operator.clustergroup import spec as cg_spec
from nasblade_operator.clustergroup import status as s

NOW = datetime.datetime(2026, 12, 4, 12, 0, 0, tzinfo=datetime.UTC)
SPEC = cg_spec.parse({"diskArrayRef": {"name": "a1"}}, name="g")  # two blades, maxAge 6h
FS = ["home", "scratch"]
HOMES = {"home": "g-blade-0", "scratch": "g-blade-1"}


def pods(*ready: bool) -> list[dict[str, Any]]:
    return [{"name": f"g-blade-{i}", "index": i, "version": "1", "ready": r} for i, r in enumerate(ready)]


def plan(states: dict[str, p.BladeState], **kw: Any) -> p.Plan:
    base: dict[str, Any] = dict(actions=(), states=states, owners=HOMES, stranded=(), rolling=False)
    base.update(kw)
    return p.Plan(**base)


RUNNING = plan({"g-blade-0": "Running", "g-blade-1": "Running"})


def inputs(**kw: Any) -> s.StatusInputs:
    base: dict[str, Any] = dict(group="g", spec=SPEC, plan=RUNNING, old={}, generation=3, now=NOW, owners=HOMES,
                                file_systems=FS, pods=pods(True, True), version="1", array_ready=True)
    base.update(kw)
    return s.StatusInputs(**base)


def cond(status: dict[str, Any], type: str) -> tuple[str, str]:
    c = conditions.get_condition(status["conditions"], type)
    assert c is not None
    return c["status"], c["reason"]


def test_a_healthy_group_is_ready_and_lists_blades_and_file_systems() -> None:
    new = s.build(inputs(heartbeats={"g-blade-0": 12.7}))
    assert cond(new, "Ready") == ("True", "AllBladesRunning")
    assert cond(new, "Degraded") == ("False", "AllBladesRunning")
    assert cond(new, "Progressing") == ("False", "Stable")
    assert cond(new, "BackedUp") == ("False", "NeverBackedUp")
    assert new["bladesReady"] == "2/2" and new["observedGeneration"] == 3 and new["rollout"] is None
    assert new["blades"][0] == {"name": "g-blade-0", "index": 0, "state": "Running", "fileSystems": ["home"],
                                "softwareVersion": "1", "heartbeatAgeSeconds": 10}
    assert "heartbeatAgeSeconds" not in new["blades"][1]
    assert new["fileSystems"][1] == {"name": "scratch", "blade": "g-blade-1", "homeBlade": "g-blade-1",
                                     "service": "a1-scratch-nfs"}
    assert s.blade_counts(new["blades"]) == {"Pending": 0, "Running": 2, "Suspect": 0, "Failed": 0, "Upgrading": 0}


def test_ready_waits_for_the_array_and_for_what_the_owners_report_serving() -> None:
    assert cond(s.build(inputs(array_ready=False)), "Ready") == ("False", "DiskArrayNotReady")
    starting = s.build(inputs(serving={"g-blade-1": frozenset()}))
    assert cond(starting, "Ready") == ("False", "FileSystemsStarting")
    assert "scratch (on g-blade-1)" in str(conditions.get_condition(starting["conditions"], "Ready"))
    # each file system says whether its owner reported serving it (absent: not reported yet)
    assert [f.get("served") for f in starting["fileSystems"]] == [None, False]
    serving = s.build(inputs(serving={"g-blade-1": frozenset({"scratch"})}))
    assert [f.get("served") for f in serving["fileSystems"]] == [None, True]


def test_a_failed_blade_degrades_and_a_stranded_file_system_says_no_survivor() -> None:
    failed = plan({"g-blade-0": "Running", "g-blade-1": "Failed"})
    new = s.build(inputs(plan=failed, owners={"home": "g-blade-0", "scratch": "g-blade-0"}, pods=pods(True, False)))
    assert cond(new, "Ready") == ("False", "BladesNotReady") and cond(new, "Degraded") == ("True", "BladeFailed")
    stranded = s.build(inputs(plan=dataclasses.replace(failed, stranded=("scratch",))))
    assert cond(stranded, "Ready") == ("False", "FileSystemsUnserved") and cond(stranded, "Degraded") == ("True", "NoSurvivor")


def test_a_rollout_is_progressing_and_named() -> None:
    new = s.build(inputs(plan=dataclasses.replace(RUNNING, rolling=True), version="2"))
    assert cond(new, "Progressing") == ("True", "RollingOut")
    assert new["rollout"] == {"targetVersion": "2", "step": "upgrading one blade at a time"}


def test_backed_up_only_while_the_last_success_is_within_max_age() -> None:
    ok = {"lastSuccessful": conditions.now_rfc3339(NOW - datetime.timedelta(hours=1)),
          "history": [{"result": "Succeeded", "message": ""}]}
    assert cond(s.build(inputs(backups=ok)), "BackedUp") == ("True", "Succeeded")
    old = {**ok, "lastSuccessful": conditions.now_rfc3339(NOW - datetime.timedelta(hours=7))}
    assert cond(s.build(inputs(old={"backups": old})), "BackedUp") == ("False", "Succeeded")
    failed = {**ok, "history": [{"result": "Failed", "message": "blade gone"}]}
    assert cond(s.build(inputs(backups=failed)), "BackedUp") == ("False", "Failed")


def test_only_changes_are_patched_and_transition_times_stay() -> None:
    first = s.build(inputs())
    later = s.build(inputs(old=first, now=NOW + datetime.timedelta(minutes=5)))
    assert s.changed(first, later) == {}
    assert s.changed({}, {"rollout": None}) == {}  # a None for an absent field is no change
    degraded = s.build(inputs(old=first, now=NOW + datetime.timedelta(minutes=5),
                              plan=plan({"g-blade-0": "Running", "g-blade-1": "Suspect"})))
    times = {c["type"]: c["lastTransitionTime"] for c in degraded["conditions"]}
    assert times["Degraded"] == "2026-12-04T12:05:00Z" and times["BackedUp"] == "2026-12-04T12:00:00Z"
    assert set(s.changed(first, degraded)) == {"conditions", "bladesReady", "blades"}


def test_failover_history_is_capped() -> None:
    record = {"fileSystem": "home", "from": "g-blade-1", "to": "g-blade-0", "reason": "Failover"}
    new = s.build(inputs(old={"failovers": [record] * 20}, failovers=[{**record, "reason": "GiveBack"}]))
    assert len(new["failovers"]) == s.FAILOVER_HISTORY and new["failovers"][-1]["reason"] == "GiveBack"
