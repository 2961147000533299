"""What a ClusterGroup should do next, decided without I/O (the group's sans-I/O core).

``daemon.py`` observes -- blade pods from the pod index, ownership and rollout state from
the group's status, the desired software version and file systems from the DiskArray -- and
hands an ``Observed`` record to ``plan``. ``plan`` returns the ordered ``Action`` list
``actor.py`` carries out (one blade API call, Service patch or pod create/delete each) and the
blade states ``status.py`` reports. Every rule lives in this module, except the choice of a
survivor, which is the blades' own (``nasblade.cluster.core.choose_survivor``: the operator and
the blades must pick the same one), so unit tests cover failover, give-back and the rolling
upgrade without an API server.

Rules, in the order they are applied:

1. A blade is ``Failed`` when its pod is gone (after it ran once), has terminated, is being deleted, or has not
   been Ready for ``failure_timeout``, or its heartbeat in the portion is older than that while
   another Ready blade's is not (when every Ready blade's heartbeat is that old, the portion's
   controller is away, not the blades: nobody fails for it, as the blades' own ``Liveness``);
   ``Suspect`` while not Ready for less than that;
   ``Pending`` if it has never been Ready; else ``Running``.
2. Failover (policy Automatic): every file system whose owner is Failed moves to the survivor
   the blades would choose (``choose_survivor``: the Running blade that serves the fewest file
   systems, counting the moves already planned, lowest index on ties; file systems are given
   out in name order, as ``cluster.core.plan_takeovers`` does; the moves are listed in spec
   order). No survivor: it waits.
3. Failed pods are deleted once they own nothing; missing pods are created (desired version).
4. A planned move (``nasblade takeover FS --to BLADE``: the ``nasblade.io/move-request``
   annotation, parsed by ``parse_move_request``) is checked against what rules 1-3 left: the
   file system and the blade must exist in this group and the target must be Running, else it
   is refused with the reason. A move to a blade other than the home blade pins the file
   system there (``pins``): from then on the pinned blade stands in for the home blade in
   rules 5 and 6. A move to the home blade (``giveback FS``) removes the pin. Failover away
   from a pinned blade still happens (rule 2); the file system returns to the pinned blade.
5. Give-back (policy Automatic): a file system away from its preferred blade (pin, else home)
   returns once that blade is Running and no rollout step is under way.
6. Rollout: when every blade is Running and no file system is away from home, the lowest
   index blade on an old version hands its file systems to a peer on the new version (or any
   Running peer) and is deleted; it comes back on the new version by rule 3 and gets its file
   systems back by rule 5. One blade at a time: nothing else moves while one is not Running.
7. Blades beyond ``count`` (scale-down) hand their file systems over first, then go.
"""

from __future__ import annotations

import collections
import dataclasses
import json
from collections.abc import Mapping, Sequence
from typing import Literal

from nasblade.cluster import core as cluster_core

BladeState = Literal["Pending", "Running", "Suspect", "Failed", "Upgrading"]
MoveReason = Literal["Failover", "GiveBack", "Rollout", "ScaleDown", "Planned"]
RequestResult = Literal["Moving", "Succeeded", "Refused"]


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
    pins: Mapping[str, str] = dataclasses.field(default_factory=dict)  # file system -> blade it was moved to
    request: MoveRequest | None = None  # a planned move asked for (the move-request annotation)


@dataclasses.dataclass(frozen=True)
class MoveRequest:
    """``nasblade.io/move-request: {"fileSystem": FS, "to": BLADE, "id": ID}`` on the group."""

    id: str
    fs: str
    to: str


@dataclasses.dataclass(frozen=True)
class RequestOutcome:
    """What became of a ``MoveRequest``: ``Moving`` (a ``Planned`` move is among the actions),
    ``Succeeded`` (the file system is already there) or ``Refused`` (``message`` says why)."""

    request: MoveRequest
    result: RequestResult
    message: str


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
    pins: Mapping[str, str] = dataclasses.field(default_factory=dict)  # after the request
    request: RequestOutcome | None = None


def parse_move_request(text: str) -> MoveRequest | str:
    """The annotation's value as a ``MoveRequest``, or the reason it is not one."""
    try:
        doc = json.loads(text)
    except ValueError as exc:
        return f"the move request is not JSON ({exc}): {text[:200]!r}"
    if not isinstance(doc, dict):
        return f"the move request must be a JSON object, got {text[:200]!r}"
    fields = {k: doc.get(k) for k in ("fileSystem", "to", "id")}
    bad = [k for k, v in fields.items() if not isinstance(v, str) or not v]
    if bad:
        return f"the move request lacks {', '.join(bad)} (want {{\"fileSystem\": FS, \"to\": BLADE, \"id\": ID}})"
    return MoveRequest(id=str(doc["id"]), fs=str(doc["fileSystem"]), to=str(doc["to"]))


def blade_name(group: str, index: int) -> str:
    return f"{group}-blade-{index}"


def home_of(group: str, file_systems: Sequence[str], fs: str, count: int) -> str:
    """The blade a file system lives on when every blade is up: round robin in spec order."""
    return blade_name(group, file_systems.index(fs) % count)


def _heartbeat_stale(pod: PodObs, failure_timeout: float) -> bool:
    return pod.ready and pod.heartbeat_age is not None and pod.heartbeat_age >= failure_timeout


def heartbeats_tell(pods: Sequence[PodObs], *, failure_timeout: float) -> bool:
    """Whether heartbeat ages say anything about single blades: not when every Ready blade with a
    known heartbeat has a stale one -- then what stopped is the controller holding the portion
    (a restart, a recreated pod), and failing the blades for it would move nothing anywhere
    useful (no blade could take a file system over while the controller is away)."""
    known = [p for p in pods if p.ready and p.heartbeat_age is not None]
    return not known or not all(_heartbeat_stale(p, failure_timeout) for p in known)


def state_of(pod: PodObs | None, *, failure_timeout: float, trust_heartbeat: bool = True) -> BladeState:
    if pod is None or pod.terminated or pod.deleting:
        return "Failed"
    if trust_heartbeat and _heartbeat_stale(pod, failure_timeout):
        return "Failed"  # the pod looks fine but the blade stopped writing its heartbeat
    if pod.ready:
        return "Running"
    if not pod.ever_ready:
        return "Pending"
    return "Failed" if pod.not_ready_for >= failure_timeout else "Suspect"


def plan(obs: Observed) -> Plan:
    """The actions that bring the group closer to its spec, in execution order."""
    by_name = {p.name: p for p in obs.pods.values()}
    trust = heartbeats_tell(list(obs.pods.values()), failure_timeout=obs.failure_timeout)
    states: dict[str, BladeState] = {
        p.name: state_of(p, failure_timeout=obs.failure_timeout, trust_heartbeat=trust) for p in obs.pods.values()
    }
    for i in range(obs.count):
        name = blade_name(obs.group, i)
        if i not in obs.pods:
            states[name] = "Failed" if name in obs.known else "Pending"
    owners = {fs: obs.owners.get(fs) or home_of(obs.group, obs.file_systems, fs, obs.count) for fs in obs.file_systems}
    actions: list[Action] = []
    stranded: list[str] = []
    members = [blade_name(obs.group, i) for i in range(obs.count)]

    def survivor(exclude: str, *, prefer_version: str = "") -> str | None:
        """The blades' rule over the Running members but ``exclude``; with ``prefer_version``,
        among the members on that version first."""
        candidates = [m for m in members if states.get(m) == "Running" and m != exclude]
        owned = collections.Counter(owners.values())
        if prefer_version:
            chosen = cluster_core.choose_survivor((m for m in candidates if by_name[m].version == prefer_version),
                                                  members=members, owned=owned)
            if chosen is not None:
                return chosen
        return cluster_core.choose_survivor(candidates, members=members, owned=owned)

    def move(fs: str, target: str, reason: MoveReason) -> None:
        actions.append(MoveFileSystem(fs=fs, source=owners[fs], target=target, reason=reason))
        owners[fs] = target

    pins = {fs: b for fs, b in obs.pins.items() if fs in owners and _index(b) < obs.count}

    def preferred(fs: str) -> str:
        return pins.get(fs) or home_of(obs.group, obs.file_systems, fs, obs.count)

    # 2. Failover, and 7. hand-over by blades beyond count: survivors chosen in name order (the
    # blades' order), the moves listed in spec order.
    handed: dict[str, MoveFileSystem] = {}
    for fs in sorted(obs.file_systems):
        owner = owners[fs]
        beyond = _index(owner) >= obs.count
        if states.get(owner, "Failed") == "Failed" or (beyond and states.get(owner) is not None):
            if not obs.automatic_failover and not beyond:
                stranded.append(fs)
                continue
            target = survivor(owner)
            if target is not None:
                reason: MoveReason = "ScaleDown" if beyond and states.get(owner) != "Failed" else "Failover"
                handed[fs] = MoveFileSystem(fs=fs, source=owner, target=target, reason=reason)
                owners[fs] = target
            elif states.get(owner, "Failed") == "Failed":
                stranded.append(fs)
    actions.extend(handed[fs] for fs in obs.file_systems if fs in handed)
    stranded.sort(key=list(obs.file_systems).index)

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

    # 4. A planned move.
    outcome: RequestOutcome | None = None
    if obs.request is not None:
        outcome = _planned(obs, obs.request, owners=owners, states=states, pins=pins)
        if outcome.result == "Moving":
            move(obs.request.fs, obs.request.to, "Planned")
        moving = any(isinstance(a, MoveFileSystem) for a in actions)

    # 5. Give-back.
    if obs.automatic_give_back and not moving:
        for fs in obs.file_systems:
            home = preferred(fs)
            if owners[fs] != home and states.get(home) == "Running" and states.get(owners[fs]) == "Running":
                move(fs, home, "GiveBack")
        moving = any(isinstance(a, MoveFileSystem) for a in actions)

    # 6. Rollout, one blade at a time.
    away = any(owners[fs] != preferred(fs) for fs in obs.file_systems)
    if rolling and all_running and not moving and not (away and obs.automatic_give_back):
        victim = obs.pods[old[0]]
        for fs in obs.file_systems:
            if owners[fs] == victim.name:
                peer = survivor(victim.name, prefer_version=obs.version)
                if peer is not None:
                    move(fs, peer, "Rollout")
        actions.append(DeletePod(name=victim.name, reason="Upgrade"))
        states[victim.name] = "Upgrading"

    return Plan(
        actions=tuple(actions),
        states=states,
        owners=owners,
        stranded=tuple(stranded),
        rolling=rolling,
        pins=pins,
        request=outcome,
    )


def _planned(
    obs: Observed, req: MoveRequest, *, owners: Mapping[str, str], states: Mapping[str, BladeState], pins: dict[str, str],
) -> RequestOutcome:
    """Rule 4: refuse a planned move that cannot happen now, else record the pin (``pins`` is updated)."""
    def refuse(message: str) -> RequestOutcome:
        return RequestOutcome(request=req, result="Refused", message=message)

    if req.fs not in owners:
        known = ", ".join(obs.file_systems) or "none"
        return refuse(f"no file system {req.fs!r} in cluster group {obs.group} (it serves: {known})")
    blades = [blade_name(obs.group, i) for i in range(obs.count)]
    if req.to not in blades:
        return refuse(f"no blade {req.to!r} in cluster group {obs.group} (blades: {', '.join(blades)})")
    state = states.get(req.to, "Pending")
    if state != "Running":
        return refuse(f"blade {req.to} is {state}, not Running")
    owner = owners[req.fs]
    if owner != req.to and states.get(owner) != "Running":
        return refuse(f"the owner {owner} of {req.fs} is {states.get(owner, 'Failed')}; failover moves it, not a planned move")
    if req.to == home_of(obs.group, obs.file_systems, req.fs, obs.count):
        pins.pop(req.fs, None)
    else:
        pins[req.fs] = req.to
    if owner == req.to:
        return RequestOutcome(request=req, result="Succeeded", message=f"{req.fs} is served by {req.to}")
    return RequestOutcome(request=req, result="Moving", message=f"{req.fs}: {owner} -> {req.to}")


def _index(blade: str) -> int:
    try:
        return int(blade.rsplit("-", 1)[1])
    except (IndexError, ValueError):
        return 1 << 30


def probe_interval(*, failure_timeout: float, status_interval: float) -> float:
    """Seconds between two reads of the blades' heartbeat ages: a third of ``failure_timeout``
    (at least 1 s, at most ``status_interval``), so a blade whose pod stays Ready but whose
    heartbeat stopped is Failed within about ``failure_timeout`` + one interval."""
    return min(status_interval, max(1.0, failure_timeout / 3))


def heartbeat_bucket(age: float) -> int:
    """A heartbeat age as ``status.blades[].heartbeatAgeSeconds`` shows it: whole seconds, then
    5 s steps from 10 s and minutes from 60 s, so the status changes only when the age does
    meaningfully (a healthy blade stays at 0 and costs no status patch)."""
    s = max(0, int(age))
    step = 1 if s < 10 else 5 if s < 60 else 60
    return s - s % step


def backup_bytes(
    jobs: Sequence[Mapping[str, object]], *, source: str, target: str, offsets: Sequence[int], before: frozenset[str],
) -> int:
    """Bytes a running backup has copied so far, from the controller's copy jobs: the jobs that
    are new since it started (``before``: the job ids seen then) and copy one of its portions
    (``offsets``) from ``source`` (the processor-info LU) to ``target`` (the backup LU)."""
    total = 0
    for j in jobs:
        if (str(j.get("id")) not in before and j.get("source") == source and j.get("target") == target
                and j.get("sourceOffset") in offsets):
            done = j.get("bytesDone")
            total += done if isinstance(done, int) else 0
    return total


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
