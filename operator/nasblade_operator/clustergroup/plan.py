"""What a ClusterGroup should do next, decided without I/O (the group's sans-I/O core).

``handlers.py`` observes -- blade pods from the pod index, ownership and rollout state from
the group's status, the desired software version and file systems from the DiskArray -- and
hands an ``Observed`` record to ``plan``. ``plan`` returns the ordered ``Action`` list the
handler carries out (one blade API call, Service patch or pod create/delete each) and the
blade states for the status. Every rule lives in this module, so unit tests cover failover,
give-back and the rolling upgrade without an API server.

Rules, in the order they are applied:

1. A blade is ``Failed`` when its pod is gone (after it ran once), has terminated, is being deleted, or has not
   been Ready for ``failure_timeout``, or its heartbeat in the portion is older than that;
   ``Suspect`` while not Ready for less than that;
   ``Pending`` if it has never been Ready; else ``Running``.
2. Failover (policy Automatic): every file system whose owner is Failed moves to the Running
   blade that serves the fewest file systems (lowest index on ties). No survivor: it waits.
3. Failed pods are deleted once they own nothing; missing pods are created (desired version).
4. Give-back (policy Automatic): a file system away from its home blade returns once the home
   blade is Running and no rollout step is under way.
5. Rollout: when every blade is Running and no file system is away from home, the lowest
   index blade on an old version hands its file systems to a peer on the new version (or any
   Running peer) and is deleted; it comes back on the new version by rule 3 and gets its file
   systems back by rule 4. One blade at a time: nothing else moves while one is not Running.
6. Blades beyond ``count`` (scale-down) hand their file systems over first, then go.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Literal

BladeState = Literal["Pending", "Running", "Suspect", "Failed", "Upgrading"]
MoveReason = Literal["Failover", "GiveBack", "Rollout", "ScaleDown"]


@dataclasses.dataclass(frozen=True)
class PodObs:
    """One blade pod as the pod index saw it."""

    name: str
    index: int
    version: str
    ready: bool
    ever_ready: bool
    terminated: bool
    deleting: bool
    not_ready_for: float  # seconds since the Ready condition last became False (0 if Ready)
    heartbeat_age: float | None = None  # from the blade's status; None when unknown


@dataclasses.dataclass(frozen=True)
class Observed:
    group: str
    count: int
    version: str
    file_systems: Sequence[str]
    pods: Mapping[int, PodObs]
    owners: Mapping[str, str]  # file system -> blade pod name (from status)
    failure_timeout: float
    automatic_failover: bool = True
    automatic_give_back: bool = True
    known: frozenset[str] = frozenset()  # blades seen Running before: a missing one has failed


@dataclasses.dataclass(frozen=True)
class CreatePod:
    index: int


@dataclasses.dataclass(frozen=True)
class DeletePod:
    name: str
    reason: Literal["Failed", "Upgrade", "ScaleDown"]


@dataclasses.dataclass(frozen=True)
class MoveFileSystem:
    fs: str
    source: str
    target: str
    reason: MoveReason


Action = CreatePod | DeletePod | MoveFileSystem


@dataclasses.dataclass(frozen=True)
class Plan:
    actions: tuple[Action, ...]
    states: Mapping[str, BladeState]  # blade pod name -> state
    owners: Mapping[str, str]  # file system -> owner after the actions
    stranded: tuple[str, ...]  # file systems whose owner failed and no survivor can take
    rolling: bool  # a blade still runs an old version


def blade_name(group: str, index: int) -> str:
    return f"{group}-blade-{index}"


def home_of(group: str, file_systems: Sequence[str], fs: str, count: int) -> str:
    """The blade a file system lives on when every blade is up: round robin in spec order."""
    return blade_name(group, file_systems.index(fs) % count)


def state_of(pod: PodObs | None, *, failure_timeout: float) -> BladeState:
    if pod is None or pod.terminated or pod.deleting:
        return "Failed"
    if pod.ready and pod.heartbeat_age is not None and pod.heartbeat_age >= failure_timeout:
        return "Failed"  # the pod looks fine but the blade stopped writing its heartbeat
    if pod.ready:
        return "Running"
    if not pod.ever_ready:
        return "Pending"
    return "Failed" if pod.not_ready_for >= failure_timeout else "Suspect"


def plan(obs: Observed) -> Plan:
    """The actions that bring the group closer to its spec, in execution order."""
    by_name = {p.name: p for p in obs.pods.values()}
    states: dict[str, BladeState] = {
        p.name: state_of(p, failure_timeout=obs.failure_timeout) for p in obs.pods.values()
    }
    for i in range(obs.count):
        name = blade_name(obs.group, i)
        if i not in obs.pods:
            states[name] = "Failed" if name in obs.known else "Pending"
    owners = {fs: obs.owners.get(fs) or home_of(obs.group, obs.file_systems, fs, obs.count) for fs in obs.file_systems}
    actions: list[Action] = []
    stranded: list[str] = []

    def running(exclude: str = "", *, prefer_version: str = "") -> list[str]:
        names = [
            blade_name(obs.group, i)
            for i in range(obs.count)
            if states.get(blade_name(obs.group, i)) == "Running" and blade_name(obs.group, i) != exclude
        ]
        load = {n: sum(1 for o in owners.values() if o == n) for n in names}
        return sorted(
            names,
            key=lambda n: (bool(prefer_version) and by_name[n].version != prefer_version, load[n], _index(n)),
        )

    def move(fs: str, target: str, reason: MoveReason) -> None:
        actions.append(MoveFileSystem(fs=fs, source=owners[fs], target=target, reason=reason))
        owners[fs] = target

    # 2. Failover, and 6. hand-over by blades beyond count.
    for fs in obs.file_systems:
        owner = owners[fs]
        beyond = _index(owner) >= obs.count
        if states.get(owner, "Failed") == "Failed" or (beyond and states.get(owner) is not None):
            if not obs.automatic_failover and not beyond:
                stranded.append(fs)
                continue
            survivors = running(owner)
            if survivors:
                move(fs, survivors[0], "ScaleDown" if beyond and states.get(owner) != "Failed" else "Failover")
            elif states.get(owner, "Failed") == "Failed":
                stranded.append(fs)

    # 3. Replace failed pods that own nothing; create missing ones; remove extra ones.
    for i, pod in sorted(obs.pods.items()):
        owns = any(o == pod.name for o in owners.values())
        if i >= obs.count and not owns and not pod.deleting:
            actions.append(DeletePod(name=pod.name, reason="ScaleDown"))
        elif (states[pod.name] == "Failed" and not owns and not pod.deleting and pod.ever_ready) or (pod.terminated and not owns and not pod.deleting):
            actions.append(DeletePod(name=pod.name, reason="Failed"))
    for i in range(obs.count):
        if i not in obs.pods:
            actions.append(CreatePod(index=i))

    moving = any(isinstance(a, MoveFileSystem) for a in actions)
    all_running = all(states.get(blade_name(obs.group, i)) == "Running" for i in range(obs.count)) and len(obs.pods) == obs.count
    old = sorted(p.index for p in obs.pods.values() if p.version != obs.version and p.index < obs.count)
    rolling = bool(old)

    # 4. Give-back.
    if obs.automatic_give_back and not moving:
        for fs in obs.file_systems:
            home = home_of(obs.group, obs.file_systems, fs, obs.count)
            if owners[fs] != home and states.get(home) == "Running" and states.get(owners[fs]) == "Running":
                move(fs, home, "GiveBack")
        moving = any(isinstance(a, MoveFileSystem) for a in actions)

    # 5. Rollout, one blade at a time.
    away = any(owners[fs] != home_of(obs.group, obs.file_systems, fs, obs.count) for fs in obs.file_systems)
    if rolling and all_running and not moving and not (away and obs.automatic_give_back):
        victim = obs.pods[old[0]]
        for fs in obs.file_systems:
            if owners[fs] == victim.name:
                peers = running(victim.name, prefer_version=obs.version)
                if peers:
                    move(fs, peers[0], "Rollout")
        actions.append(DeletePod(name=victim.name, reason="Upgrade"))
        states[victim.name] = "Upgrading"

    return Plan(
        actions=tuple(actions),
        states=states,
        owners=owners,
        stranded=tuple(stranded),
        rolling=rolling,
    )


def _index(blade: str) -> int:
    try:
        return int(blade.rsplit("-", 1)[1])
    except (IndexError, ValueError):
        return 1 << 30


BackupDecision = Literal["Interval", "MaxAge", "Defer"]


def backup_decision(*, load: int | None, threshold: int, age: float, max_age: float) -> BackupDecision:
    """Whether a due interval backup runs now (claim 19: load-aware).

    ``load`` is the controller's load in percent (None when it could not be read: run, the
    blade throttles the copy itself); ``age`` the seconds since the last successful backup.
    At or above ``threshold`` the backup waits, unless the last one is older than ``max_age``.
    """
    if load is None or load < threshold:
        return "Interval"
    return "MaxAge" if age >= max_age else "Defer"
