"""One daemon per ClusterGroup: observe -> plan -> act, a "pass" at a time.

``handlers.run_group`` (the kopf daemon) calls ``run``. A pass reads the group's body (live:
its ``move-request`` and ``backup-now`` annotations, what the management terminal asks for),
the blade pods and NFS Services through the indexes of ``indexes.py``, and the DiskArray
through the ``diskarrays`` index (``diskarray/handlers.py``); probes the blades
(``bladeapi.status``); decides with ``plan.plan`` (no I/O there); carries the actions out with
``actor.py``; runs a due backup with ``backups.py``; and writes the status ``status.py`` builds,
only the fields that changed.

The daemon runs a pass when its wake-up is set (``wakeups``: the index functions set it on a
blade pod, NFS Service, request annotation or relevant DiskArray change), at the deadlines a
pass names, and at least every ``NASBLADE_STATUS_INTERVAL``. In between it probes the blades'
heartbeats (every third of ``failureTimeout``) and runs a pass only when a probe saw a change,
so a failed blade is noticed within about ``failureTimeout`` and an idle group costs no pass.
What it remembers between passes is its ``Runtime`` (``runtime.py``), dropped when it exits.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import logging
import time
from collections.abc import Mapping
from typing import Any

import kopf

from nasblade_operator import (
    arrayapi,
    bladeapi,
    conditions,
    datametrics,
    endpoints,
    events,
    kube,
    metrics,
    naming,
    nbdtls,
    policies,
    settings,
    state,
)
from nasblade_operator.clustergroup import actor, backups, indexes, reconfig
from nasblade_operator.clustergroup import plan as planner
from nasblade_operator.clustergroup import spec as cg_spec
from nasblade_operator.clustergroup import status as cg_status
from nasblade_operator.clustergroup.runtime import Runtime
from nasblade_operator.diskarray import formatting, nfsslots
from nasblade_operator.diskarray import spec as da_spec
from nasblade_operator.validation import InvalidSpec

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Indexes:
    """The kopf indexes a pass reads (kopf hands them to the daemon by name)."""

    pods: kopf.Index[Any, Any]  # blade_pods
    arrays: kopf.Index[Any, Any]  # diskarrays
    services: kopf.Index[Any, Any]  # nfs_services
    group_services: kopf.Index[Any, Any]  # nfs_services_of_group


async def run(
    st: state.OperatorState, body: kopf.Body, *, name: str, namespace: str, stopped: kopf.DaemonStopped,
    logger: kopf.Logger, ix: Indexes,
) -> None:
    """Observe -> plan -> act, on every relevant event and whenever a deadline comes up, until stopped."""
    wake = st.wakeups.register(namespace, name, array=str(body.get("spec", {}).get("diskArrayRef", {}).get("name", "")))
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
                    if woken or time.monotonic() >= next_pass or await _probe_changed(st, body, name=name,
                                                                                      namespace=namespace, rt=rt,
                                                                                      pods=ix.pods):
                        next_pass = time.monotonic() + await _pass(st, body, name=name, namespace=namespace, rt=rt, ix=ix)
                except (kube.KubeError, bladeapi.BladeUnavailable, arrayapi.ArrayUnavailable, OSError) as exc:
                    metrics.RECONCILE_ERRORS.labels("ClusterGroup", type(exc).__name__).inc()
                    logger.warning("group pass failed, will retry: %s", exc)
                    next_pass = time.monotonic() + 1.0
            deadline = next_pass if deleting else min(next_pass, rt.next_probe)
            await _sleep(wake, stopped, timeout=max(0.1, deadline - time.monotonic()))
    finally:
        st.wakeups.unregister(namespace, name)


async def _sleep(wake: asyncio.Event, stopped: kopf.DaemonStopped, *, timeout: float) -> None:
    """Until ``wake`` is set, the daemon is asked to stop, or ``timeout`` passes."""
    waits = [asyncio.ensure_future(wake.wait()), asyncio.ensure_future(stopped.wait())]
    try:
        await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()


def _pod_obs(summary: Mapping[str, Any], *, now: datetime.datetime, rt: Runtime) -> planner.PodObs:
    ready = bool(summary["ready"])
    if ready:
        rt.seen_ready.add(summary["name"])
    since = conditions.parse_time(summary.get("readyTransition"))
    return planner.PodObs(
        name=summary["name"],
        index=int(summary["index"]),
        version=str(summary["version"]),
        ready=ready,
        ever_ready=ready or summary["name"] in rt.seen_ready,
        # a blade that declared itself failed (bladeapi.BladeStatus.failed) is failed at once
        terminated=summary["phase"] in ("Failed", "Succeeded") or summary["name"] in rt.failed,
        deleting=bool(summary["deleting"]),
        not_ready_for=0.0 if ready or since is None else (now - since).total_seconds(),
        # the age the blade reported at the last probe (not extrapolated: the blade keeps
        # writing heartbeats between probes; we only know what it said then)
        heartbeat_age=rt.heartbeats.get(summary["name"]),
    )


async def _probe_changed(
    st: state.OperatorState, body: kopf.Body, *, name: str, namespace: str, rt: Runtime, pods: kopf.Index[Any, Any],
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
    await _probe(st, namespace, array=spec.disk_array, summaries=summaries, rt=rt,
                 failure_timeout=spec.heartbeat.failure_timeout)
    await _certificates(st, body, name=name, namespace=namespace, array=spec.disk_array, summaries=summaries, rt=rt)
    return _probe_view(rt, failure_timeout=spec.heartbeat.failure_timeout) != before


def _probe_view(rt: Runtime, *, failure_timeout: float) -> tuple[Any, ...]:
    """What of a probe's findings the plan and the status depend on."""
    beats = {b: (planner.heartbeat_bucket(age), age >= failure_timeout) for b, age in rt.heartbeats.items()}
    return frozenset(rt.failed), dict(rt.serving), rt.active_area, beats, dict(rt.known)


def _group_spec(body: kopf.Body, name: str, rt: Runtime) -> cg_spec.ClusterGroupSpec:
    """The group's parsed spec (raises InvalidSpec), parsed once per generation."""
    return rt.parsed("group", int(body.metadata.get("generation") or 0),
                     lambda: cg_spec.parse(body.get("spec", {}), name=name))


def _array_spec(array: Mapping[str, Any], rt: Runtime) -> da_spec.DiskArraySpec:
    """The DiskArray's parsed spec from its ``diskarrays`` index entry (raises InvalidSpec), once per generation."""
    return rt.parsed(f"array/{array['uid']}", int(array.get("generation") or 0), lambda: da_spec.parse(array["spec"]))


async def _probe(
    st: state.OperatorState, namespace: str, *, array: str, summaries: Mapping[int, Mapping[str, Any]], rt: Runtime,
    failure_timeout: float,
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
    await st.trust(namespace, array)
    token = await st.operator_token(namespace, array)  # the blades' APIs take the operator's token
    # not-Ready pods too, for one thing: a blade that declared itself failed (its readiness
    # says 503 then) is failed now, not failureTimeout after its pod went not-Ready
    targets = [(s["name"], bool(s["ready"]), endpoints.blade_api(namespace, s["name"], s.get("ip")))
               for s in summaries.values() if s["ready"] or (s["phase"] == "Running" and s.get("ip"))]
    targets = [t for t in targets if t[2]]
    results = await asyncio.gather(*(bladeapi.status(st.http, str(base), blade=blade, token=token)
                                     for blade, _, base in targets),
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
                rt.heartbeats[blade] = result.heartbeat_age
            if result.file_systems is not None:
                rt.serving[blade] = result.file_systems
            else:
                rt.serving.pop(blade, None)
            if result.known is not None:
                rt.known[blade] = result.known
            rt.active_area = result.active_area
        elif ready:
            rt.heartbeats.pop(blade, None)  # unknown: the pod's readiness decides
            rt.serving.pop(blade, None)


async def _certificates(st: state.OperatorState, body: kopf.Body, *, name: str, namespace: str, array: str,
                        summaries: Mapping[int, Mapping[str, Any]], rt: Runtime) -> None:
    """Every ``nbdtls.check_interval``: each blade pod's certificate made if missing (a pod
    created before its array's CA existed) and renewed or rebundled when due; an Event names
    what changed. The blades read renewed files at their next handshake."""
    if time.monotonic() < rt.next_cert_check:
        return
    rt.next_cert_check = time.monotonic() + nbdtls.check_interval()
    done = [d for s in summaries.values() if not s.get("deleting")
            if (d := await nbdtls.ensure_blade(st.kube, body, array=array, group=name, blade=str(s["name"]),
                                               namespace=namespace))]
    if done:
        events.normal(body, "Certificates", "; ".join(done))


async def _move_request(
    st: state.OperatorState, body: kopf.Body, *, name: str, namespace: str, status: Mapping[str, Any], rt: Runtime,
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
        await st.kube.patch("ClusterGroup", name, {"status": {"lastMoveRequest": record}},
                            namespace=namespace, subresource="status")
        rt.wrote({"lastMoveRequest": record})
    await _clear_move_request(st, name=name, namespace=namespace)
    return None


def _request_record(body: kopf.Body, outcome: planner.RequestOutcome) -> dict[str, Any]:
    """``status.lastMoveRequest`` for an answered request (a refusal also gets a Warning Event)."""
    req = outcome.request
    if outcome.result == "Refused":
        events.warning(body, "MoveRefused", f"planned move of {req.fs or '?'} to {req.to or '?'} refused: {outcome.message}")
    return {"id": req.id, "fileSystem": req.fs, "to": req.to, "result": outcome.result, "message": outcome.message[:500],
            "time": conditions.now_rfc3339()}


async def _clear_move_request(st: state.OperatorState, *, name: str, namespace: str) -> None:
    await st.kube.patch("ClusterGroup", name, {"metadata": {"annotations": {naming.A_MOVE_REQUEST: None}}},
                        namespace=namespace)


async def _pass(st: state.OperatorState, body: kopf.Body, *, name: str, namespace: str, rt: Runtime, ix: Indexes) -> float:
    """One observe -> plan -> act round; returns the seconds until the next deadline.

    Between deadlines the daemon sleeps until a pod or DiskArray event wakes it, so an idle
    group costs nothing.
    """
    status = rt.status_over(body)
    if status.get("portion") is None:
        return 1.0  # handlers.reconcile has not claimed the portion yet
    try:
        spec = _group_spec(body, name, rt)
    except InvalidSpec:
        return settings.current().status_interval  # handlers.reconcile reported it
    array = indexes.one(ix.arrays, (namespace, spec.disk_array))
    if array is None or array["deleting"]:
        return 1.0
    try:
        da = _array_spec(array, rt)
    except InvalidSpec:
        return settings.current().status_interval  # the DiskArray's own handler reported it
    file_systems = da.file_systems_of(name)
    fs_names = [f.name for f in file_systems]
    # Blades are handed a file system only once the DiskArray records it as formatted, with
    # its NFS slot (the container ports it is served on, whichever blade serves it).
    slots = nfsslots.recorded(array["status"])
    unformatted = {f.name for f in file_systems} - (formatting.formatted_names(array["status"]) & slots.keys())
    now = datetime.datetime.now(datetime.UTC)
    summaries = {int(s["index"]): s for s in ix.pods.get((namespace, name), [])}
    await _probe(st, namespace, array=spec.disk_array, summaries=summaries, rt=rt,
                 failure_timeout=spec.heartbeat.failure_timeout)
    await _certificates(st, body, name=name, namespace=namespace, array=spec.disk_array, summaries=summaries, rt=rt)
    await reconfig.sync(st, body, name=name, namespace=namespace, spec=spec, da=da, file_systems=file_systems,
                        slots=slots, unformatted=unformatted, summaries=summaries, rt=rt)
    request = await _move_request(st, body, name=name, namespace=namespace, status=status, rt=rt)
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
    for blade, blade_state in p.states.items():
        if blade_state != "Running":
            rt.first_bad.setdefault(blade, time.monotonic())
        else:
            rt.first_bad.pop(blade, None)
    owners = dict(observed.owners)
    for fs in fs_names:
        owners.setdefault(fs, planner.home_of(name, fs_names, fs, spec.blades.count))
    failovers: list[dict[str, Any]] = []
    down_for = {pod.name: pod.not_ready_for for pod in observed.pods.values()}
    act = actor.Actor(st, body, name=name, namespace=namespace, spec=spec, da=da, summaries=summaries, rt=rt,
                      down_for=down_for)
    outcome = p.request
    pins = dict(observed.pins) if outcome is not None and outcome.result == "Moving" else dict(p.pins)
    try:
        for action in p.actions:
            if unformatted and (isinstance(action, planner.CreatePod)
                                or (isinstance(action, planner.MoveFileSystem) and action.fs in unformatted)):
                continue  # diskarray/formatting.py: not before mkfs has run and been recorded
            try:
                record = await act.do(action, file_systems=file_systems, slots=slots)
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
        await actor.sync_services(st, body, name=name, namespace=namespace, array=spec.disk_array, owners=owners,
                                  slots=slots, services=ix.services, group_services=ix.group_services)
        await policies.sync_group(st.kube, body, array=spec.disk_array, group=name, namespace=namespace,
                                  disruption_budget_on=spec.blades.disruption_budget, blades=spec.blades.count,
                                  exports=[e.clients for f in file_systems for e in f.exports],
                                  nfs_slots=sorted({slots[f.name] for f in file_systems if f.name in slots}))
        new_backups = await backups.run_if_due(st, body, name=name, namespace=namespace, spec=spec, array=array,
                                               states=p.states, summaries=summaries, rt=rt)
        answered = outcome is not None and outcome.result != "Moving"
        await _write_status(st, body, rt, cg_status.StatusInputs(
            group=name, spec=spec, plan=p, old=rt.status_over(body), generation=int(body.metadata.get("generation", 0)),
            now=datetime.datetime.now(datetime.UTC), owners=owners, file_systems=fs_names,
            pods=list(summaries.values()), version=da.software_version,
            array_ready=conditions.is_true(array["status"].get("conditions", []), conditions.READY),
            heartbeats=rt.heartbeats, serving=rt.serving, active_area=rt.active_area, pins=pins, failovers=failovers,
            backups=new_backups, move_request=_request_record(body, outcome) if answered and outcome else None,
        ), namespace=namespace)
        if answered:
            await _clear_move_request(st, name=name, namespace=namespace)
    return _next_deadline(spec, observed, plan=p, status=rt.status_over(body), rt=rt)


async def _write_status(st: state.OperatorState, body: kopf.Body, rt: Runtime, inputs: cg_status.StatusInputs, *,
                        namespace: str) -> None:
    """Patch the status ``status.build`` makes, only the fields that changed (no request on an idle pass)."""
    new = cg_status.build(inputs)
    for blade_state, n in cg_status.blade_counts(new["blades"]).items():
        metrics.BLADES.labels(namespace, inputs.group, blade_state).set(n)
    datametrics.group_status(namespace, inputs.group, array=inputs.spec.disk_array, status={**inputs.old, **new},
                             heartbeats=inputs.heartbeats, backup_max_age=inputs.spec.backup.max_age)
    if rt.rolling and not inputs.plan.rolling:
        events.normal(body, "Upgraded", f"every blade runs software {inputs.version}")
    rt.rolling = inputs.plan.rolling
    changed = cg_status.changed(inputs.old, new)
    if changed:
        await st.kube.patch("ClusterGroup", inputs.group, {"status": changed}, namespace=namespace, subresource="status")
        rt.wrote(changed)


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
    last = conditions.parse_time(status.get("backups", {}).get("lastAttempt"))
    if last is not None:
        age = (datetime.datetime.now(datetime.UTC) - last).total_seconds()
        waits.append(spec.backup.interval - age)
    if rt.next_backup_check:
        waits.append(rt.next_backup_check - time.monotonic())
    return max(0.1, min(waits))
