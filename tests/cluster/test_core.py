"""Unit tests of the sans-I/O cluster rules (``nasblade.cluster.core``) and the cluster
configuration (``nasblade.cluster.config``), and the standalone supervisor's restart rules
(``nasblade.standalone.supervisor``): no processes, no sockets, explicit clocks."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
from nasblade.cluster import config, core
from nasblade.cluster.core import BackupAction, BackupPolicy, FsPolicy, Liveness
from nasblade.procinfo.portion import BladeStatus, GroupRecord, Ownership
from nasblade.standalone.config import ConfigError
from nasblade.standalone.config import parse as parse_standalone
from nasblade.standalone.supervisor import Supervisor, restart_argv, restart_delay

MEMBERS = ("a", "b", "c")
FS = [FsPolicy("fs1", "fs-fs1", "a"), FsPolicy("fs2", "fs-fs2", "b"), FsPolicy("fs3", "fs-fs3", "a")]


def test_liveness_uses_counter_changes_on_the_observer_clock() -> None:
    lv = Liveness(timeout=1.0)
    assert not lv.alive("a", now=0.0)  # never seen
    lv.observe("a", counter=5, state="running", now=0.0)
    assert lv.alive("a", now=0.9)
    lv.observe("a", counter=5, state="running", now=0.9)  # same counter: no new heartbeat
    assert not lv.alive("a", now=1.0)
    lv.observe("a", counter=1, state="running", now=1.5)  # restarted: counts from 1 again
    assert lv.alive("a", now=2.0) and lv.age("a", now=2.0) == pytest.approx(0.5)
    lv.observe_slot(BladeStatus(blade="a", heartbeat_counter=2, state="stopped"), now=2.1)
    assert not lv.alive("a", now=2.1)  # a clean stop is dead at once


def test_liveness_a_failed_slot_is_dead_at_once() -> None:
    lv = Liveness(timeout=10.0)
    lv.observe("a", counter=7, state="running", now=0.0)
    lv.observe_slot(BladeStatus(blade="a", heartbeat_counter=8, heartbeat_time=5.0, state="failed"), now=0.1)
    assert not lv.alive("a", now=0.1) and lv.state("a") == "failed"
    lv.observe_slot(BladeStatus(blade="a", heartbeat_counter=1, heartbeat_time=9.0), now=3.0)  # restarted
    assert lv.alive("a", now=3.0)


def test_liveness_older_copies_from_the_other_area_do_not_revive_a_dead_blade() -> None:
    """The backup area holds point-in-time copies of the slots: a copy's older counter is no
    heartbeat. Before the fix, every look at the other area made a silent blade alive again
    (counter "changed" from the latest to the copy's and back), so the peer never took over."""
    lv = Liveness(timeout=1.0)
    primary = BladeStatus(blade="a", heartbeat_counter=500, heartbeat_time=1000.0)
    copy = BladeStatus(blade="a", heartbeat_counter=120, heartbeat_time=900.0)
    lv.observe_slot(primary, now=0.0)
    for now in (0.6, 0.8, 1.0, 1.2, 1.4, 1.6):  # a silent a: primary unchanged, the copy looked at too
        lv.observe_slot(primary, now=now)
        lv.observe_slot(copy, now=now, only_if_newer=True)
    assert not lv.alive("a", now=1.6)
    # a slot in the other area that is newer than anything seen (a switch in progress) counts
    lv.observe_slot(BladeStatus(blade="a", heartbeat_counter=501, heartbeat_time=1001.0), now=1.7,
                    only_if_newer=True)
    assert lv.alive("a", now=1.7)


def test_liveness_gap_counts_no_silence_while_the_observer_could_not_look() -> None:
    lv = Liveness(timeout=1.0)
    lv.observe("a", counter=1, state="running", now=0.0)
    lv.observe("b", counter=1, state="stopped", now=0.0)
    lv.observe("c", counter=1, state="running", now=4.9)
    lv.gap(4.5, now=5.0)  # the observer's read stalled 5 s (controller restarting); 0.5 s counts
    assert lv.age("a", now=5.0) == pytest.approx(0.5) and lv.alive("a", now=5.4)
    assert not lv.alive("a", now=5.5)
    assert lv.age("c", now=5.0) == pytest.approx(0.0)  # never moved past the present
    assert not lv.alive("b", now=5.0)  # a dead state stays dead


def test_plan_takeovers_least_loaded_then_lowest_index() -> None:
    own = {"fs1": Ownership("a", 3), "fs2": Ownership("b", 1), "fs3": Ownership("a", 4)}
    # a dies: b has one, c none → c gets fs1 (least loaded), then b and c tie at one → b (index)
    plan = core.plan_takeovers(members=MEMBERS, file_systems=FS, ownership=own, alive={"b", "c"})
    assert [(t.fs, t.blade, t.previous) for t in plan] == [("fs1", "c", "a"), ("fs3", "b", "a")]
    assert all(t.reason == "owner a is silent" for t in plan)
    # nobody alive: nothing to do; everybody alive: nothing to do
    assert core.plan_takeovers(members=MEMBERS, file_systems=FS, ownership=own, alive=set()) == []
    assert core.plan_takeovers(members=MEMBERS, file_systems=FS, ownership=own, alive=set(MEMBERS)) == []


def test_plan_unowned_goes_home_else_to_a_survivor() -> None:
    plan = core.plan_takeovers(members=MEMBERS, file_systems=FS, ownership={}, alive={"a", "b", "c"})
    assert [(t.fs, t.blade) for t in plan] == [("fs1", "a"), ("fs2", "b"), ("fs3", "a")]
    plan = core.plan_takeovers(members=MEMBERS, file_systems=FS, ownership={}, alive={"b", "c"})
    assert [(t.fs, t.blade) for t in plan] == [("fs1", "b"), ("fs2", "b"), ("fs3", "c")]


def test_check_takeover_reasons() -> None:
    own = {"fs1": Ownership("a", 3)}
    ok = core.check_takeover(me="b", fs=FS[0], ownership=own, alive={"a", "b"})
    assert ok.possible and ok.mode == "graceful" and ok.owner == "a" and ok.epoch == 3
    dead = core.check_takeover(me="b", fs=FS[0], ownership=own, alive={"b"})
    assert dead.possible and dead.mode == "takeover"
    mine = core.check_takeover(me="a", fs=FS[0], ownership=own, alive={"a"})
    assert not mine.possible and "already owns" in mine.reasons[0]
    sick = core.check_takeover(me="b", fs=FS[0], ownership=own, alive={"a"}, blockers=["controller down"])
    assert not sick.possible and sick.reasons[0] == "controller down" and "not alive" in sick.reasons[1]
    assert sick.to_json()["possible"] is False


def test_merge_groups_keeps_highest_epoch_and_every_backup() -> None:
    a = GroupRecord(ownership={"fs1": Ownership("a", 3), "fs2": Ownership("b", 7)},
                    backups=[{"id": "x", "start": 1.0}, {"time": 0.5, "result": "Succeeded"}])
    b = GroupRecord(ownership={"fs1": Ownership("b", 4), "fs3": Ownership("c", 1)},
                    backups=[{"id": "x", "start": 1.0}, {"id": "y", "start": 2.0}])
    m = core.merge_groups(a, b)
    assert m.ownership == {"fs1": Ownership("b", 4), "fs2": Ownership("b", 7), "fs3": Ownership("c", 1)}
    assert [r.get("id") for r in m.backups] == [None, "x", "y"]
    assert core.same_group(core.merge_groups(m, m), m)


@pytest.mark.parametrize(
    ("now", "last", "load", "action"),
    [
        (5.0, 0.0, 0.1, BackupAction.WAIT),              # not due yet
        (11.0, 0.0, 0.1, BackupAction.START),            # due, light load
        (11.0, 0.0, 0.9, BackupAction.DEFER),            # due, heavy load
        (61.0, 0.0, 0.9, BackupAction.START_THROTTLED),  # heavy load but at the maximum age
        (11.0, 0.0, None, BackupAction.START_THROTTLED), # load unknown: run, gently
        (61.0, 0.0, 0.1, BackupAction.START),
    ],
)
def test_backup_decision_table(now: float, last: float, load: float | None, action: BackupAction) -> None:
    policy = BackupPolicy(interval=10.0, load_threshold=0.5, max_age=60.0)
    got, why = core.decide_backup(policy=policy, now=now, last_success=last, first_due=0.0, load=load)
    assert got is action and why


def test_load_ratio() -> None:
    assert core.load_ratio({}) is None
    assert core.load_ratio({"queueDepth": 4.0, "dirtyRatio": 0.1}) == pytest.approx(0.5)
    assert core.load_ratio({"queueDepth": 0.0, "dirtyRatio": 0.7}) == pytest.approx(0.7)
    assert core.load_ratio({"queueDepth": 100.0}) == 1.0


def test_cluster_config_from_standalone_and_validation() -> None:
    std = parse_standalone({
        "clusterGroups": [{"name": "g1", "blades": 2, "backup": {"crossGroup": ["g2"], "interval": "5m"}},
                          {"name": "g2", "blades": ["x"]}],
        "fileSystems": [{"name": "fs1", "size": "64M"}, {"name": "fs2", "size": "64M", "clusterGroup": "g2"}],
    })
    cc = config.from_standalone(std, "g1")
    assert cc.members == ("g1-0", "g1-1") and cc.group_index == 0 and cc.backup.interval == 300.0
    assert [c.group for c in cc.cross_group] == ["g2"] and cc.cross_group[0].index == 1
    assert [f.policy for f in cc.file_systems] == [FsPolicy("fs1", "fs-fs1", "g1-0")]
    assert config.parse(cc.to_json()) == cc
    for bad, message in [
        ({**cc.to_json(), "members": []}, "cluster.members"),
        ({**cc.to_json(), "failureTimeout": 0.1}, "cluster.failureTimeout"),
        ({**cc.to_json(), "fileSystems": [{"name": "f", "lu": "l", "home": "zz"}]}, "cluster.fileSystems[0].home"),
        ({**cc.to_json(), "group": 3}, "cluster.group"),
    ]:
        with pytest.raises(config.ClusterConfigError) as err:
            config.parse(bad)
        assert message in str(err.value)


def test_chassis_in_the_cluster_config_follows_power_fencing() -> None:
    on = parse_standalone({"clusterGroups": [{"name": "g1"}], "fileSystems": [{"name": "fs1", "size": "64M"}]})
    off = parse_standalone({"clusterGroups": [{"name": "g1", "powerFencing": False}],
                            "fileSystems": [{"name": "fs1", "size": "64M"}]})
    assert config.from_standalone(on, "g1", chassis="/d/run/chassis.sock").chassis == "/d/run/chassis.sock"
    assert config.from_standalone(off, "g1", chassis="/d/run/chassis.sock").chassis is None
    cc = config.from_standalone(on, "g1", chassis="/d/run/chassis.sock")
    assert config.parse(cc.to_json()) == cc
    with pytest.raises(ConfigError) as err:
        parse_standalone({"clusterGroups": [{"name": "g1", "powerFencing": "yes"}]})
    assert "clusterGroups[0].powerFencing" in str(err.value)


def test_supervisor_backoff_and_restart_command_line() -> None:
    assert [restart_delay(n) for n in (1, 2, 3, 4, 7, 20)] == [0.5, 1.0, 2.0, 4.0, 30.0, 30.0]
    bp = ["nasblade", "block-processor", "--own", "fs-fs1", "--api-listen", "127.0.0.1:0", "--own", "fs-fs2",
          "--fs-spec", "{}"]
    assert restart_argv(bp, part="bp", api="http://127.0.0.1:41234") == [
        "nasblade", "block-processor", "--api-listen", "127.0.0.1:41234", "--fs-spec", "{}"]
    fp = ["nasblade", "boot", "--", "blade-file-processor", "--fs", "{}", "--fence-after", "0.5"]
    assert restart_argv(fp, part="fp", api=None) == [
        "nasblade", "boot", "--", "blade-file-processor", "--fence-after", "0.5"]


def test_supervisor_status_written_from_several_threads_at_once(tmp_path: Path) -> None:
    """The main loop and the chassis API's threads write chassis.json at the same time; a shared
    temporary file name made one of them fail, and the exception ended ``nasblade up``."""
    array = SimpleNamespace(children=[], controller=None, data_dir=tmp_path)
    sup = Supervisor(array)  # type: ignore[arg-type]
    errors: list[BaseException] = []

    def hammer() -> None:
        try:
            for _ in range(300):
                sup.write_status()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []
    assert json.loads((tmp_path / "run" / "chassis.json").read_text())["blades"] == {}
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["chassis.json"]
