"""``nasblade software rollout V`` on a standalone array (``nasblade.standalone.rollout``).

A real ``nasblade up`` (one cluster group of two blades, ``fs1`` served by ``g1-0``), a second
bundle built and pushed with ``nasblade software build`` / ``push``, and a libnfs writer with
``O_SYNC`` (tests/cluster/syncwriter.py: FILE_SYNC records, every acknowledgement counted) on
``fs1`` through its own address during the whole rollout:

- an unknown version is refused (exit 2) and no blade process is restarted;
- the rollout exits 0, every blade reports the new version on its management API, the chassis
  restarted each blade's two processes once, the version is selected in the program catalog,
  ``fs1`` is home again, and the writer saw no failed operation and lost no acknowledged record
  (its figures are printed: records, longest pause, seconds per blade); run again, it restarts
  nothing and says every blade is already on it; ``nasblade up`` started again on the same data
  directory boots the new version (selected in the catalog by the rollout);
- on fakes (``roll`` alone): the order of the steps (move, restart, wait, give back; a blade
  already on the version skipped; a blade alone in its group restarted in place), a degraded
  array refused before anything is touched, a refused restart giving the moved file system back;
- ``Supervisor.restart`` on processes that ignore SIGTERM: killed after the grace period, the
  block processor started again with ``--software-version``, then its file processor.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from conftest import Array, Cli, free_port, run_array, start_up

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "cluster"))
from syncwriter import ChildWriter, verify

VERSION = "0.2.0-test"


@pytest.fixture(scope="module")
def array(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Array]:
    """``nasblade up`` with one group of two blades and ``fs1`` on ``g1-0`` (overrides conftest's)."""
    tmp = tmp_path_factory.mktemp("rollout-array")
    net = f"127.{random.randint(100, 250)}.{random.randint(1, 250)}"
    cfg = {
        "array": {"devices": {"count": 2, "size": "160M"}, "cacheSize": "16M", "areas": {"programSize": "32M"}},
        "clusterGroups": [{"name": "g1", "blades": 2, "failureTimeout": "4s"}],
        "fileSystems": [{"name": "fs1", "size": "48M", "clusterGroup": "g1", "address": f"{net}.2"}],
        "network": {"nbdPort": free_port(), "apiPort": free_port(), "bladeApiPort": 0,
                    "nfsPort": free_port(), "mountPort": free_port(), "portmapPort": None},
    }
    yield from run_array(tmp, cfg)  # stops the array a test may have started again


def chassis(array: Array) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((array.data_dir / "run" / "chassis.json").read_text())
    blades: dict[str, Any] = doc["blades"]
    return blades


def nfs_url(array: Array) -> str:
    [ep] = array.endpoints["nfs"]
    return f"nfs://{ep['host']}{ep['export']}?version=3&nfsport={ep['nfsPort']}&mountport={ep['mountPort']}"


def wait_for(cond: Any, *, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.2)


def test_unknown_version_is_refused_and_nothing_restarts(array: Array, cli: Cli) -> None:
    before = chassis(array)
    r = cli("software", "rollout", "9.9.9-nowhere", "--data-dir", str(array.data_dir))
    assert r.returncode == 2, r.stderr
    assert "9.9.9-nowhere is not in the program catalog" in r.stderr
    assert "Traceback" not in r.stderr
    assert chassis(array) == before
    for name in ("g1-0", "g1-1"):
        assert array.blade(name).status()["version"] != "9.9.9-nowhere"


def test_rollout_restarts_each_blade_on_the_new_version_under_a_writer(array: Array, cli: Cli,
                                                                       tmp_path: Path) -> None:
    program = f"nbd://{array.endpoints['controller']['nbd']}/program"
    bundle = tmp_path / "blade.pyz"
    r = cli("software", "build", "--version", VERSION, "--output", str(bundle))
    assert r.returncode == 0, r.stderr
    r = cli("software", "--program", program, "push", str(bundle), "--version", VERSION)
    assert r.returncode == 0, r.stderr
    old = {name: array.blade(name).status()["version"] for name in ("g1-0", "g1-1")}
    assert VERSION not in old.values()
    assert "fs1" in array.blade("g1-0").status()["fileSystems"]

    # in a child process: a libnfs call stuck on a server that is gone keeps the GIL
    writer = ChildWriter(nfs_url(array), "/rollout.dat")
    writer.start()
    try:
        wait_for(lambda: writer.acked >= 20 or writer.finished.is_set(), timeout=60, what="the writer gets going")
        assert not writer.finished.is_set(), writer.errors

        r = cli("software", "rollout", VERSION, "--data-dir", str(array.data_dir), "-o", "json", timeout=900)
        acked_at_end = writer.acked
        wait_for(lambda: writer.acked >= acked_at_end + 20 or writer.finished.is_set(), timeout=60,
                 what="the writer carries on after the rollout")
        writer.stop()
        wait_for(writer.finished.is_set, timeout=120, what="the writer stops")
    finally:
        writer.kill()

    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert result["blades"] == {"g1-0": VERSION, "g1-1": VERSION}
    assert [s["blade"] for s in result["steps"]] == ["g1-0", "g1-1"]
    assert result["steps"][0]["moved"] == ["fs1"]
    for name in ("g1-0", "g1-1"):
        st = array.blade(name).status()
        assert st["version"] == VERSION
        assert st["heartbeatAge"] is not None
        blade = chassis(array)[name]
        assert blade["softwareVersion"] == VERSION
        assert blade["blockProcessor"]["restarts"] == 1 and blade["fileProcessor"]["restarts"] == 1
    assert "fs1" in array.blade("g1-0").status()["fileSystems"]
    r = cli("software", "--program", program, "list", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["current"] == VERSION
    again = cli("software", "rollout", VERSION, "--data-dir", str(array.data_dir))  # nothing left to do
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines() == ["g1-0: already on it", "g1-1: already on it", f"every blade runs {VERSION}"]
    assert all(chassis(array)[b]["blockProcessor"]["restarts"] == 1 for b in ("g1-0", "g1-1"))

    print(json.dumps({"acked": writer.acked, "failed": writer.failed, "maxGapSeconds": round(writer.max_gap, 3),
                      "secondsPerBlade": {st["blade"]: st["seconds"] for st in result["steps"]}}))
    assert writer.failed == 0, writer.errors
    assert not any(e.startswith("writer stopped") for e in writer.errors), writer.errors
    missing = verify(nfs_url(array), "/rollout.dat", writer.acked)
    assert missing == [], f"acknowledged records lost: {missing[:10]} of {writer.acked}"


def test_nasblade_up_again_boots_the_rolled_out_version(array: Array) -> None:
    """After the rollout (previous test) the version is the catalog's selected one, so the
    array started again on the same data directory runs it."""
    array.proc.send_signal(signal.SIGTERM)
    assert array.proc.wait(120) == 0
    array.proc, line = start_up(array.config, array.data_dir)  # stopped by the fixture
    array.endpoints = line["endpoints"]
    assert {b["name"]: b["software"] for b in line["endpoints"]["blades"]} == {"g1-0": VERSION, "g1-1": VERSION}
    for name in ("g1-0", "g1-1"):
        assert array.blade(name).status()["version"] == VERSION


# -- the rollout's order of steps, on fakes (no processes) ---------------------------------------


class FakeBlade:
    def __init__(self, array: FakeArray, name: str) -> None:
        self.array, self.name = array, name

    def status(self) -> dict[str, Any]:
        if self.name in self.array.down:
            raise OSError("connection refused")
        return {"version": self.array.version[self.name], "heartbeatAge": 0.5, "failed": False,
                "fileSystems": sorted(fs for fs, b in self.array.owner.items() if b == self.name)}

    def take_over_fs(self, fs: str) -> dict[str, Any]:
        self.array.calls.append(f"{self.name} takes {fs}")
        self.array.owner[fs] = self.name
        return {}


class FakeArray:
    """Blades ``a0``, ``a1`` (group a) and ``b0`` (group b); ``restart`` brings a blade up on the
    version at once and, like the chassis, gives it its home file system back."""

    def __init__(self) -> None:
        self.version = {"a0": "1", "a1": "1", "b0": "1"}
        self.owner = {"fsa": "a0", "fsb": "b0"}
        self.home = dict(self.owner)
        self.down: set[str] = set()
        self.calls: list[str] = []

    def blade_client(self, name: str) -> FakeBlade:
        return FakeBlade(self, name)

    def restart(self, blade: str, *, software_version: str, requested_by: str) -> dict[str, Any]:
        self.calls.append(f"restart {blade} on {software_version}")
        self.version[blade] = software_version
        for fs, home in self.home.items():
            if home == blade:
                self.owner[fs] = blade
        return {}


def refs() -> list[Any]:
    from nasblade.standalone.rollout import BladeRef

    return [BladeRef("a0", "a"), BladeRef("a1", "a"), BladeRef("b0", "b")]


def test_roll_moves_restarts_and_gives_back_one_blade_at_a_time() -> None:
    from nasblade.standalone.rollout import STEPS, roll

    fake = FakeArray()
    fake.version["a1"] = "2"  # already there: skipped
    seen: list[tuple[str, int, str]] = []
    results = roll(version="2", blades=refs(), api=fake, chassis=fake,
                   progress=lambda b, n, d: seen.append((b, n, d)))
    assert fake.calls == ["a1 takes fsa", "restart a0 on 2", "restart b0 on 2"]
    assert fake.owner == {"fsa": "a0", "fsb": "b0"}
    assert [(r.blade, r.after, r.skipped, r.moved) for r in results] == [
        ("a0", "2", False, ["fsa"]), ("a1", "2", True, []), ("b0", "2", False, [])]
    assert ("b0", 0, "no live peer in b: fsb pause during the restart") in seen
    assert [n for b, n, _ in seen if b == "a0"] == [0, 1, 2, 3, STEPS]


def test_roll_refuses_a_degraded_array_before_touching_anything() -> None:
    from nasblade.standalone.rollout import RolloutError, roll

    fake = FakeArray()
    fake.down.add("a1")
    with pytest.raises(RolloutError, match=r"a1 not\): nothing was restarted"):
        roll(version="2", blades=refs(), api=fake, chassis=fake, progress=lambda *_: None)
    assert fake.calls == []


def test_roll_stops_when_the_chassis_refuses_and_takes_the_file_system_back() -> None:
    from nasblade.bladeapi.chassis import ChassisError
    from nasblade.standalone.rollout import RolloutError, roll

    fake = FakeArray()

    def refuse(blade: str, *, software_version: str, requested_by: str) -> dict[str, Any]:
        raise ChassisError(409, f"blade {blade} cannot be restarted now: {blade}-fp is waiting")

    fake.restart = refuse  # type: ignore[method-assign]
    with pytest.raises(RolloutError, match=r"a0: the chassis refused the restart: .*409"):
        roll(version="2", blades=refs(), api=fake, chassis=fake, progress=lambda *_: None)
    assert fake.calls == ["a1 takes fsa", "a0 takes fsa"]
    assert fake.owner["fsa"] == "a0" and fake.version == {"a0": "1", "a1": "1", "b0": "1"}


# -- the chassis's software restart (Supervisor.restart) on real processes ----------------------

STUBBORN = [sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "print('ignoring SIGTERM', flush=True); time.sleep(120)"]


def stubborn() -> subprocess.Popen[bytes]:
    """A process that ignores SIGTERM (returned once it does)."""
    proc = subprocess.Popen(STUBBORN, stdout=subprocess.PIPE, start_new_session=True)
    assert proc.stdout is not None and proc.stdout.readline() == b"ignoring SIGTERM\n"
    return proc


@dataclass
class StubArray:
    """What ``Supervisor`` uses of ``nasblade.standalone.array.Array``: children and ``launch``."""

    data_dir: Path
    children: list[Any] = field(default_factory=list)
    controller: Any = None
    launched: list[list[str]] = field(default_factory=list)

    def launch(self, name: str, argv: list[str]) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
        self.launched.append(argv)
        return stubborn(), {"endpoints": {}}


def test_supervisor_restart_stops_with_sigterm_then_sigkill_and_starts_on_the_version(tmp_path: Path) -> None:
    from nasblade.standalone.array import Child
    from nasblade.standalone.supervisor import Busy, Supervisor

    stub = StubArray(data_dir=tmp_path)
    for part, argv in (("bp", ["bp", "--own", "fs-a", "--software-version", "1"]), ("fp", ["fp", "--fs", "{}"])):
        stub.children.append(Child(name=f"b-{part}", proc=stubborn(),
                                   ready={"endpoints": {}}, argv=argv, blade="b", part=part))
    sup = Supervisor(stub)
    old = [c.proc for c in stub.children]
    try:
        with pytest.raises(KeyError):
            sup.restart("nope", version="2", by="test")
        done = sup.restart("b", version="2", by="test", grace=0.5)
        assert done["stopped"] == {"b-fp": old[1].pid, "b-bp": old[0].pid}
        assert [p.returncode for p in old] == [-signal.SIGKILL, -signal.SIGKILL]  # SIGTERM ignored
        with pytest.raises(Busy, match="b-bp is waiting"):
            sup.restart("b", version="3", by="test")
        sup.poll()  # the block processor first, then its file processor
        sup.poll()
        assert stub.launched == [["bp", "--software-version", "2"], ["fp"]]
        st = sup.status()["blades"]["b"]
        assert st["softwareVersion"] == "2" and st["blockProcessor"]["state"] == "running"
        assert st["blockProcessor"]["restarts"] == 1 and st["fileProcessor"]["restarts"] == 1
        assert json.loads((tmp_path / "run" / "chassis.json").read_text())["blades"]["b"]["softwareVersion"] == "2"
    finally:
        for c in stub.children:
            c.proc.kill()
            c.proc.wait()
