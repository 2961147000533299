"""Planned moves in the ClusterGroup decision core (``takeover FS --to BLADE`` / ``giveback FS``):
validation of the request, pinning, and how pins interact with give-back, failover and rollout;
and the daemon's small rules: heartbeat probe interval, the age as status shows it, a backup's bytes."""

from __future__ import annotations

from typing import Any

import pytest
from nasblade_operator.clustergroup import plan as p

FS = ["home", "scratch", "logs"]  # homes: g-blade-0, g-blade-1, g-blade-0


def pod(i: int, *, version: str = "1", ready: bool = True, **kw: Any) -> p.PodObs:
    base = dict(name=f"g-blade-{i}", index=i, version=version, ready=ready, ever_ready=True,
                terminated=False, deleting=False, not_ready_for=0.0 if ready else 10.0)
    base.update(kw)
    return p.PodObs(**base)  # type: ignore[arg-type]


def observed(pods: dict[int, p.PodObs], **kw: Any) -> p.Observed:
    base: dict[str, Any] = dict(group="g", count=2, version="1", file_systems=FS, pods=pods, owners={},
                                failure_timeout=3.0)
    base.update(kw)
    return p.Observed(**base)


def req(fs: str, to: str) -> p.MoveRequest:
    return p.MoveRequest(id="r1", fs=fs, to=to)


def moves(plan: p.Plan) -> list[tuple[str, str, str, str]]:
    return [(a.fs, a.source, a.target, a.reason) for a in plan.actions if isinstance(a, p.MoveFileSystem)]


UP = {0: pod(0), 1: pod(1)}


def test_planned_move_away_from_home_moves_and_pins() -> None:
    plan = p.plan(observed(UP, request=req("home", "g-blade-1")))
    assert moves(plan) == [("home", "g-blade-0", "g-blade-1", "Planned")]
    assert plan.request is not None and plan.request.result == "Moving"
    assert plan.pins == {"home": "g-blade-1"} and plan.owners["home"] == "g-blade-1"


def test_pinned_file_system_is_not_given_back() -> None:
    owners = {"home": "g-blade-1", "scratch": "g-blade-1", "logs": "g-blade-1"}
    plan = p.plan(observed(UP, owners=owners, pins={"home": "g-blade-1"}))
    assert moves(plan) == [("logs", "g-blade-1", "g-blade-0", "GiveBack")]


def test_giveback_request_clears_the_pin_and_moves_home() -> None:
    owners = {"home": "g-blade-1"}
    plan = p.plan(observed(UP, owners=owners, pins={"home": "g-blade-1"}, request=req("home", "g-blade-0")))
    assert moves(plan) == [("home", "g-blade-1", "g-blade-0", "Planned")]
    assert plan.pins == {}


def test_failover_away_from_the_pinned_blade_and_back_to_it() -> None:
    owners = {"home": "g-blade-1"}
    failed = p.plan(observed({0: pod(0), 1: pod(1, ready=False)}, owners=owners, pins={"home": "g-blade-1"}))
    assert ("home", "g-blade-1", "g-blade-0", "Failover") in moves(failed)
    assert failed.pins == {"home": "g-blade-1"}  # the pin survives the failure
    back = p.plan(observed(UP, owners=dict(failed.owners), pins=failed.pins))
    assert ("home", "g-blade-0", "g-blade-1", "GiveBack") in moves(back)


def test_request_for_where_it_already_is_succeeds_without_moving() -> None:
    plan = p.plan(observed(UP, request=req("scratch", "g-blade-1")))
    assert moves(plan) == [] and plan.request is not None and plan.request.result == "Succeeded"
    assert plan.pins == {}  # scratch's home is g-blade-1


@pytest.mark.parametrize(("request_", "pods", "why"), [
    (req("nope", "g-blade-1"), UP, "no file system 'nope' in cluster group g"),
    (req("home", "g-blade-7"), UP, "no blade 'g-blade-7' in cluster group g"),
    (req("home", "other-blade-1"), UP, "no blade 'other-blade-1'"),
    (req("home", "g-blade-1"), {0: pod(0), 1: pod(1, ready=False, not_ready_for=1.0)}, "g-blade-1 is Suspect, not Running"),
    (req("home", "g-blade-1"), {0: pod(0)}, "g-blade-1 is Pending, not Running"),
])
def test_impossible_requests_are_refused_with_the_reason(request_: p.MoveRequest, pods: dict[int, p.PodObs], why: str) -> None:
    plan = p.plan(observed(pods, request=request_))
    assert plan.request is not None and plan.request.result == "Refused"
    assert why in plan.request.message
    assert not [m for m in moves(plan) if m[3] == "Planned"] and plan.pins == {}


def test_rollout_is_not_blocked_by_a_pinned_file_system() -> None:
    owners = {"home": "g-blade-1", "scratch": "g-blade-1", "logs": "g-blade-0"}
    plan = p.plan(observed({0: pod(0, version="0"), 1: pod(1, version="0")}, owners=owners, pins={"home": "g-blade-1"}))
    assert p.DeletePod("g-blade-0", "Upgrade") in plan.actions


def test_pins_on_blades_beyond_count_are_dropped() -> None:
    plan = p.plan(observed(UP, owners={"home": "g-blade-0"}, pins={"home": "g-blade-5"}))
    assert plan.pins == {} and moves(plan) == []


@pytest.mark.parametrize(("text", "why"), [
    ("{", "not JSON"),
    ("[1]", "must be a JSON object"),
    ('{"fileSystem": "home"}', "lacks to, id"),
    ('{"fileSystem": "home", "to": 3, "id": "x"}', "lacks to"),
])
def test_bad_move_request_annotations_say_what_is_wrong(text: str, why: str) -> None:
    out = p.parse_move_request(text)
    assert isinstance(out, str) and why in out


def test_move_request_annotation_parses() -> None:
    assert p.parse_move_request('{"fileSystem": "home", "to": "g-blade-1", "id": "abc"}') == \
        p.MoveRequest(id="abc", fs="home", to="g-blade-1")


@pytest.mark.parametrize(("failure_timeout", "status_interval", "interval"), [
    (2.0, 10.0, 1.0), (1.0, 10.0, 1.0), (9.0, 10.0, 3.0), (60.0, 10.0, 10.0), (9.0, 2.0, 2.0),
])
def test_heartbeat_probe_interval_follows_the_failure_timeout(failure_timeout: float, status_interval: float,
                                                              interval: float) -> None:
    assert p.probe_interval(failure_timeout=failure_timeout, status_interval=status_interval) == interval


@pytest.mark.parametrize(("age", "bucket"), [
    (0.0, 0), (0.2, 0), (0.99, 0), (1.5, 1), (9.9, 9), (10.0, 10), (14.9, 10), (59.0, 55), (61.0, 60), (185.0, 180),
])
def test_heartbeat_age_in_status_is_bucketed(age: float, bucket: int) -> None:
    assert p.heartbeat_bucket(age) == bucket


def test_backup_bytes_count_only_this_backups_copy_jobs() -> None:
    jobs = [
        {"id": "old", "source": "procinfo", "target": "backup", "sourceOffset": 0, "bytesDone": 100},
        {"id": "a", "source": "procinfo", "target": "backup", "sourceOffset": 0, "bytesDone": 40},
        {"id": "b", "source": "procinfo", "target": "backup", "sourceOffset": 2048, "bytesDone": 10},
        {"id": "c", "source": "procinfo", "target": "backup", "sourceOffset": 1024, "bytesDone": 99},  # another group's
        {"id": "d", "source": "fs-home", "target": "backup", "sourceOffset": 0, "bytesDone": 7},
    ]
    assert p.backup_bytes(jobs, source="procinfo", target="backup", offsets=[0, 2048], before=frozenset({"old"})) == 50
