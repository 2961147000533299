"""kopf handlers of ClusterGroup: portion claim, then one daemon per group that keeps the
blades, the NFS Services, failover, give-back, planned moves, rollout and backups going.

Reads: the group's body (live in the daemon: its ``move-request`` and ``backup-now``
annotations, what the management terminal asks for), blade pods through the ``blade_pods``
index, the DiskArray through the ``diskarrays`` index (``diskarray/handlers.py``). Decides with
``plan.plan`` (no I/O there). Acts through ``kube`` (pods, Services, status), ``bladeapi``
(take over, release, backup), ``arrayapi`` (controller load, copy-job progress) and ``events``.

The daemon runs a pass on every event of its blade pods, on every change of its DiskArray that
matters to a group, on its own request annotations (``wakeups``, set by the index functions),
and at least every ``NASBLADE_STATUS_INTERVAL``. In between it probes the blades' heartbeats
(every third of ``failureTimeout``) and runs a pass only when a probe saw a change, so a failed
blade is noticed within about ``failureTimeout`` and an idle group costs no pass.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import datetime
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar, cast

import kopf

from nasblade_operator import (
    arrayapi,
    bladeapi,
    conditions,
    endpoints,
    events,
    kube,
    metrics,
    naming,
    settings,
    wakeups,
)
from nasblade_operator.clustergroup import builders
from nasblade_operator.clustergroup import plan as planner
from nasblade_operator.clustergroup import spec as cg_spec
from nasblade_operator.diskarray import formatting
from nasblade_operator.diskarray import spec as da_spec
from nasblade_operator.validation import InvalidSpec

log = logging.getLogger(__name__)
RESOURCE = (naming.GROUP, naming.VERSION, "clustergroups")
ARRAYS = (naming.GROUP, naming.VERSION, "diskarrays")
HISTORY = 10
T = TypeVar("T")
#: Serialises portion claims on one DiskArray within this process (the API's optimistic lock
#: still guards against other writers); saves a conflict and a retry per group.
_claim_locks: dict[tuple[int, str, str], asyncio.Lock] = {}

@kopf.index("pods", labels={naming.L_COMPONENT: "blade", naming.L_GROUP: kopf.PRESENT})
async def blade_pods(namespace: str | None, name: str, body: kopf.Body, labels: kopf.Labels, **_: Any) -> dict[tuple[str, str], dict[str, Any]]:
    """(namespace, group) -> summaries of its blade pods (what ``plan.PodObs`` needs); wakes the group."""
    namespace = namespace or ""
    wakeups.wake_group(namespace, labels[naming.L_GROUP])  # runs once this event is indexed
    st = body.get("status", {})
    ready: dict[str, Any] = next((c for c in st.get("conditions", []) if c.get("type") == "Ready"), {})
    return {
        (namespace, labels[naming.L_GROUP]): {
            "name": name,
            "index": int(labels.get(naming.L_BLADE_INDEX, "-1")),
            "version": labels.get(naming.L_VERSION, ""),
            "ready": ready.get("status") == "True",
            "readyTransition": ready.get("lastTransitionTime"),
            "phase": st.get("phase", "Pending"),
            "deleting": bool(body.metadata.get("deletionTimestamp")),
            "ip": st.get("podIP"),
        }
    }


@kopf.index("services", labels={naming.L_COMPONENT: "nfs", naming.L_GROUP: kopf.PRESENT})
async def nfs_services(namespace: str | None, name: str, body: kopf.Body, labels: kopf.Labels, **_: Any) -> dict[tuple[str, str], dict[str, Any]]:
    """(namespace, Service name) -> which group, file system and blade an NFS Service has; wakes the group."""
    namespace = namespace or ""
    wakeups.wake_group(namespace, labels[naming.L_GROUP])
    return {(namespace, name): _service_summary(body)}


@kopf.index("services", labels={naming.L_COMPONENT: "nfs", naming.L_GROUP: kopf.PRESENT})
async def nfs_services_of_group(namespace: str | None, name: str, body: kopf.Body, labels: kopf.Labels,
                                **_: Any) -> dict[tuple[str, str], dict[str, Any]]:
    """(namespace, group) -> its NFS Services (``nfs_services`` by group: a pass reads its own, not all)."""
    return {(namespace or "", labels[naming.L_GROUP]): {**_service_summary(body), "name": name}}


@kopf.index(*RESOURCE)
async def group_requests(
    namespace: str | None, name: str, annotations: kopf.Annotations, status: kopf.Status, **_: Any,
) -> dict[tuple[str, str], list[str]]:
    """(namespace, group) -> the request annotations it carries; wakes its daemon when it has one,
    so ``nasblade takeover`` and ``nasblade backup`` start at once rather than at the next deadline,
    and when its portion claim (``reconcile``) has landed in the status, so the first blades
    start at once."""
    key = (namespace or "", name)
    asked = sorted(a for a in (naming.A_MOVE_REQUEST, naming.A_BACKUP_NOW) if a in annotations)
    portion = status.get("portion")
    if asked or (portion is not None and _portions_seen.get(key) != portion):
        wakeups.wake_group(*key)
    if portion is not None:
        _portions_seen[key] = portion
    return {key: asked}


#: (namespace, group) -> the portion its status showed at the last event (``group_requests``).
_portions_seen: dict[tuple[str, str], int] = {}


def _one(index: kopf.Index[Any, Any], key: tuple[str, str]) -> dict[str, Any] | None:
    store = index.get(key)
    return next(iter(store), None) if store is not None else None


@kopf.on.resume(*RESOURCE)
@kopf.on.create(*RESOURCE)
@kopf.on.update(*RESOURCE, field="spec")
async def reconcile(
    body: kopf.Body, spec: kopf.Spec, name: str, namespace: str | None, status: kopf.Status, patch: kopf.Patch,
    **kwargs: Any,
) -> None:
    """Validate the spec, check the DiskArray, claim a portion; the daemon does the rest."""
    namespace = namespace or ""
    diskarrays: kopf.Index[Any, Any] = kwargs["diskarrays"]
    metrics.RECONCILES.labels("ClusterGroup").inc()
    generation = int(body.metadata.get("generation", 0))
    try:
        parsed = cg_spec.parse(spec, name=name)
    except InvalidSpec as exc:
        _refuse(body, status, patch, generation=generation, reason="InvalidSpec", message=str(exc))
        events.warning(body, "InvalidSpec", f"fix the spec: {exc}")
        raise kopf.PermanentError(f"invalid spec: {exc}") from None
    array = _one(diskarrays, (namespace, parsed.disk_array))
    if array is None or array["deleting"]:
        message = f"DiskArray {parsed.disk_array!r} does not exist in namespace {namespace}; create it or fix spec.diskArrayRef.name"
        _refuse(body, status, patch, generation=generation, reason="DiskArrayMissing", message=message)
        retry = int(kwargs.get("retry", 0))
        if retry % 10 == 0:  # not an Event on every retry
            events.warning(body, "DiskArrayMissing", message)
        raise kopf.TemporaryError(message, delay=min(60.0, settings.current().retry_delay * 2 ** min(retry, 2)))
    portion = status.get("portion")
    if portion is None:
        lock_key = (id(asyncio.get_running_loop()), namespace, parsed.disk_array)
        async with _claim_locks.setdefault(lock_key, asyncio.Lock()):
            portion = await _claim_portion(body, name=name, namespace=namespace, array=parsed.disk_array)
        patch.status["portion"] = portion
    patch.status["activeArea"] = status.get("activeArea", "portion")
    wakeups.wake_group(namespace, name)


def _refuse(body: kopf.Body, status: Mapping[str, Any], patch: kopf.Patch, *, generation: int, reason: str, message: str) -> None:
    metrics.RECONCILE_ERRORS.labels("ClusterGroup", reason).inc()
    patch.status["conditions"] = conditions.set_condition(
        status.get("conditions", []), type=conditions.READY, status="False", reason=reason, message=message,
        generation=generation,
    )
    patch.status["observedGeneration"] = generation


async def _claim_portion(body: kopf.Body, *, name: str, namespace: str, array: str) -> int:
    """Record (group -> lowest free portion index) in the DiskArray status, optimistically locked."""
    k = kube.client()
    da = await k.get("DiskArray", array, namespace=namespace)
    if da is None:
        raise kopf.TemporaryError(f"DiskArray {array} vanished", delay=settings.current().retry_delay)
    portions = list(da.get("status", {}).get("portions", []))
    for p in portions:
        if p.get("group") == name:
            return int(p["index"])
    limit = int(da.get("spec", {}).get("areas", {}).get("portions", 8))
    used = {int(p["index"]) for p in portions}
    free = [i for i in range(limit) if i not in used]
    if not free:
        message = f"all {limit} portions of DiskArray {array} are taken; raise spec.areas.portions on a new array or delete a group"
        events.warning(body, "NoFreePortion", message)
        raise kopf.TemporaryError(message, delay=30)
    portions.append({"index": free[0], "group": name, "activeArea": "portion"})  # a new portion is in use (diskarray/areas.py)
    try:
        await k.patch(
            "DiskArray", array, {"metadata": {"resourceVersion": da["metadata"]["resourceVersion"]},
                                 "status": {"portions": portions}},
            namespace=namespace, subresource="status",
        )
    except kube.KubeError as exc:
        if exc.status == 409:
            raise kopf.TemporaryError("portion claim raced with another group; retrying", delay=0.2) from None
        raise
    return free[0]


async def _release_portion(*, name: str, namespace: str, array: str) -> None:
    k = kube.client()
    for _attempt in range(5):
        da = await k.get("DiskArray", array, namespace=namespace)
        if da is None or da["metadata"].get("deletionTimestamp"):
            return
        portions = [p for p in da.get("status", {}).get("portions", []) if p.get("group") != name]
        try:
            await k.patch(
                "DiskArray", array, {"metadata": {"resourceVersion": da["metadata"]["resourceVersion"]},
                                     "status": {"portions": portions}},
                namespace=namespace, subresource="status",
            )
            return
        except kube.KubeError as exc:
            if exc.status != 409:
                raise
    raise kopf.TemporaryError("could not release the portion (conflicts)", delay=1)


@kopf.on.delete(*RESOURCE)
async def delete(body: kopf.Body, spec: kopf.Spec, name: str, namespace: str | None, **kwargs: Any) -> None:
    """Refuse while the group serves file systems of a live DiskArray; else remove its objects."""
    namespace = namespace or ""
    diskarrays: kopf.Index[Any, Any] = kwargs["diskarrays"]
    array_name = str(spec.get("diskArrayRef", {}).get("name", ""))
    array = _one(diskarrays, (namespace, array_name))
    if array is not None and not array["deleting"]:
        serving = [f.get("name") for f in array["spec"].get("fileSystems", []) if f.get("clusterGroup") == name]
        if serving:
            message = (f"still serves file systems {', '.join(serving)} of DiskArray {array_name}: move them to another "
                       "ClusterGroup (spec.fileSystems[].clusterGroup) or delete the DiskArray")
            events.warning(body, "DeletionBlocked", message)
            raise kopf.TemporaryError(message, delay=settings.current().retry_delay)
    k = kube.client()
    events.normal(body, "Deleting", "removing the blades and NFS Services")
    for kind, selector in (("Pod", builders.group_selector(name)), ("Service", {naming.L_GROUP: name, naming.L_COMPONENT: "nfs"})):
        for obj in await k.list(kind, namespace=namespace, selector=selector):
            await k.delete(kind, obj["metadata"]["name"], namespace=namespace)
    await _release_portion(name=name, namespace=namespace, array=array_name)


# ---------------------------------------------------------------------------- the daemon


@dataclasses.dataclass
class Runtime:
    """What one group's daemon remembers between passes (nothing here is the source of truth)."""

    first_bad: dict[str, float] = dataclasses.field(default_factory=dict)  # blade -> monotonic time
    seen_ready: set[str] = dataclasses.field(default_factory=set)
    next_backup_check: float = 0.0
    replacing: set[str] = dataclasses.field(default_factory=set)  # blades whose failed pod was deleted
    failed: set[str] = dataclasses.field(default_factory=set)  # blades that declared themselves failed
    serving: dict[str, frozenset[str]] = dataclasses.field(default_factory=dict)  # blade -> what it said it serves
    status: dict[str, Any] | None = None  # the status this daemon last wrote (the body may lag behind)
    heartbeats: dict[str, tuple[float, float]] = dataclasses.field(default_factory=dict)  # blade -> (age, when)
    active_area: str = "portion"
    next_probe: float = 0.0
    deferred: bool = False
    rolling: bool = False
    specs: dict[str, tuple[int, Any]] = dataclasses.field(default_factory=dict)  # key -> (generation, parsed)

    def parsed(self, key: str, generation: int, parse: Callable[[], T]) -> T:
        """``parse()``'s result, computed once per ``generation`` of the object named ``key``
        (0, an unknown generation, is never cached)."""
        hit = self.specs.get(key)
        if hit is not None and generation and hit[0] == generation:
            return cast(T, hit[1])
        value = parse()
        self.specs[key] = (generation, value)
        return value


# Asked to stop, a daemon finishes its pass (up to 30 s: a pass under a slow API server may take
# seconds) before kopf cancels it; without a backoff kopf would cancel at once, mid-pass.
@kopf.daemon(*RESOURCE, cancellation_backoff=30.0, cancellation_timeout=5.0)
async def run_group(
    body: kopf.Body, name: str, namespace: str | None, stopped: kopf.DaemonStopped, logger: kopf.Logger,
    **kwargs: Any,
) -> None:
    """Observe -> plan -> act, on every relevant event and whenever a deadline comes up."""
    namespace = namespace or ""
    blade_pods: kopf.Index[Any, Any] = kwargs["blade_pods"]
    diskarrays: kopf.Index[Any, Any] = kwargs["diskarrays"]
    wake = wakeups.register(namespace, name, array=str(body.get("spec", {}).get("diskArrayRef", {}).get("name", "")))
    rt = Runtime(seen_ready={b["name"] for b in body.get("status", {}).get("blades", []) if b.get("state") == "Running"})
    next_pass = 0.0  # monotonic time of the next pass nothing wakes us for
    try:
        while not stopped:
            woken = wake.is_set()
            wake.clear()
            deleting = bool(body.metadata.get("deletionTimestamp"))
            if deleting:
                next_pass = time.monotonic() + 1.0
            else:
                try:
                    # Between passes a heartbeat probe alone; a pass follows only if it saw a change.
                    if woken or time.monotonic() >= next_pass or await _probe_changed(body, name=name, namespace=namespace,
                                                                                      rt=rt, pods=blade_pods):
                        next_pass = time.monotonic() + await _pass(
                            body, name=name, namespace=namespace, rt=rt, pods=blade_pods, arrays=diskarrays,
                            services=kwargs["nfs_services"], group_services=kwargs["nfs_services_of_group"])
                except (kube.KubeError, bladeapi.BladeUnavailable, arrayapi.ArrayUnavailable, OSError) as exc:
                    metrics.RECONCILE_ERRORS.labels("ClusterGroup", type(exc).__name__).inc()
                    logger.warning("group pass failed, will retry: %s", exc)
                    next_pass = time.monotonic() + 1.0
            deadline = next_pass if deleting else min(next_pass, rt.next_probe)
            await _sleep(wake, stopped, timeout=max(0.1, deadline - time.monotonic()))
    finally:
        wakeups.unregister(namespace, name)


async def _sleep(wake: asyncio.Event, stopped: kopf.DaemonStopped, *, timeout: float) -> None:
    """Until ``wake`` is set, the daemon is asked to stop, or ``timeout`` passes."""
    waits = [asyncio.ensure_future(wake.wait()), asyncio.ensure_future(stopped.wait())]
    try:
        await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()


def _pod_obs(summary: Mapping[str, Any], *, now: datetime.datetime, rt: Runtime) -> planner.PodObs:
    seen_ready = rt.seen_ready
    ready = bool(summary["ready"])
    if ready:
        seen_ready.add(summary["name"])
    since = conditions.parse_time(summary.get("readyTransition"))
    return planner.PodObs(
        name=summary["name"],
        index=int(summary["index"]),
        version=str(summary["version"]),
        ready=ready,
        ever_ready=ready or summary["name"] in seen_ready,
        # a blade that declared itself failed (bladeapi.BladeStatus.failed) is failed at once
        terminated=summary["phase"] in ("Failed", "Succeeded") or summary["name"] in rt.failed,
        deleting=bool(summary["deleting"]),
        not_ready_for=0.0 if ready or since is None else (now - since).total_seconds(),
        heartbeat_age=_heartbeat_age(rt, summary["name"]),
    )


def _heartbeat_age(rt: Runtime, blade: str) -> float | None:
    """The heartbeat age the blade reported at the last probe (not extrapolated: the blade
    keeps writing heartbeats between probes; we only know what it said then)."""
    hb = rt.heartbeats.get(blade)
    return None if hb is None else hb[0]


async def _probe_changed(
    body: kopf.Body, *, name: str, namespace: str, rt: Runtime, pods: kopf.Index[Any, Any],
) -> bool:
    """A heartbeat probe between passes; True when it saw something a pass must act on (a
    blade failed or stopped heartbeating, what a blade serves or the active area changed, a
    heartbeat age moved to another bucket). An idle group costs the probe requests and no pass."""
    try:
        spec = _group_spec(body, name, rt)
    except InvalidSpec:
        rt.next_probe = time.monotonic() + settings.current().status_interval
        return False
    summaries = {int(s["index"]): s for s in pods.get((namespace, name), [])}
    before = _probe_view(rt, failure_timeout=spec.heartbeat.failure_timeout)
    await _probe(namespace, array=spec.disk_array, summaries=summaries, rt=rt,
                 failure_timeout=spec.heartbeat.failure_timeout)
    return _probe_view(rt, failure_timeout=spec.heartbeat.failure_timeout) != before


def _probe_view(rt: Runtime, *, failure_timeout: float) -> tuple[Any, ...]:
    """What of a probe's findings the plan and the status depend on."""
    beats = {b: (planner.heartbeat_bucket(age), age >= failure_timeout) for b, (age, _) in rt.heartbeats.items()}
    return frozenset(rt.failed), dict(rt.serving), rt.active_area, beats


def _group_spec(body: kopf.Body, name: str, rt: Runtime) -> cg_spec.ClusterGroupSpec:
    """The group's parsed spec (raises InvalidSpec), parsed once per generation."""
    return rt.parsed("group", int(body.metadata.get("generation") or 0),
                     lambda: cg_spec.parse(body.get("spec", {}), name=name))


def _array_spec(array: Mapping[str, Any], rt: Runtime) -> da_spec.DiskArraySpec:
    """The DiskArray's parsed spec from its ``diskarrays`` index entry (raises InvalidSpec), once per generation."""
    return rt.parsed(f"array/{array['uid']}", int(array.get("generation") or 0), lambda: da_spec.parse(array["spec"]))


async def _probe(
    namespace: str, *, array: str, summaries: Mapping[int, Mapping[str, Any]], rt: Runtime, failure_timeout: float,
) -> None:
    """Read each Ready blade's heartbeat age and active area (every ``plan.probe_interval``:
    a third of the group's ``failureTimeout``, between 1 s and NASBLADE_STATUS_INTERVAL).

    The fast failure signal is the pod's readiness; this catches a blade whose pod looks
    fine but whose file processor stopped writing heartbeats into the portion.
    """
    if time.monotonic() < rt.next_probe:
        return
    rt.next_probe = time.monotonic() + planner.probe_interval(failure_timeout=failure_timeout,
                                                              status_interval=settings.current().status_interval)
    token = await _array_token(namespace, array)
    # not-Ready pods too, for one thing: a blade that declared itself failed (its readiness
    # says 503 then) is failed now, not failureTimeout after its pod went not-Ready
    targets = [(s["name"], bool(s["ready"]), endpoints.blade_api(namespace, s["name"], s.get("ip")))
               for s in summaries.values() if s["ready"] or (s["phase"] == "Running" and s.get("ip"))]
    targets = [t for t in targets if t[2]]
    results = await asyncio.gather(*(bladeapi.status(str(base), token=token) for _, _, base in targets),
                                   return_exceptions=True)
    for (blade, ready, _), result in zip(targets, results, strict=True):
        if isinstance(result, bladeapi.BladeStatus):
            if result.failed:
                if blade not in rt.failed:
                    log.warning("blade %s declared itself failed: %s", blade, result.failed)
                rt.failed.add(blade)
            if not ready:
                continue
            if result.heartbeat_age is not None:
                rt.heartbeats[blade] = (result.heartbeat_age, time.monotonic())
            if result.file_systems is not None:
                rt.serving[blade] = result.file_systems
            else:
                rt.serving.pop(blade, None)
            rt.active_area = result.active_area
        elif ready:
            rt.heartbeats.pop(blade, None)  # unknown: the pod's readiness decides
            rt.serving.pop(blade, None)


async def _move_request(
    body: kopf.Body, *, name: str, namespace: str, status: Mapping[str, Any], rt: Runtime,
) -> planner.MoveRequest | None:
    """The planned move the ``move-request`` annotation asks for, if it is new and well-formed.

    A malformed one is refused here (Event + ``status.lastMoveRequest``); one already answered
    (the operator stopped between recording the answer and removing the annotation) is removed.
    """
    text = (body.metadata.get("annotations") or {}).get(naming.A_MOVE_REQUEST)
    if text is None:
        return None
    parsed = planner.parse_move_request(str(text))
    last = status.get("lastMoveRequest") or {}
    if isinstance(parsed, planner.MoveRequest):
        if last.get("id") != parsed.id or last.get("result") not in ("Succeeded", "Refused"):
            return parsed
    else:
        refused = planner.RequestOutcome(request=planner.MoveRequest(id="", fs="", to=""), result="Refused", message=parsed)
        record = _request_record(body, refused)
        await kube.client().patch("ClusterGroup", name, {"status": {"lastMoveRequest": record}},
                                  namespace=namespace, subresource="status")
        rt.status = {**(rt.status or {}), "lastMoveRequest": record}
    await _clear_move_request(name=name, namespace=namespace)
    return None


def _request_record(body: kopf.Body, outcome: planner.RequestOutcome) -> dict[str, Any]:
    """``status.lastMoveRequest`` for an answered request (a refusal also gets a Warning Event)."""
    req = outcome.request
    if outcome.result == "Refused":
        events.warning(body, "MoveRefused", f"planned move of {req.fs or '?'} to {req.to or '?'} refused: {outcome.message}")
    return {"id": req.id, "fileSystem": req.fs, "to": req.to, "result": outcome.result, "message": outcome.message[:500],
            "time": conditions.now_rfc3339()}


async def _clear_move_request(*, name: str, namespace: str) -> None:
    await kube.client().patch("ClusterGroup", name, {"metadata": {"annotations": {naming.A_MOVE_REQUEST: None}}},
                              namespace=namespace)


def _status(body: kopf.Body, rt: Runtime) -> dict[str, Any]:
    """The group's status as this daemon last wrote it, over what the (possibly stale) body says."""
    return {**body.get("status", {}), **(rt.status or {})}


async def _pass(
    body: kopf.Body, *, name: str, namespace: str, rt: Runtime, pods: kopf.Index[Any, Any], arrays: kopf.Index[Any, Any],
    services: kopf.Index[Any, Any], group_services: kopf.Index[Any, Any],
) -> float:
    """One observe -> plan -> act round; returns the seconds until the next deadline.

    Between deadlines the daemon sleeps until a pod or DiskArray event wakes it, so an idle
    group costs nothing.
    """
    status = _status(body, rt)
    if status.get("portion") is None:
        return 1.0  # reconcile() has not claimed the portion yet
    try:
        spec = _group_spec(body, name, rt)
    except InvalidSpec:
        return settings.current().status_interval  # reconcile() reported it
    array = _one(arrays, (namespace, spec.disk_array))
    if array is None or array["deleting"]:
        return 1.0
    try:
        da = _array_spec(array, rt)
    except InvalidSpec:
        return settings.current().status_interval  # the DiskArray's own handler reported it
    file_systems = da.file_systems_of(name)
    fs_names = [f.name for f in file_systems]
    # Blades are handed a file system only once the DiskArray records it as formatted.
    unformatted = {f.name for f in file_systems} - formatting.formatted_names(array["status"])
    now = datetime.datetime.now(datetime.UTC)
    summaries = {int(s["index"]): s for s in pods.get((namespace, name), [])}
    await _probe(namespace, array=spec.disk_array, summaries=summaries, rt=rt,
                 failure_timeout=spec.heartbeat.failure_timeout)
    request = await _move_request(body, name=name, namespace=namespace, status=status, rt=rt)
    observed = planner.Observed(
        group=name,
        count=spec.blades.count,
        version=da.software_version,
        file_systems=fs_names,
        pods={i: _pod_obs(s, now=now, rt=rt) for i, s in summaries.items()},
        owners={f["name"]: f["blade"] for f in status.get("fileSystems", []) if f.get("blade") and f["name"] in fs_names},
        failure_timeout=spec.heartbeat.failure_timeout,
        automatic_failover=spec.failover.policy == "Automatic",
        automatic_give_back=spec.failover.give_back == "Automatic",
        known=frozenset(rt.seen_ready),
        pins={f["name"]: f["pinnedTo"] for f in status.get("fileSystems", []) if f.get("pinnedTo")},
        request=request,
    )
    p = planner.plan(observed)
    for blade, state in p.states.items():
        if state != "Running":
            rt.first_bad.setdefault(blade, time.monotonic())
        else:
            rt.first_bad.pop(blade, None)
    owners = dict(observed.owners)
    for fs in fs_names:
        owners.setdefault(fs, planner.home_of(name, fs_names, fs, spec.blades.count))
    failovers: list[dict[str, Any]] = []
    down_for = {pod.name: pod.not_ready_for for pod in observed.pods.values()}
    act = _Actor(body, name=name, namespace=namespace, spec=spec, da=da, summaries=summaries, rt=rt, down_for=down_for)
    outcome = p.request
    pins = dict(observed.pins) if outcome is not None and outcome.result == "Moving" else dict(p.pins)
    try:
        for action in p.actions:
            if unformatted and (isinstance(action, planner.CreatePod)
                                or (isinstance(action, planner.MoveFileSystem) and action.fs in unformatted)):
                continue  # diskarray/formatting.py: not before mkfs has run and been recorded
            try:
                record = await act.do(action, file_systems=file_systems)
            except bladeapi.BladeUnavailable as exc:
                if not (isinstance(action, planner.MoveFileSystem) and action.reason == "Planned" and outcome):
                    raise
                outcome = dataclasses.replace(outcome, result="Refused", message=f"the move failed: {exc}")
                continue
            if isinstance(action, planner.MoveFileSystem):
                owners[action.fs] = action.target
                rt.serving.pop(action.target, None)  # unknown until the next probe: not a reason to flap
                if record:
                    failovers.append(record)
                if action.reason == "Planned" and outcome is not None:  # the move asked for is done
                    outcome = dataclasses.replace(outcome, result="Succeeded")
                    pins = dict(p.pins)
    finally:
        act.post_created()
        await _sync_services(body, name=name, namespace=namespace, array=spec.disk_array, owners=owners,
                             services=services, group_services=group_services)
        backups = await _backups(body, name=name, namespace=namespace, spec=spec, array=array, states=p.states,
                                 summaries=summaries, rt=rt)
        array_ready = conditions.is_true(array["status"].get("conditions", []), conditions.READY)
        await _write_status(body, name=name, namespace=namespace, spec=spec, plan=p, owners=owners, array_ready=array_ready,
                            fs_names=fs_names, summaries=summaries, failovers=failovers, backups=backups,
                            version=da.software_version, rt=rt, pins=pins,
                            move_request=_request_record(body, outcome) if outcome and outcome.result != "Moving" else None)
        if outcome is not None and outcome.result != "Moving":
            await _clear_move_request(name=name, namespace=namespace)
    return _next_deadline(spec, observed, plan=p, status=_status(body, rt), rt=rt)


def _next_deadline(
    spec: cg_spec.ClusterGroupSpec, observed: planner.Observed, *, plan: planner.Plan, status: Mapping[str, Any], rt: Runtime
) -> float:
    """Seconds until something needs a pass without an event: a suspect blade reaching
    ``failureTimeout``, the next backup, or a follow-up after acting (the heartbeat probes in
    between are the daemon loop's, ``_probe_changed``)."""
    waits = [settings.current().status_interval]
    if plan.actions or plan.rolling:
        waits.append(0.5)
    for pod in observed.pods.values():
        if pod.ever_ready and not pod.ready and not pod.deleting:
            waits.append(spec.heartbeat.failure_timeout - pod.not_ready_for + 0.05)
    backups = status.get("backups", {})
    last = conditions.parse_time(backups.get("lastAttempt"))
    if last is not None:
        age = (datetime.datetime.now(datetime.UTC) - last).total_seconds()
        waits.append(spec.backup.interval - age)
    if rt.next_backup_check:
        waits.append(rt.next_backup_check - time.monotonic())
    return max(0.1, min(waits))


class _Actor:
    """Carries out ``plan`` actions; each is one or two API calls and an Event."""

    def __init__(
        self, body: kopf.Body, *, name: str, namespace: str, spec: cg_spec.ClusterGroupSpec, da: da_spec.DiskArraySpec,
        summaries: Mapping[int, Mapping[str, Any]], rt: Runtime, down_for: Mapping[str, float],
    ) -> None:
        self.body, self.name, self.namespace, self.spec, self.da = body, name, namespace, spec, da
        self.down_for = down_for  # blade -> seconds since its pod's Ready condition went False
        self.by_name = {s["name"]: s for s in summaries.values()}
        self.rt = rt
        self.created: dict[str, list[str]] = {}  # Event reason -> blade pods created in this pass

    async def do(self, action: planner.Action, *, file_systems: tuple[da_spec.FileSystem, ...]) -> dict[str, Any] | None:
        if isinstance(action, planner.CreatePod):
            await self._create_pod(action.index, file_systems=file_systems)
            return None
        if isinstance(action, planner.DeletePod):
            await self._delete_pod(action)
            return None
        return await self._move(action)

    async def _create_pod(self, index: int, *, file_systems: tuple[da_spec.FileSystem, ...]) -> None:
        pod = builders.blade_pod(
            group=self.name, namespace=self.namespace, index=index, spec=self.spec,
            portion=int(self.body["status"]["portion"]), portion_size=self.da.areas.portion_size,
            version=self.da.software_version, image=settings.current().image, file_systems=file_systems,
        )
        kopf.adopt(pod, owner=self.body)
        _, created = await kube.client().create(pod)
        if created:
            replaced = pod["metadata"]["name"] in self.rt.replacing
            self.rt.replacing.discard(pod["metadata"]["name"])
            self.created.setdefault("BladeReplaced" if replaced else "BladeCreated", []).append(pod["metadata"]["name"])

    def post_created(self) -> None:
        """One Event per kind for the blade pods this pass created (a new group makes all at once)."""
        for reason, pods in self.created.items():
            names = ", ".join(pods)
            events.normal(self.body, reason, f"blade pod{'s' if len(pods) > 1 else ''} {names} (software {self.da.software_version})")
        self.created.clear()

    async def _delete_pod(self, action: planner.DeletePod) -> None:
        await kube.client().delete("Pod", action.name, namespace=self.namespace)
        self.rt.heartbeats.pop(action.name, None)
        self.rt.failed.discard(action.name)  # its replacement has the same name
        self.rt.seen_ready.discard(action.name)
        if action.reason == "Failed":
            self.rt.replacing.add(action.name)
            events.warning(self.body, "BladeFailed", f"blade {action.name} failed; replacing its pod")
        elif action.reason == "Upgrade":
            events.normal(self.body, "Upgrading", f"blade {action.name} restarts on software {self.da.software_version}")
        else:
            events.normal(self.body, "ScaledDown", f"removed blade {action.name}")

    async def _move(self, m: planner.MoveFileSystem) -> dict[str, Any]:
        t0 = time.monotonic()
        if m.reason == "Failover":  # measured from the failure: the pod's Ready transition, or when we saw it go
            t0 = min(self.rt.first_bad.get(m.source, t0), t0 - self.down_for.get(m.source, 0.0))
        token = await _array_token(self.namespace, self.spec.disk_array)
        source = self._endpoint(m.source) if m.reason != "Failover" else None
        if source is not None:
            await bladeapi.release(source, m.fs, token=token)
        try:
            target = self._endpoint(m.target)
            if target is None:
                raise bladeapi.BladeUnavailable(f"blade {m.target} has no address yet")
            await bladeapi.takeover(target, m.fs, token=token)
        except bladeapi.BladeUnavailable:
            if source is not None:  # a hand-over that failed half-way: the owner serves it again
                await bladeapi.takeover(source, m.fs, token=token)
            raise
        await kube.client().patch(
            "Service", naming.nfs_service_name(self.spec.disk_array, m.fs),
            {"spec": {"selector": builders.nfs_selector(group=self.name, blade=m.target)}}, namespace=self.namespace,
        )
        seconds = time.monotonic() - t0
        metrics.FAILOVERS.labels(m.reason).inc()
        if m.reason == "Failover":
            metrics.FAILOVER_SECONDS.observe(seconds)
        reason = {"Failover": "FailedOver", "GiveBack": "GaveBack", "Planned": "Moved"}.get(m.reason, "HandedOver")
        events.normal(self.body, reason, f"file system {m.fs}: {m.source} -> {m.target} ({m.reason}, {seconds:.2f}s)")
        return {"fileSystem": m.fs, "from": m.source, "to": m.target, "reason": m.reason,
                "time": conditions.now_rfc3339(), "durationSeconds": round(seconds, 3)}

    def _endpoint(self, blade: str) -> str | None:
        s = self.by_name.get(blade)
        return endpoints.blade_api(self.namespace, blade, s.get("ip") if s else None)


async def _array_token(namespace: str, array: str) -> str:
    token = arrayapi.cached_token(namespace, array)
    if token is None:
        secret = await kube.client().get("Secret", naming.token_secret_name(array), namespace=namespace)
        if secret is None:
            raise arrayapi.ArrayUnavailable(f"the token Secret of DiskArray {array} does not exist yet")
        token = base64.b64decode(secret["data"]["token"]).decode()
        arrayapi.remember_token(namespace, array, token)
    return token


async def _sync_services(
    body: kopf.Body, *, name: str, namespace: str, array: str, owners: Mapping[str, str], services: kopf.Index[Any, Any],
    group_services: kopf.Index[Any, Any],
) -> None:
    """One NFS Service per file system, selecting its owner; none for this group's file systems gone.

    ``services`` (the ``nfs_services`` index) is what exists, ``group_services``
    (``nfs_services_of_group``) the same by group. A Service another group left behind (its
    file system moved here) is taken over: relabelled, re-owned, re-selected.
    """
    k = kube.client()
    for fs, blade in owners.items():
        svc_name = naming.nfs_service_name(array, fs)
        have = _one(services, (namespace, svc_name))
        if have is None:
            svc = builders.nfs_service(array=array, group=name, fs=fs, blade=blade)
            kopf.adopt(svc, owner=body)
            existing, created = await k.create(svc)
            if created:
                continue
            have = _service_summary(existing)
        if have["group"] != name or have["blade"] != blade or have["owner"] != body.metadata.get("uid"):
            svc = builders.nfs_service(array=array, group=name, fs=fs, blade=blade)
            kopf.adopt(svc, owner=body)
            await k.patch("Service", svc_name, {"metadata": {"labels": svc["metadata"]["labels"],
                                                             "ownerReferences": svc["metadata"]["ownerReferences"]},
                                                "spec": {"selector": svc["spec"]["selector"]}}, namespace=namespace)
    for have in list(group_services.get((namespace, name), [])):
        if have["array"] == array and have["fs"] not in owners:
            await k.delete("Service", have["name"], namespace=namespace)


def _service_summary(svc: Mapping[str, Any]) -> dict[str, Any]:
    labels = svc.get("metadata", {}).get("labels", {}) or {}
    owners = svc.get("metadata", {}).get("ownerReferences", []) or []
    return {
        "group": labels.get(naming.L_GROUP, ""),
        "array": labels.get(naming.L_ARRAY, ""),
        "fs": labels.get(naming.L_FILESYSTEM, ""),
        "blade": (svc.get("spec", {}).get("selector") or {}).get(naming.L_BLADE, ""),
        "owner": owners[0].get("uid") if owners else None,
    }


async def _backups(
    body: kopf.Body, *, name: str, namespace: str, spec: cg_spec.ClusterGroupSpec, array: Mapping[str, Any],
    states: Mapping[str, planner.BladeState], summaries: Mapping[int, Mapping[str, Any]], rt: Runtime,
) -> dict[str, Any] | None:
    """Run a backup through a Running blade if one is asked for or due; return the new status.backups."""
    annotations = body.metadata.get("annotations", {}) or {}
    on_demand = naming.A_BACKUP_NOW in annotations
    backups = dict(_status(body, rt).get("backups", {}))
    now = datetime.datetime.now(datetime.UTC)
    last_ok = conditions.parse_time(backups.get("lastSuccessful"))
    last_try = conditions.parse_time(backups.get("lastAttempt")) or conditions.parse_time(body.metadata.get("creationTimestamp"))
    trigger = "OnDemand" if on_demand else ""
    if not on_demand:
        if time.monotonic() < rt.next_backup_check or last_try is None:
            return None
        if (now - last_try).total_seconds() < spec.backup.interval:
            return None
        trigger = "Interval"
    blade = next((s for _, s in sorted(summaries.items()) if states.get(s["name"]) == "Running"), None)
    if blade is None:
        rt.next_backup_check = time.monotonic() + 5
        return None
    token = await _array_token(namespace, spec.disk_array)
    if trigger == "Interval":
        load = await _load_percent(namespace, spec.disk_array, token)
        age = (now - last_ok).total_seconds() if last_ok else float("inf")
        decision = planner.backup_decision(load=load, threshold=spec.backup.load_threshold, age=age,
                                           max_age=spec.backup.max_age)
        if decision != "Defer":
            trigger = decision
        else:
            rt.next_backup_check = time.monotonic() + 10
            if not rt.deferred:
                rt.deferred = True
                events.normal(body, "BackupDeferred",
                              f"controller load {load}% >= loadThreshold {spec.backup.load_threshold}%; retrying")
                metrics.BACKUPS.labels(trigger, "Deferred").inc()
            return None
    rt.deferred = False
    portion_of = {p["group"]: int(p["index"]) for p in array["status"].get("portions", [])}
    portions = [int(body["status"]["portion"])] + [portion_of[t] for t in spec.backup.targets if t in portion_of]
    base = endpoints.blade_api(namespace, blade["name"], blade.get("ip"))
    t0 = time.monotonic()
    try:
        if base is None:
            raise bladeapi.BladeUnavailable(f"blade {blade['name']} has no address yet")
        running = {"trigger": trigger, "blade": blade["name"], "portions": portions, "started": conditions.now_rfc3339(now)}
        result = await _backup_following(body, name=name, namespace=namespace, array=spec.disk_array,
                                         areas=array["status"].get("areas", {}) or {}, base=base, token=token,
                                         running=running, backups=backups, rt=rt)
        ok, message = result.succeeded, result.message
    except bladeapi.BladeUnavailable as exc:
        ok, message = False, str(exc)
    seconds = round(time.monotonic() - t0, 3)
    entry = {"trigger": trigger, "blade": blade["name"], "portions": portions,
             "result": "Succeeded" if ok else "Failed", "message": message[:500],
             "started": conditions.now_rfc3339(now), "durationSeconds": seconds}
    backups["history"] = [*backups.get("history", []), entry][-HISTORY:]
    backups["inProgress"] = None
    backups["lastAttempt"] = conditions.now_rfc3339(now)
    if ok:
        backups["lastSuccessful"] = conditions.now_rfc3339(now)
    metrics.BACKUPS.labels(trigger, entry["result"]).inc()
    metrics.BACKUP_SECONDS.observe(seconds)
    text = f"{trigger} backup of portions {portions} through {blade['name']}: {entry['result']}" + (f" ({message})" if message else "")
    (events.normal if ok else events.warning)(body, "BackupSucceeded" if ok else "BackupFailed", text)
    if on_demand:
        await kube.client().patch("ClusterGroup", name, {"metadata": {"annotations": {naming.A_BACKUP_NOW: None}}},
                                  namespace=namespace)
    return backups


async def _backup_following(
    body: kopf.Body, *, name: str, namespace: str, array: str, areas: Mapping[str, Any], base: str, token: str,
    running: dict[str, Any], backups: Mapping[str, Any], rt: Runtime,
) -> bladeapi.BackupResult:
    """Run the blade's backup call and, while it runs, publish its progress as
    ``status.backups.inProgress`` (bytesCopied / totalBytes from the controller's copy jobs),
    at most one status patch a second and only when the figure moved."""
    api = arrayapi.ArrayAPI(endpoints.controller_api(namespace, array), token)
    size = int(areas.get("portionSize") or 0)
    source = str(areas.get("processorInfo") or naming.LU_PROCESSOR_INFO)
    target = str(areas.get("backup") or naming.LU_BACKUP)
    offsets = [int(i) * size for i in running["portions"]]
    try:
        before: frozenset[str] | None = frozenset(str(j.get("id")) for j in await api.copy_jobs())
    except (arrayapi.ArrayUnavailable, arrayapi.ArrayRefused):
        before = None  # no byte counts this time; the result still comes from the blade
    progress = {**running, "bytesCopied": 0, "totalBytes": size * len(offsets)}

    async def publish() -> None:
        await kube.client().patch("ClusterGroup", name, {"status": {"backups": {"inProgress": progress}}},
                                  namespace=namespace, subresource="status")
        rt.status = {**(rt.status or {}), "backups": {**backups, "inProgress": dict(progress)}}

    await publish()
    call = asyncio.ensure_future(bladeapi.backup(base, token=token, portions=list(running["portions"]),
                                                 trigger=str(running["trigger"])))
    try:
        while not call.done():
            await asyncio.wait({call}, timeout=1.0)
            if call.done() or before is None:
                continue
            try:
                jobs = await api.copy_jobs()
            except (arrayapi.ArrayUnavailable, arrayapi.ArrayRefused):
                continue
            copied = min(progress["totalBytes"], planner.backup_bytes(jobs, source=source, target=target,
                                                                    offsets=offsets, before=before))
            if copied != progress["bytesCopied"]:
                progress["bytesCopied"] = copied
                await publish()
    finally:
        if not call.done():
            call.cancel()
    return call.result()


async def _load_percent(namespace: str, array: str, token: str) -> int | None:
    try:
        figures = await arrayapi.ArrayAPI(endpoints.controller_api(namespace, array), token).figures()
    except (arrayapi.ArrayUnavailable, arrayapi.ArrayRefused):
        return None
    return arrayapi.load_percent(figures)


async def _write_status(
    body: kopf.Body, *, name: str, namespace: str, spec: cg_spec.ClusterGroupSpec, plan: planner.Plan,
    owners: Mapping[str, str], fs_names: list[str], summaries: Mapping[int, Mapping[str, Any]],
    failovers: list[dict[str, Any]], backups: dict[str, Any] | None, version: str, rt: Runtime, array_ready: bool,
    pins: Mapping[str, str], move_request: dict[str, Any] | None,
) -> None:
    """Patch status only when something changed (no API request on an idle pass)."""
    old = _status(body, rt)
    generation = int(body.metadata.get("generation", 0))
    by_index = {int(s["index"]): s for s in summaries.values()}
    blades: list[dict[str, Any]] = []
    indexes = sorted(set(range(spec.blades.count)) | set(by_index))
    for i in indexes:
        blade = planner.blade_name(name, i)
        s = by_index.get(i)
        age = _heartbeat_age(rt, blade) if s is not None and s["ready"] else None
        blades.append({
            "name": blade, "index": i, "state": plan.states.get(blade, "Pending"),
            "fileSystems": sorted(fs for fs, o in owners.items() if o == blade),
            "softwareVersion": s["version"] if s else "",
            **({"heartbeatAgeSeconds": planner.heartbeat_bucket(age)} if age is not None else {}),
        })
    running = sum(1 for b in blades if b["state"] == "Running" and b["index"] < spec.blades.count)
    for state in ("Pending", "Running", "Suspect", "Failed", "Upgrading"):
        metrics.BLADES.labels(namespace, name, state).set(sum(1 for b in blades if b["state"] == state))
    unserved = [fs for fs, o in owners.items() if plan.states.get(o) != "Running"]
    # Ready means NFS is served: an owner that reported what it serves must list the file system
    starting = [fs for fs, o in owners.items() if fs not in unserved and o in rt.serving and fs not in rt.serving[o]]
    bad = [b["name"] for b in blades if b["state"] in ("Failed", "Suspect")]
    cond = list(old.get("conditions", []))
    if not array_ready:
        cond = conditions.set_condition(cond, type=conditions.READY, status="False", reason="DiskArrayNotReady",
                                        message=f"DiskArray {spec.disk_array} is not Ready yet", generation=generation)
    elif running == spec.blades.count and not unserved and starting:
        cond = conditions.set_condition(
            cond, type=conditions.READY, status="False", reason="FileSystemsStarting", generation=generation,
            message="not served yet: " + ", ".join(f"{fs} (on {owners[fs]})" for fs in starting))
    elif running == spec.blades.count and not unserved:
        cond = conditions.set_condition(cond, type=conditions.READY, status="True", reason="AllBladesRunning",
                                        message=f"{running} blades running, {len(fs_names)} file systems served",
                                        generation=generation)
    else:
        message = f"{running}/{spec.blades.count} blades running" + (f"; not served: {', '.join(unserved)}" if unserved else "")
        cond = conditions.set_condition(cond, type=conditions.READY, status="False",
                                        reason="FileSystemsUnserved" if unserved else "BladesNotReady",
                                        message=message, generation=generation)
    if plan.stranded:
        cond = conditions.set_condition(cond, type=conditions.DEGRADED, status="True", reason="NoSurvivor",
                                        message=f"no running blade can take {', '.join(plan.stranded)}", generation=generation)
    elif bad:
        cond = conditions.set_condition(cond, type=conditions.DEGRADED, status="True", reason="BladeFailed",
                                        message=f"blades not running: {', '.join(bad)}", generation=generation)
    else:
        cond = conditions.set_condition(cond, type=conditions.DEGRADED, status="False", reason="AllBladesRunning",
                                        message="", generation=generation)
    progressing = plan.rolling or any(b["state"] in ("Pending", "Upgrading") for b in blades)
    cond = conditions.set_condition(cond, type=conditions.PROGRESSING, status="True" if progressing else "False",
                                    reason="RollingOut" if plan.rolling else ("BladesStarting" if progressing else "Stable"),
                                    message=f"rolling out software {version}" if plan.rolling else "", generation=generation)
    b = backups if backups is not None else old.get("backups", {})
    last = (b.get("history") or [{}])[-1]
    last_ok = conditions.parse_time(b.get("lastSuccessful"))
    fresh = last_ok is not None and (datetime.datetime.now(datetime.UTC) - last_ok).total_seconds() < spec.backup.max_age
    cond = conditions.set_condition(
        cond, type=conditions.BACKED_UP, status="True" if fresh and last.get("result") == "Succeeded" else "False",
        reason="Succeeded" if fresh and last.get("result") == "Succeeded" else (last.get("result") or "NeverBackedUp"),
        message=str(last.get("message", "")), generation=generation,
    )
    new: dict[str, Any] = {
        "observedGeneration": generation,
        "conditions": cond,
        "bladesReady": f"{running}/{spec.blades.count}",
        "blades": blades,
        "fileSystems": [
            {"name": fs, "blade": owners[fs], "homeBlade": planner.home_of(name, fs_names, fs, spec.blades.count),
             "service": naming.nfs_service_name(spec.disk_array, fs), **({"pinnedTo": pins[fs]} if fs in pins else {})}
            for fs in fs_names
        ],
        "activeArea": rt.active_area,
        "rollout": {"targetVersion": version, "step": "upgrading one blade at a time"} if plan.rolling else None,
    }
    if failovers:
        new["failovers"] = [*old.get("failovers", []), *failovers][-20:]
    if backups is not None:
        new["backups"] = backups
    if move_request is not None:
        new["lastMoveRequest"] = move_request
    if rt.rolling and not plan.rolling:
        events.normal(body, "Upgraded", f"every blade runs software {version}")
    rt.rolling = plan.rolling
    changed = {k: v for k, v in new.items() if old.get(k) != v and not (v is None and k not in old)}
    if changed:
        await kube.client().patch("ClusterGroup", name, {"status": changed}, namespace=namespace, subresource="status")
        rt.status = {**(rt.status or {}), **changed}
