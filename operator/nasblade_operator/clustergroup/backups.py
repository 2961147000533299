"""A ClusterGroup's backups of its processor information: when, through which blade, progress.

Each pass of the daemon (``daemon.py``) calls ``run_if_due``: an on-demand backup (the
``nasblade.io/backup-now`` annotation) runs at once, an interval backup once ``spec.backup.interval``
has passed since the last attempt, deferred while the controller's load (``arrayapi``) is at or
above ``loadThreshold`` unless the last success is older than ``maxAge`` (``plan.backup_decision``).
The backup itself is the blade's job (``bladeapi.backup`` on a Running blade); while it runs,
``status.backups.inProgress`` shows the bytes the controller's copy jobs moved
(``plan.backup_bytes``). The new ``status.backups`` goes back to the daemon, which writes it
with the rest of the status (``status.py``); the deadlines live in the group's ``Runtime``.
"""

from __future__ import annotations

import asyncio
import datetime
import time
from collections.abc import Mapping
from typing import Any

import kopf

from nasblade_operator import (
    arrayapi,
    bladeapi,
    conditions,
    endpoints,
    events,
    metrics,
    naming,
    state,
)
from nasblade_operator.clustergroup import plan as planner
from nasblade_operator.clustergroup import spec as cg_spec
from nasblade_operator.clustergroup.runtime import Runtime

#: ``status.backups.history`` keeps this many records.
HISTORY = 10


async def run_if_due(
    st: state.OperatorState, body: kopf.Body, *, name: str, namespace: str, spec: cg_spec.ClusterGroupSpec,
    array: Mapping[str, Any], states: Mapping[str, planner.BladeState], summaries: Mapping[int, Mapping[str, Any]],
    rt: Runtime,
) -> dict[str, Any] | None:
    """Run a backup through a Running blade if one is asked for or due; return the new status.backups."""
    annotations = body.metadata.get("annotations", {}) or {}
    on_demand = naming.A_BACKUP_NOW in annotations
    backups = dict(rt.status_over(body).get("backups", {}))
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
    token = await st.token(namespace, spec.disk_array)
    api = arrayapi.ArrayAPI(st.http, endpoints.controller_api(namespace, spec.disk_array), token=token)
    if trigger == "Interval":
        load = await _load_percent(api)
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
        result = await _backup_following(st, api, name=name, namespace=namespace,
                                         areas=array["status"].get("areas", {}) or {}, base=base,
                                         token=await st.operator_token(namespace, spec.disk_array),
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
        await st.kube.patch("ClusterGroup", name, {"metadata": {"annotations": {naming.A_BACKUP_NOW: None}}},
                            namespace=namespace)
    return backups


async def _backup_following(
    st: state.OperatorState, api: arrayapi.ArrayAPI, *, name: str, namespace: str, areas: Mapping[str, Any], base: str,
    token: str, running: dict[str, Any], backups: Mapping[str, Any], rt: Runtime,
) -> bladeapi.BackupResult:
    """Run the blade's backup call and, while it runs, publish its progress as
    ``status.backups.inProgress`` (bytesCopied / totalBytes from the controller's copy jobs),
    at most one status patch a second and only when the figure moved."""
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
        await st.kube.patch("ClusterGroup", name, {"status": {"backups": {"inProgress": progress}}},
                            namespace=namespace, subresource="status")
        rt.wrote({"backups": {**backups, "inProgress": dict(progress)}})

    await publish()
    call = asyncio.ensure_future(bladeapi.backup(st.http, base, blade=str(running["blade"]), token=token,
                                                 portions=list(running["portions"]),
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


async def _load_percent(api: arrayapi.ArrayAPI) -> int | None:
    try:
        figures = await api.figures()
    except (arrayapi.ArrayUnavailable, arrayapi.ArrayRefused):
        return None
    return arrayapi.load_percent(figures)
