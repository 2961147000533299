"""The rolling software restart of a standalone array, one blade at a time.

``nasblade software rollout V`` on a ``nasblade up`` array (``nasblade.terminal.commands.
rollout``) calls ``roll``; on Kubernetes the operator does the same job. For each blade B that
does not run V yet, in configuration order:

1. **move**: every file system B serves moves to a live peer of B's cluster group with the
   graceful planned takeover (``POST /v1/cluster/filesystems/{fs}/takeover`` on the peer: B
   releases first, so no acknowledged write is lost and clients only see a short pause). A
   blade alone in its group has no peer: its file systems pause while it restarts;
2. **restart**: the chassis of ``nasblade up`` (``nasblade.standalone.chassis``, ``restart``)
   stops B gracefully and starts it again with ``--software-version V``;
3. **wait**: until B's management API (``/v1/status``) reports version V and a fresh heartbeat;
4. **give back**: the file systems moved in step 1 come back to B (the chassis gives B its home
   file systems back after every restart; what B still does not serve after ``GIVEBACK_NUDGE``
   seconds, e.g. a file system B served away from its home, B takes over gracefully itself).

Before the first blade every blade must be up (a rollout never starts on a degraded array);
a failure stops the rollout with ``RolloutError`` and leaves the array serving: the file
systems stay where they are (on the peer when B did not come back). Progress goes to the
caller's ``progress`` callback, never to a terminal.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

STEPS = 4
"""Steps per blade reported to ``progress`` (move, restart, wait, give back)."""
FRESH_HEARTBEAT = 10.0
"""A restarted blade counts as back when its heartbeat is younger than this (seconds)."""
GIVEBACK_NUDGE = 30.0
POLL = 0.5


class RolloutError(RuntimeError):
    """The rollout stopped; the message says at which blade and step."""


class RolloutTimeout(RolloutError):
    """A blade did not come back (or take its file systems back) within the time per blade."""


class Blades(Protocol):
    """Where ``roll`` finds the blades' management APIs (``BladeClient``-like objects)."""

    def blade_client(self, name: str) -> Any: ...


class Chassis(Protocol):
    def restart(self, blade: str, *, software_version: str, requested_by: str) -> dict[str, Any]: ...


@dataclass(frozen=True)
class BladeRef:
    name: str
    group: str


@dataclass
class BladeResult:
    blade: str
    before: str | None
    after: str | None = None
    moved: list[str] = field(default_factory=list)
    skipped: bool = False
    seconds: float = 0.0


Progress = Callable[[str, int, str], None]
"""``progress(blade, steps_done, detail)``."""


def _status(blades: Blades, name: str) -> dict[str, Any] | None:
    """``/v1/status`` of ``name``, or None while it does not answer."""
    from nasblade.bladeapi.client import BladeAPIError

    try:
        st: dict[str, Any] = blades.blade_client(name).status()
        return st
    except (BladeAPIError, OSError):
        return None


def _healthy(st: dict[str, Any] | None) -> bool:
    age = None if st is None else st.get("heartbeatAge")
    return st is not None and not st.get("failed") and age is not None and float(age) < FRESH_HEARTBEAT


def _runs(api: Blades, name: str, version: str) -> bool:
    now = _status(api, name)
    return now is not None and now.get("version") == version and _healthy(now)


def _serves(api: Blades, name: str, fss: list[str]) -> bool:
    now = _status(api, name)
    return now is not None and set(fss) <= set(now.get("fileSystems", []))


def _take_back(api: Blades, name: str, fss: list[str]) -> None:
    """``name`` takes back (graceful takeover) those of ``fss`` it does not serve yet: its
    non-home file systems, which the chassis's give-back leaves where they are."""
    from nasblade.bladeapi.client import BladeAPIError

    now = _status(api, name) or {}
    for fs in fss:
        if fs not in now.get("fileSystems", []):
            with contextlib.suppress(BladeAPIError, OSError):  # the chassis's give-back may be under way
                api.blade_client(name).take_over_fs(fs)


def _wait(what: str, cond: Callable[[], bool], *, deadline: float, action: Callable[[], None] | None = None,
          nudge_at: float | None = None) -> None:
    while not cond():
        now = time.monotonic()
        if action is not None and nudge_at is not None and now >= nudge_at:
            action()
            nudge_at = None
        if now > deadline:
            raise RolloutTimeout(f"timed out waiting until {what}")
        time.sleep(POLL)


def roll(*, version: str, blades: list[BladeRef], api: Blades, chassis: Chassis, progress: Progress,
         timeout_per_blade: float = 300.0, requested_by: str = "nasblade software rollout") -> list[BladeResult]:
    """Roll ``blades`` to ``version`` one at a time (module doc); returns what was done per blade."""
    from nasblade.bladeapi.client import BladeAPIError

    status = {b.name: _status(api, b.name) for b in blades}
    down = [b.name for b in blades if not _healthy(status[b.name])]
    if down:
        raise RolloutError(f"not every blade is up ({', '.join(down)} not): nothing was restarted; "
                           "fix the array first (nasblade status)")
    results: list[BladeResult] = []
    for b in blades:
        st = status[b.name] if not results else _status(api, b.name)
        before = None if st is None else st.get("version")
        res = BladeResult(blade=b.name, before=before)
        results.append(res)
        if before == version and _healthy(st):
            res.after, res.skipped = before, True
            progress(b.name, STEPS, f"already on {version}")
            continue
        start = time.monotonic()
        deadline = start + timeout_per_blade
        served = list((st or {}).get("fileSystems", []))
        peers = [p.name for p in blades if p.group == b.group and p.name != b.name]
        peer = next((p for p in peers if _healthy(_status(api, p))), None)
        # 1. move its file systems to a peer
        if served and peer is None:
            progress(b.name, 0, f"no live peer in {b.group}: {', '.join(served)} pause during the restart")
        for fs in served:
            if peer is None:
                break
            progress(b.name, 0, f"moving {fs} to {peer}")
            try:
                api.blade_client(peer).take_over_fs(fs)
            except (BladeAPIError, OSError) as exc:
                raise RolloutError(f"{b.name}: moving {fs} to {peer} failed: {exc}; nothing was restarted") from exc
            res.moved.append(fs)
        # 2. restart on the new version
        progress(b.name, 1, f"restarting on {version}")
        try:
            chassis.restart(b.name, software_version=version, requested_by=requested_by)
        except (RuntimeError, OSError) as exc:  # ChassisError is a RuntimeError
            _take_back(api, b.name, res.moved)  # nothing restarted: B serves them again
            raise RolloutError(f"{b.name}: the chassis refused the restart: {exc}") from exc
        # 3. back on the new version with a fresh heartbeat
        progress(b.name, 2, f"waiting for {b.name} on {version}")
        _wait(f"{b.name} runs {version} with a fresh heartbeat (see DATA/logs/{b.name}-bp.log)",
              functools.partial(_runs, api, b.name, version), deadline=deadline)
        # 4. its file systems back home
        if res.moved:
            progress(b.name, 3, f"giving back {', '.join(res.moved)}")
            _wait(f"{b.name} serves {', '.join(res.moved)} again", functools.partial(_serves, api, b.name, res.moved),
                  deadline=deadline, action=functools.partial(_take_back, api, b.name, res.moved),
                  nudge_at=time.monotonic() + GIVEBACK_NUDGE)
        res.after = version
        res.seconds = round(time.monotonic() - start, 3)
        progress(b.name, STEPS, f"on {version} in {res.seconds:.1f}s")
    return results
