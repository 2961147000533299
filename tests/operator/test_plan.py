"""The ClusterGroup decision core: failover, replacement, give-back, rollout (no API server)."""

from __future__ import annotations

import dataclasses
from typing import Any

from nasblade_operator.clustergroup import plan as p

FS = ["home", "scratch", "logs"]


def pod(i: int, *, version: str = "1", ready: bool = True, **kw: Any) -> p.PodObs:
    base = dict(name=f"g-blade-{i}", index=i, version=version, ready=ready, ever_ready=ready,
                terminated=False, deleting=False, not_ready_for=0.0)
    base.update(kw)
    return p.PodObs(**base)  # type: ignore[arg-type]


def observed(pods: dict[int, p.PodObs], **kw: Any) -> p.Observed:
    base: dict[str, Any] = dict(group="g", count=2, version="1", file_systems=FS, pods=pods, owners={},
                                failure_timeout=3.0)
    base.update(kw)
    return p.Observed(**base)


def moves(plan: p.Plan) -> list[tuple[str, str, str, str]]:
    return [(a.fs, a.source, a.target, a.reason) for a in plan.actions if isinstance(a, p.MoveFileSystem)]


def test_fresh_group_creates_pods_and_assigns_homes() -> None:
    plan = p.plan(observed({}))
    assert [a for a in plan.actions if isinstance(a, p.CreatePod)] == [p.CreatePod(0), p.CreatePod(1)]
    assert plan.owners == {"home": "g-blade-0", "scratch": "g-blade-1", "logs": "g-blade-0"}
    assert moves(plan) == [] and plan.stranded == ()
    assert set(plan.states.values()) == {"Pending"}


def test_steady_state_does_nothing() -> None:
    plan = p.plan(observed({0: pod(0), 1: pod(1)}))
    assert plan.actions == () and set(plan.states.values()) == {"Running"}


def test_suspect_blade_is_not_failed_over_before_the_timeout() -> None:
    plan = p.plan(observed({0: pod(0, ready=False, ever_ready=True, not_ready_for=1.0), 1: pod(1)}))
    assert plan.states["g-blade-0"] == "Suspect" and plan.actions == ()


def test_failover_after_timeout_then_replacement() -> None:
    plan = p.plan(observed({0: pod(0, ready=False, ever_ready=True, not_ready_for=3.5), 1: pod(1)}))
    assert moves(plan) == [("home", "g-blade-0", "g-blade-1", "Failover"), ("logs", "g-blade-0", "g-blade-1", "Failover")]
    assert p.DeletePod("g-blade-0", "Failed") in plan.actions
    # Order: the file systems move before the failed pod is deleted.
    kinds = [type(a).__name__ for a in plan.actions]
    assert kinds.index("DeletePod") > kinds.index("MoveFileSystem")


def test_deleted_pod_fails_over_immediately_and_is_recreated() -> None:
    plan = p.plan(observed({1: pod(1)}, known=frozenset({"g-blade-0"})))
    assert [m[2] for m in moves(plan)] == ["g-blade-1", "g-blade-1"]
    assert p.CreatePod(0) in plan.actions


def test_manual_policy_only_reports() -> None:
    plan = p.plan(observed({1: pod(1)}, automatic_failover=False, known=frozenset({"g-blade-0"})))
    assert moves(plan) == [] and set(plan.stranded) == {"home", "logs"}


def test_no_survivor_strands() -> None:
    plan = p.plan(observed({0: pod(0, deleting=True), 1: pod(1, ready=False, ever_ready=False)}))
    assert moves(plan) == [] and set(plan.stranded) == {"home", "logs"}


def test_give_back_when_home_is_running_again() -> None:
    owners = {"home": "g-blade-1", "scratch": "g-blade-1", "logs": "g-blade-1"}
    plan = p.plan(observed({0: pod(0), 1: pod(1)}, owners=owners))
    assert moves(plan) == [("home", "g-blade-1", "g-blade-0", "GiveBack"), ("logs", "g-blade-1", "g-blade-0", "GiveBack")]
    assert p.plan(observed({0: pod(0), 1: pod(1)}, owners=owners, automatic_give_back=False)).actions == ()


def test_rollout_one_blade_at_a_time() -> None:
    o = observed({0: pod(0, version="1"), 1: pod(1, version="1")}, version="2")
    plan = p.plan(o)
    assert plan.rolling
    assert moves(plan) == [("home", "g-blade-0", "g-blade-1", "Rollout"), ("logs", "g-blade-0", "g-blade-1", "Rollout")]
    assert [a for a in plan.actions if isinstance(a, p.DeletePod)] == [p.DeletePod("g-blade-0", "Upgrade")]
    # While blade 0 is away nothing else is touched (blade 1 keeps serving).
    during = p.plan(dataclasses.replace(o, pods={1: pod(1, version="1")}, owners=plan.owners, known=frozenset({"g-blade-0"})))
    assert [a for a in during.actions if not isinstance(a, p.CreatePod)] == []
    # Blade 0 back on version 2: give-back first ...
    back = p.plan(dataclasses.replace(o, pods={0: pod(0, version="2"), 1: pod(1, version="1")}, owners=plan.owners))
    assert {m[3] for m in moves(back)} == {"GiveBack"} and not any(isinstance(a, p.DeletePod) for a in back.actions)
    # ... then blade 1 hands its file system to the upgraded blade 0 and restarts.
    last = p.plan(dataclasses.replace(o, pods={0: pod(0, version="2"), 1: pod(1, version="1")}, owners=back.owners))
    assert moves(last) == [("scratch", "g-blade-1", "g-blade-0", "Rollout")]
    assert p.DeletePod("g-blade-1", "Upgrade") in last.actions
    done = p.plan(dataclasses.replace(o, pods={0: pod(0, version="2"), 1: pod(1, version="2")}, owners=back.owners))
    assert not done.rolling and done.actions == ()


def test_scale_down_hands_over_then_removes() -> None:
    owners = {"home": "g-blade-0", "scratch": "g-blade-1", "logs": "g-blade-2"}
    plan = p.plan(observed({0: pod(0), 1: pod(1), 2: pod(2)}, owners=owners))
    assert moves(plan) == [("logs", "g-blade-2", "g-blade-0", "ScaleDown")]
    assert p.DeletePod("g-blade-2", "ScaleDown") in plan.actions


def test_stale_heartbeat_fails_a_ready_blade() -> None:
    plan = p.plan(observed({0: pod(0, heartbeat_age=5.0), 1: pod(1, heartbeat_age=0.2)}))
    assert plan.states == {"g-blade-0": "Failed", "g-blade-1": "Running"}
    assert [m[2] for m in moves(plan)] == ["g-blade-1", "g-blade-1"]


def test_every_heartbeat_stale_is_the_controller_away_not_the_blades() -> None:
    """While the controller holding the portion restarts, every blade's heartbeat ages: nobody is
    failed for it (the standby used to be deleted and recreated, the owner marked Failed)."""
    plan = p.plan(observed({0: pod(0, heartbeat_age=40.0), 1: pod(1, heartbeat_age=41.0)}))
    assert plan.states == {"g-blade-0": "Running", "g-blade-1": "Running"}
    assert moves(plan) == [] and not [a for a in plan.actions if isinstance(a, p.DeletePod)]
    # a blade that is not Ready still fails on its own rule
    plan = p.plan(observed({0: pod(0, heartbeat_age=40.0, ready=False, ever_ready=True, not_ready_for=30.0),
                            1: pod(1, heartbeat_age=41.0)}))
    assert plan.states["g-blade-0"] == "Failed"


def test_backup_waits_for_low_load_unless_too_old() -> None:
    assert p.backup_decision(load=10, threshold=70, age=100, max_age=3600) == "Interval"
    assert p.backup_decision(load=None, threshold=70, age=100, max_age=3600) == "Interval"
    assert p.backup_decision(load=70, threshold=70, age=100, max_age=3600) == "Defer"
    assert p.backup_decision(load=95, threshold=70, age=4000, max_age=3600) == "MaxAge"
    assert p.backup_decision(load=95, threshold=70, age=float("inf"), max_age=3600) == "MaxAge"


def test_controller_load_percent() -> None:
    from nasblade_operator import arrayapi

    def fig(queue_depth: float, dirty: float) -> arrayapi.Figures:
        return arrayapi.Figures(iops=0, read_mbps=0, write_mbps=0, queue_depth=queue_depth, dirty_ratio=dirty,
                                cache_size=0, cache_used=0, dirty_bytes=0, hit_ratio=0)

    assert arrayapi.load_percent(fig(0, 0)) == 0
    assert arrayapi.load_percent(fig(16, 0.1)) == 50
    assert arrayapi.load_percent(fig(1, 0.8)) == 80
    assert arrayapi.load_percent(fig(100, 0)) == 100


def test_failover_chooses_the_survivors_the_blades_would_choose() -> None:
    """One rule for both deciders: the operator's failover and ``cluster.core.plan_takeovers``
    (what the blades run) pick the same survivor for every file system, including ties, where
    the file systems are given out in name order whatever the spec order."""
    from nasblade.cluster import core
    from nasblade.procinfo.portion import Ownership

    fs = ["zeta", "b1", "b2", "alpha"]  # homes: zeta, alpha -> blade-0; b1 -> blade-1; b2 -> blade-2
    plan = p.plan(observed({1: pod(1), 2: pod(2)}, count=3, file_systems=fs, known=frozenset({"g-blade-0"})))
    members = [f"g-blade-{i}" for i in range(3)]
    blades = core.plan_takeovers(
        members=members,
        file_systems=[core.FsPolicy(name=f, lu=f"fs-{f}", home=p.home_of("g", fs, f, 3)) for f in fs],
        ownership={f: Ownership(blade=p.home_of("g", fs, f, 3), epoch=1) for f in fs},
        alive={"g-blade-1", "g-blade-2"},
    )
    assert {m[0]: m[2] for m in moves(plan)} == {t.fs: t.blade for t in blades} == {"alpha": "g-blade-1", "zeta": "g-blade-2"}
    assert [m[0] for m in moves(plan)] == ["zeta", "alpha"]  # listed in spec order
