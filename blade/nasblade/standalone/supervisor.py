"""The standalone array's chassis: it restarts crashed blade processes and powers blades off.

A NAS chassis keeps its blades running: a blade whose software dies is restarted, and a blade
that hangs is power-cycled when its partner takes it over. ``Supervisor`` does both for the
processes ``nasblade.standalone.array.Array`` started; ``nasblade.standalone.main`` (``nasblade
up``) drives it from its main loop, and ``nasblade.standalone.chassis`` serves ``power_off`` to
the blades' cluster members (``nasblade.cluster.takeover`` asks, through
``nasblade.bladeapi.chassis``, before it binds a taken-over file system's address).

- **Restart** (``poll``): a block processor or file processor that exits while the array is
  running is started again from its own command line, minus the file systems it was told to
  own at array start (``--own``/``--fs``: what it serves now is the group record's business,
  ``nasblade.cluster.member``), with its management API on the same port as before. The delay
  doubles with each exit that comes less than ``STABLE_AFTER`` seconds after a start
  (``restart_delay``); a power-off by the chassis is restarted after ``POWER_CYCLE_DELAY``
  and does not count as a crash. A file processor waits for its block processor.
- **Power-off** (``power_off``): SIGKILL both processes of the blade (their process groups,
  so a SIGSTOPped blade dies too) and reap them before answering, so the blade's addresses are
  free when the caller binds them. A blade being restarted when the power goes off is killed
  as soon as its start completes.
- **Software restart** (``restart``, for ``nasblade software rollout`` on a standalone array):
  stop both processes of a blade gracefully (SIGTERM to the file processor, then the block
  processor, each given ``STOP_GRACE`` seconds before SIGKILL), then start them again through
  ``poll`` with ``--software-version V``: the block processor installs V from the program LU
  and the file processor boots it. V stays the blade's version for later crash restarts; a
  later ``nasblade up`` boots the catalog's selected version (the rollout selects V at its end).
- **Give-back**: once a restarted blade is back (every member of its group alive in its own
  cluster view), the supervisor asks it to take its home file systems back
  (``POST /v1/cluster/giveback``, a graceful move), like a chassis's automatic give-back.
- **Status**: ``status()`` per blade part (pid, state, restarts, last exit status, reason),
  also written to ``DATA/run/chassis.json`` after every change. Each restart is logged with
  its count.

- **The controller** is restarted like a blade process (same backoff), on the same NBD and
  control-API addresses it had (the blades know them): the control store and the devices hold
  everything it acknowledged, and the blades' NBD connections reconnect and replay what was in
  flight (``nasblade.blockproc.upstream``), so no acknowledged write is lost; file systems stay
  where they are (a blade whose reads stalled meanwhile counts nobody's silence over the gap,
  ``nasblade.cluster.core.Liveness.gap``).
- **Children die with it**: ``nasblade.standalone.lifetime`` (parent-death signal), so a
  ``kill -9`` of ``nasblade up`` leaves no orphan.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nasblade.standalone.array import Array, Child

log = logging.getLogger(__name__)

BASE_DELAY = 0.5
"""Seconds before the first restart of a crashed process."""
MAX_DELAY = 30.0
STABLE_AFTER = 30.0
"""A process that ran this long before exiting starts the backoff from ``BASE_DELAY`` again."""
POWER_CYCLE_DELAY = 0.2
GIVEBACK_SETTLE = 1.0
"""Seconds a restarted blade must have seen its whole group alive before it takes its file
systems back."""
GIVEBACK_GIVE_UP = 300.0
STOP_GRACE = 30.0
"""Seconds a blade process has to exit after SIGTERM in a software restart before SIGKILL."""


class Busy(RuntimeError):
    """The blade is being started or restarted already; ask again later."""


def restart_delay(failures: int) -> float:
    """Backoff before restart number ``failures`` of a crash loop (1, 2, ...)."""
    return float(min(MAX_DELAY, BASE_DELAY * 2 ** max(0, failures - 1)))


def _strip(argv: list[str], flag: str) -> list[str]:
    """``argv`` without every ``flag VALUE`` pair."""
    out: list[str] = []
    skip = False
    for a in argv:
        if skip:
            skip = False
        elif a == flag:
            skip = True
        else:
            out.append(a)
    return out


def restart_argv(argv: list[str], *, part: str, api: str | None) -> list[str]:
    """The command line a crashed ``part`` ("bp"/"fp") is started again with (module doc)."""
    if part == "fp":
        return _strip(argv, "--fs")
    out = _strip(argv, "--own")
    if api and "--api-listen" in out:
        i = out.index("--api-listen")
        out[i + 1] = api.split("://", 1)[-1].rstrip("/")
    return out


def controller_restart_argv(argv: list[str], ready_endpoints: dict[str, Any]) -> list[str]:
    """The controller's command line for a restart: listening where it listened (a first start
    may have asked for port 0; the blades hold the ports it got)."""
    out = list(argv)
    for flag, key in (("--nbd-listen", "nbd"), ("--api-listen", "api")):
        value = ready_endpoints.get(key)
        if value and flag in out:
            out[out.index(flag) + 1] = str(value).split("://", 1)[-1].rstrip("/")
    return out


def with_version(argv: list[str], version: str) -> list[str]:
    """A block processor's command line booting software ``version``."""
    out = _strip(argv, "--software-version")
    return [*out, "--software-version", version]


@dataclass
class Part:
    """Supervision state of one blade process (kept on the ``Child``)."""

    blade: str
    part: str
    argv: list[str]
    started: float = field(default_factory=time.monotonic)
    started_at: float = field(default_factory=time.time)
    """Wall time of the last (re)start, for the status."""
    restarts: int = 0
    failures: int = 0
    last_exit: int | None = None
    restart_at: float | None = None
    reason: str = ""
    state: str = "running"


@dataclass
class Supervisor:
    array: Array
    status_path: Path | None = None
    parts: dict[str, Part] = field(default_factory=dict)
    """Keyed by child name (``<blade>-bp`` / ``<blade>-fp``)."""
    lock: threading.Lock = field(default_factory=threading.Lock)
    power_cycles: dict[str, int] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    """Blade → software version it was last restarted on (``restart``)."""
    givebacks: dict[str, float] = field(default_factory=dict)
    """Blade → monotonic time its give-back was scheduled (after a restart)."""
    _alive_since: dict[str, float] = field(default_factory=dict)
    _giving_back: set[str] = field(default_factory=set)
    _status_lock: threading.Lock = field(default_factory=threading.Lock)
    controller: Part | None = None
    """Supervision state of the controller (restarted like a blade process)."""
    stopping: bool = False

    def __post_init__(self) -> None:
        for c in self.array.children:
            if c.blade is not None and c.part is not None:
                self.parts[c.name] = Part(blade=c.blade, part=c.part, argv=list(c.argv))
        if self.array.controller is not None:
            self.controller = Part(blade="", part="controller", argv=list(self.array.controller.argv))
        if self.status_path is None:
            self.status_path = self.array.data_dir / "run" / "chassis.json"
        self.write_status()

    # -- lookups -----------------------------------------------------------------------------

    def _child(self, name: str) -> Child | None:
        return next((c for c in self.array.children if c.name == name), None)

    def blades(self) -> list[str]:
        return sorted({p.blade for p in self.parts.values()})

    # -- restart -------------------------------------------------------------------------------

    def poll(self) -> None:
        """One supervision pass: notice exits, restart what is due, drive give-backs."""
        now = time.monotonic()
        changed = False
        with self.lock:
            for name, part in self.parts.items():
                child = self._child(name)
                if child is None or part.state != "running":
                    continue
                rc = child.proc.poll()
                if rc is None:
                    continue
                part.last_exit = rc
                if part.reason.startswith("powered off"):
                    delay = POWER_CYCLE_DELAY
                else:
                    part.failures = part.failures + 1 if now - part.started < STABLE_AFTER else 1
                    delay = restart_delay(part.failures)
                    part.reason = f"exited with status {rc}"
                    log.error("%s exited with status %s; restart %d in %.1fs", name, rc, part.restarts + 1, delay)
                part.state = "waiting"
                part.restart_at = now + delay
                changed = True
            ctl = self.controller
            if ctl is not None and ctl.state == "running" and self.array.controller is not None \
                    and (rc := self.array.controller.proc.poll()) is not None:
                ctl.last_exit = rc
                ctl.failures = ctl.failures + 1 if now - ctl.started < STABLE_AFTER else 1
                delay = restart_delay(ctl.failures)
                ctl.reason = f"exited with status {rc}"
                ctl.state, ctl.restart_at = "waiting", now + delay
                log.error("controller exited with status %s; restart %d in %.1fs", rc, ctl.restarts + 1, delay)
                changed = True
        ctl = self.controller
        if ctl is not None and ctl.state == "waiting" and ctl.restart_at is not None and ctl.restart_at <= now \
                and not self.stopping:
            self._restart_controller(ctl)
            changed = True
        due = sorted((n for n, p in self.parts.items() if p.state == "waiting" and p.restart_at is not None
                      and p.restart_at <= now), key=lambda n: 0 if n.endswith("-bp") else 1)
        for name in due:
            if self.stopping:
                return
            part = self.parts[name]
            if part.part == "fp" and self.parts.get(f"{part.blade}-bp", part).state != "running":
                continue  # its block processor first
            self._restart(name, part)
            changed = True
        if changed:
            self.write_status()
        self._drive_givebacks()

    def _restart_controller(self, part: Part) -> None:
        from nasblade.standalone.array import ArrayError

        child = self.array.controller
        assert child is not None
        argv = controller_restart_argv(part.argv, child.ready.get("endpoints", {}))
        part.state = "starting"
        try:
            proc, line = self.array.launch("controller", argv)
        except (ArrayError, OSError) as exc:
            part.failures += 1
            delay = restart_delay(part.failures)
            part.state, part.restart_at = "waiting", time.monotonic() + delay
            part.reason = f"restart failed: {exc}"
            log.error("controller: restart failed (%s); next try in %.1fs", str(exc).splitlines()[0], delay)
            return
        with self.lock:
            child.proc, child.ready = proc, line
            part.restarts += 1
            part.started, part.started_at = time.monotonic(), time.time()
            part.state, part.restart_at = "running", None
        log.warning("controller restarted (restart %d, pid %d) after: %s", part.restarts, proc.pid, part.reason)

    def _restart(self, name: str, part: Part) -> None:
        from nasblade.standalone.array import ArrayError

        child = self._child(name)
        assert child is not None
        cycle = self.power_cycles.get(part.blade, 0)
        api = child.ready.get("endpoints", {}).get("api") if part.part == "bp" else None
        argv = restart_argv(part.argv, part=part.part, api=api)
        part.state = "starting"
        try:
            proc, line = self.array.launch(name, argv)
        except (ArrayError, OSError) as exc:
            part.failures += 1
            delay = restart_delay(part.failures)
            part.state, part.restart_at = "waiting", time.monotonic() + delay
            part.reason = f"restart failed: {exc}"
            log.error("%s: restart failed (%s); next try in %.1fs", name, str(exc).splitlines()[0], delay)
            return
        with self.lock:
            child.proc, child.ready = proc, line
            part.restarts += 1
            part.started, part.started_at = time.monotonic(), time.time()
            part.state = "running"
            part.restart_at = None
            powered_off_meanwhile = self.power_cycles.get(part.blade, 0) != cycle
            self.givebacks[part.blade] = time.monotonic()
            self._alive_since.pop(part.blade, None)
            if powered_off_meanwhile:  # the power went off while it was starting: it goes too
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                part.reason = "powered off while it was starting"
        if powered_off_meanwhile:
            log.warning("%s: restart %d (pid %d) killed: the blade was powered off while it started",
                        name, part.restarts, proc.pid)
        else:
            log.warning("%s restarted (restart %d, pid %d) after: %s", name, part.restarts, proc.pid, part.reason)

    # -- power fencing ---------------------------------------------------------------------------

    def power_off(self, blade: str, *, by: str, reason: str) -> dict[str, Any]:
        """SIGKILL ``blade``'s processes and reap them (module doc); ``KeyError``: no such blade."""
        names = [n for n, p in self.parts.items() if p.blade == blade]
        if not names:
            raise KeyError(blade)
        killed: list[int] = []
        with self.lock:
            self.power_cycles[blade] = self.power_cycles.get(blade, 0) + 1
            for name in names:
                child = self._child(name)
                part = self.parts[name]
                if child is None:
                    continue
                if child.proc.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(child.proc.pid, signal.SIGKILL)
                    killed.append(child.proc.pid)
                child.proc.wait()
                if part.state == "running":
                    part.reason = f"powered off by {by}: {reason}"
        log.warning("chassis: powered %s off for %s (%s); pids %s", blade, by, reason, killed)
        self.write_status()
        return {"blade": blade, "poweredOff": True, "killed": killed, "requestedBy": by, "reason": reason}

    # -- software restart --------------------------------------------------------------------------

    def restart(self, blade: str, *, version: str, by: str, grace: float = STOP_GRACE) -> dict[str, Any]:
        """Stop ``blade`` gracefully and have ``poll`` start it on ``version`` (module doc).

        ``KeyError``: no such blade; ``Busy``: one of its processes is not running right now
        (starting, waiting for a restart, or already being restarted)."""
        names = sorted((n for n, p in self.parts.items() if p.blade == blade),
                       key=lambda n: 0 if n.endswith("-fp") else 1)
        if not names:
            raise KeyError(blade)
        with self.lock:
            busy = [f"{n} is {self.parts[n].state}" for n in names if self.parts[n].state != "running"]
            if busy:
                raise Busy(", ".join(busy))
            for name in names:
                self.parts[name].state = "stopping"
        self.write_status()
        stopped: dict[str, int | None] = {}
        for name in names:  # the file processor first: it stops serving, then its block processor flushes
            child = self._child(name)
            if child is None:
                continue
            stopped[name] = child.proc.pid
            if child.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.proc.pid, signal.SIGTERM)
                try:
                    child.proc.wait(grace)
                except subprocess.TimeoutExpired:
                    log.warning("%s did not stop within %.0fs of SIGTERM; killing it", name, grace)
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(child.proc.pid, signal.SIGKILL)
                    child.proc.wait()
        now = time.monotonic()
        with self.lock:
            for name in names:
                part = self.parts[name]
                if part.part == "bp":
                    part.argv = with_version(part.argv, version)
                child = self._child(name)
                part.last_exit = None if child is None else child.proc.returncode
                part.failures = 0
                part.reason = f"restarted on software {version} for {by}"
                part.state, part.restart_at = "waiting", now
            self.versions[blade] = version
        log.warning("chassis: restarting %s on software %s for %s (stopped pids %s)",
                    blade, version, by, list(stopped.values()))
        self.write_status()
        return {"blade": blade, "softwareVersion": version, "stopped": stopped, "requestedBy": by}

    # -- give-back -------------------------------------------------------------------------------

    def _drive_givebacks(self) -> None:
        now = time.monotonic()
        for blade, since in list(self.givebacks.items()):
            if blade in self._giving_back:
                continue
            if now - since > GIVEBACK_GIVE_UP:
                log.error("%s: no give-back: the blade did not come back within %.0fs", blade, GIVEBACK_GIVE_UP)
                self.givebacks.pop(blade, None)
                continue
            if any(p.state != "running" for p in self.parts.values() if p.blade == blade):
                self._alive_since.pop(blade, None)
                continue
            self._giving_back.add(blade)
            threading.Thread(target=self._giveback, args=(blade,), daemon=True, name=f"giveback-{blade}").start()

    def _giveback(self, blade: str) -> None:
        from nasblade.bladeapi.client import BladeAPIError, BladeClient

        try:
            child = self._child(f"{blade}-bp")
            api = None if child is None else child.ready.get("endpoints", {}).get("api")
            if not api:
                self.givebacks.pop(blade, None)
                return
            client = BladeClient(str(api), self.array.blade_token(), timeout=60.0)
            view = client.cluster()
            everyone = all(m["alive"] for m in view["members"])
            me = next((m for m in view["members"] if m["blade"] == blade), None)
            now = time.monotonic()
            if not everyone or me is None or view.get("pendingTakeovers"):
                self._alive_since.pop(blade, None)
                return
            first = self._alive_since.setdefault(blade, now)
            if now - first < GIVEBACK_SETTLE:
                return
            done = client.give_back()
            moved = [t["fileSystem"] for t in done.get("takeovers", [])]
            log.info("%s: give-back after restart: %s", blade, ", ".join(moved) or "nothing to take back")
            self.givebacks.pop(blade, None)
        except (OSError, BladeAPIError, KeyError, ValueError) as exc:
            log.info("%s: give-back not yet: %s", blade, exc)
        finally:
            self._giving_back.discard(blade)

    # -- status ----------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        ctl, child = self.controller, self.array.controller
        controller = None if ctl is None else {
            "pid": None if child is None else child.proc.pid, "state": ctl.state, "restarts": ctl.restarts,
            "lastExit": ctl.last_exit, "reason": ctl.reason, "startedAt": ctl.started_at}
        for name, p in sorted(self.parts.items()):
            child = self._child(name)
            entry = out.setdefault(p.blade, {"powerCycles": self.power_cycles.get(p.blade, 0),
                                             "softwareVersion": self.versions.get(p.blade)})
            if p.part == "bp" and child is not None:
                entry["api"] = child.ready.get("endpoints", {}).get("api")
            entry["blockProcessor" if p.part == "bp" else "fileProcessor"] = {
                "pid": None if child is None else child.proc.pid, "state": p.state, "restarts": p.restarts,
                "lastExit": p.last_exit, "reason": p.reason, "startedAt": p.started_at,
            }
        return {"blades": out, "controller": controller, "pendingGivebacks": sorted(self.givebacks)}

    def write_status(self) -> None:
        """Write ``chassis.json`` atomically. Called from the main loop and from the chassis
        API's threads (power-off, restart): one writer at a time, each with its own temporary
        file, so two writers never rename each other's file away."""
        assert self.status_path is not None
        with self._status_lock:
            self.status_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.status_path.with_name(f".{self.status_path.name}.{threading.get_ident()}.tmp")
            tmp.write_text(json.dumps(self.status(), indent=1, sort_keys=True))
            tmp.replace(self.status_path)
