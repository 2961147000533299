"""kopf handlers of DiskArray: controller objects, LUs, program seeding, status, deletion.

Reads: the DiskArray body (kopf), its children (``kube``), the controller (``arrayapi``), and
two kopf indexes declared here: ``controller_pods`` (is the controller pod Ready) and
``group_areas`` (which processor-info area each ClusterGroup runs from).
Writes: Secret, Service, StatefulSet (from ``builders``), the LUs, the status (through kopf's
``patch``; ``status.portions[].activeArea`` through ``kube``, see ``areas.py``; the devices'
health and ``Degraded`` from the ``refresh_figures`` timer, see ``devices.py``) and Events
(``events``). The ClusterGroup handlers and daemon (``clustergroup/handlers.py``,
``clustergroup/daemon.py``) read the DiskArray through the ``diskarrays`` index declared here,
which also wakes the groups (``wakeups``). What this module keeps between calls (tokens, the
generation whose children exist, controller-pod waits) is in the operator state (``state.py``),
dropped by ``delete``.

Reconcile order: parse (invalid -> Ready=False, Warning, PermanentError) -> token Secret ->
Service -> StatefulSet -> wait for the controller pod to be Ready (in place, woken by the pod
index, bounded; then TemporaryError) -> LUs -> formatting -> program seed -> Ready. Each step
is idempotent, so create, update and resume all run the same function.

File systems are formatted exactly once, over NBD to the controller Service
(``nasblade.fs.fs.mkfs``, root directory mode 1777 as the standalone array makes it), and the
fact is recorded durably in ``status.fileSystems[].formatted`` (with the LU's creation time)
only after mkfs returned. ``diskarray/formatting.py`` decides, crash-safe: an LU recorded as
formatted is never touched again; an unrecorded LU is formatted only if its superblock block
is all zeroes, recorded if it holds a file system, refused if it holds anything else. A
ClusterGroup gives blades only file systems recorded as formatted.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import datetime
import secrets
import time
from collections.abc import Mapping
from typing import Any

import kopf
from nasblade import lunames

from nasblade_operator import (
    arrayapi,
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
from nasblade_operator.diskarray import areas, builders, csi, devices, formatting, nfsslots
from nasblade_operator.diskarray import spec as da_spec
from nasblade_operator.validation import InvalidSpec

RESOURCE = (naming.GROUP, naming.VERSION, "diskarrays")
GROUPS = (naming.GROUP, naming.VERSION, "clustergroups")

@kopf.index(*RESOURCE)
async def diskarrays(namespace: str | None, name: str, body: kopf.Body, memo: kopf.Memo,
                     **_: Any) -> dict[tuple[str, str], dict[str, Any]]:
    """(namespace, name) -> the DiskArray's spec, status and deletion mark, for the group handlers.

    Also wakes the daemons of the array's ClusterGroups (they run once this event is indexed)
    when something a group acts on changed; the controller figures refreshed every status
    interval are not such a thing.
    """
    namespace = namespace or ""
    entry = {
        "spec": dict(body.get("spec", {})),
        "status": dict(body.get("status", {})),
        "deleting": bool(body.metadata.get("deletionTimestamp")),
        "uid": body.metadata.get("uid"),
        "generation": body.metadata.get("generation"),
        "resourceVersion": body.metadata.get("resourceVersion"),
    }
    datametrics.array_status(namespace, name, dict(body.get("status", {})))
    views = state.of(memo).group_views  # (namespace, name) -> the group view as last indexed
    key = (namespace, name)
    if entry["deleting"]:  # news to the groups once; nothing kept of an array that is going
        if views.pop(key, None) is not None:
            state.of(memo).wakeups.wake_groups_of(namespace, name)
    elif views.get(key) != (seen := _group_view(entry)):
        views[key] = seen
        state.of(memo).wakeups.wake_groups_of(namespace, name)
    return {key: entry}


def _group_view(entry: Mapping[str, Any]) -> tuple[Any, ...]:
    """What a ClusterGroup pass reads of its DiskArray: spec, deletion, Ready, formatted file systems, portions."""
    status = entry["status"]
    return (entry["uid"], entry["generation"], entry["deleting"], status.get("conditions"), status.get("fileSystems"),
            status.get("portions"), status.get("software"), status.get("areas"))


@kopf.index(*GROUPS)
async def group_areas(namespace: str | None, name: str, body: kopf.Body, **_: Any) -> dict[tuple[str, str], dict[str, str]]:
    """(namespace, DiskArray) -> each of its ClusterGroups and the processor-info area it runs from."""
    array = str(body.get("spec", {}).get("diskArrayRef", {}).get("name", ""))
    return {(namespace or "", array): {"group": name, "activeArea": str(body.get("status", {}).get("activeArea", areas.PORTION))}}


@kopf.on.event(*GROUPS)
async def group_changed(namespace: str | None, body: kopf.Body, logger: kopf.Logger, memo: kopf.Memo, **kwargs: Any) -> None:
    """A ClusterGroup changed (e.g. its ``status.activeArea``): mirror the areas into its DiskArray."""
    array = str(body.get("spec", {}).get("diskArrayRef", {}).get("name", ""))
    await _mirror_areas(state.of(memo).kube, namespace or "", array, arrays=kwargs["diskarrays"],
                        groups=kwargs["group_areas"], logger=logger)


@kopf.on.event(*RESOURCE)
async def array_changed(namespace: str | None, name: str, logger: kopf.Logger, memo: kopf.Memo, **kwargs: Any) -> None:
    """A DiskArray changed (e.g. a portion was claimed): mirror its groups' areas into it."""
    await _mirror_areas(state.of(memo).kube, namespace or "", name, arrays=kwargs["diskarrays"],
                        groups=kwargs["group_areas"], logger=logger)


async def _mirror_areas(
    k: kube.Kube, namespace: str, array: str, *, arrays: kopf.Index[Any, Any], groups: kopf.Index[Any, Any], logger: kopf.Logger,
) -> None:
    """Patch ``status.portions[].activeArea`` and ``status.areas.activeProcessorInfoArea`` when they differ.

    Optimistically locked on the DiskArray's resourceVersion (portion claims write the same
    list); a conflict is dropped, because the newer DiskArray event runs this again.
    """
    store = arrays.get((namespace, array))
    da = next(iter(store), None) if store is not None else None
    if da is None or da["deleting"] or not da["status"].get("portions") or "areas" not in da["status"]:
        return  # no portion claimed yet, or the reconcile has not written status.areas yet (it will, then this runs)
    active = {g["group"]: g["activeArea"] for g in groups.get((namespace, array), [])}
    portions = areas.mirrored(da["status"]["portions"], active)
    summary = areas.summary(portions)
    if portions == da["status"]["portions"] and da["status"].get("areas", {}).get("activeProcessorInfoArea") == summary:
        return
    try:
        await k.patch(
            "DiskArray", array, {"metadata": {"resourceVersion": da["resourceVersion"]},
                                 "status": {"portions": portions, "areas": {"activeProcessorInfoArea": summary}}},
            namespace=namespace, subresource="status",
        )
    except kube.KubeError as exc:  # 409: a newer DiskArray event runs this again; else the next event does
        (logger.debug if exc.status == 409 else logger.warning)(
            "mirroring the areas into DiskArray %s/%s: %s", namespace, array, exc)


@kopf.on.resume(*RESOURCE)
@kopf.on.create(*RESOURCE)
@kopf.on.update(*RESOURCE, field="spec")
async def reconcile(
    body: kopf.Body, spec: kopf.Spec, name: str, namespace: str | None, status: kopf.Status, patch: kopf.Patch,
    memo: kopf.Memo, **kwargs: Any,
) -> None:
    """Parse, children, wait for the controller, LUs, formatting, program seed, Ready (see above)."""
    st = state.of(memo)
    namespace = namespace or ""
    metrics.RECONCILES.labels("DiskArray").inc()
    generation = int(body.metadata.get("generation", 0))
    parsed = _parse_or_refuse(body, spec, status=status, patch=patch, generation=generation)
    token = await _ensure_children(st, body, parsed, name=name, namespace=namespace)
    patch.status["controller"] = {
        "endpoint": endpoints.controller_api(namespace, name),
        "service": naming.controller_name(name),
        "tokenSecret": naming.token_secret_name(name),
    }
    if parsed.csi.enabled:
        patch.status["csi"] = {"driver": csi.driver_name(namespace, name, parsed),
                               "controller": csi.name(name),
                               "volumes": sorted(f.name for f in parsed.file_systems
                                                 if lunames.csi_volume_id(f.name))}
    elif status.get("csi"):
        patch.status["csi"] = None
    patch.status["areas"] = {
        "program": naming.LU_PROGRAM,
        "processorInfo": naming.LU_PROCESSOR_INFO,
        "backup": naming.LU_BACKUP,
        "portionSize": parsed.areas.portion_size,
        "activeProcessorInfoArea": status.get("areas", {}).get("activeProcessorInfoArea", "portion"),
    }
    await _wait_for_controller(st, body, name=name, namespace=namespace, status=status, patch=patch, generation=generation,
                               pods=kwargs["controller_pods"])
    await _provision(st, body, parsed, name=name, namespace=namespace, token=token, status=status, patch=patch, generation=generation)
    cond = conditions.set_condition(status.get("conditions", []), type=conditions.PROGRESSING, status="False",
                                    reason="Reconciled", message="", generation=generation)
    cond = conditions.set_condition(cond, type=conditions.READY, status="True", reason="Ready",
                                    message=f"controller up, {len(parsed.file_systems)} file systems provisioned",
                                    generation=generation)
    patch.status["conditions"] = cond
    patch.status["observedGeneration"] = generation
    if not conditions.is_true(status.get("conditions", []), conditions.READY):
        events.normal(body, "Ready", "controller up and all LUs provisioned")


def _parse_or_refuse(
    body: kopf.Body, spec: Mapping[str, Any], *, status: Mapping[str, Any], patch: kopf.Patch, generation: int
) -> da_spec.DiskArraySpec:
    """Parse the spec; on error set Ready=False, post a Warning and stop (PermanentError)."""
    try:
        return da_spec.parse(spec)
    except InvalidSpec as exc:
        metrics.RECONCILE_ERRORS.labels("DiskArray", "InvalidSpec").inc()
        cond = conditions.set_condition(status.get("conditions", []), type=conditions.READY, status="False",
                                        reason="InvalidSpec", message=str(exc), generation=generation)
        patch.status["conditions"] = cond
        patch.status["observedGeneration"] = generation
        events.warning(body, "InvalidSpec", f"fix the spec: {exc}")
        raise kopf.PermanentError(f"invalid spec: {exc}") from None


async def _ensure_children(
    st: state.OperatorState, body: kopf.Body, parsed: da_spec.DiskArraySpec, *, name: str, namespace: str,
) -> str:
    """Create the token Secret, Service and StatefulSet if missing; return the token.

    ``OperatorState.ensured`` remembers the generation whose children were made, so a retry
    of the same generation costs no request."""
    k = st.kube
    token = st.tokens.get((namespace, name))
    secret = await k.get("Secret", naming.token_secret_name(name), namespace=namespace) if token is None else None
    if token is None:
        have = (secret or {}).get("data") or {}
        kept = base64.b64decode(have[builders.OPERATOR_TOKEN_KEY]).decode() if builders.OPERATOR_TOKEN_KEY in have else None
        # keys derived from the control token (the CSI plugin's) are derived from the one kept
        control = base64.b64decode(have["token"]).decode() if "token" in have else secrets.token_urlsafe(32)
        fresh = builders.token_secret(name, token=control, admin_token=secrets.token_urlsafe(32),
                                      metrics_token=secrets.token_urlsafe(32), operator_token=kept)
        if secret is None:
            kopf.adopt(fresh, owner=body)
            secret, _ = await k.create(fresh)
        elif missing := {key: v for key, v in fresh["data"].items() if key not in (secret.get("data") or {})}:
            # a Secret made by an older operator (or by hand): it gets the roles' tokens it lacks
            secret = await k.patch("Secret", naming.token_secret_name(name), {"data": missing},
                                   namespace=namespace) or secret
            events.normal(body, "Updated", f"Secret {naming.token_secret_name(name)}: added {', '.join(sorted(missing))}")
        token = base64.b64decode(secret["data"]["token"]).decode()
        st.tokens[(namespace, name)] = token
    image = settings.current().image
    generation = int(body.metadata.get("generation", 0))
    if st.ensured.get(str(body.metadata.get("uid"))) == generation:
        return token  # a retry of the same generation: the children were made already
    # NBD TLS first: the controller pod mounts its certificate and access file
    async with st.claim_locks.hold((namespace, name)):  # the access file: one writer at a time
        created: list[str] = await nbdtls.ensure_array(
            k, body, array=name, namespace=namespace, domain=settings.current().cluster_domain)
    await st.trust(namespace, name, force=True)  # the HTTPS control API is checked against its CA
    sts = builders.controller_statefulset(name, parsed, image=image, defaults=settings.current().pod_defaults)
    for obj in (builders.controller_service(name), sts):
        kopf.adopt(obj, owner=body)
        existing, was_created = await k.create(obj)
        if was_created:
            created.append(f"{obj['kind']} {obj['metadata']['name']}")
        elif obj is sts and existing.get("metadata", {}).get("annotations", {}).get(builders.TEMPLATE_HASH) != \
                sts["metadata"]["annotations"][builders.TEMPLATE_HASH]:
            # Cache size, resources or image changed: roll the controller pod (devices cannot change).
            await k.patch("StatefulSet", naming.controller_name(name),
                          {"metadata": {"annotations": sts["metadata"]["annotations"]},
                           "spec": {"template": sts["spec"]["template"]}}, namespace=namespace)
            events.normal(body, "Updated", f"StatefulSet {naming.controller_name(name)}: new pod template")
    created += await policies.sync_array(k, body, array=name, namespace=namespace)
    try:
        created += await csi.sync(k, body, parsed, array=name, namespace=namespace, image=image,
                                  role=settings.current().csi_cluster_role, defaults=settings.current().pod_defaults,
                                  snapshotter=settings.current().csi_snapshotter_image,
                                  provisioner=settings.current().csi_provisioner_image,
                                  resizer=settings.current().csi_resizer_image)
    except (csi.NoClusterRole, csi.DriverNameTaken) as exc:  # the rest of the array is unaffected
        events.warning(body, "CsiRefused", str(exc))
    if created:
        events.normal(body, "Created", ", ".join(created))
    st.ensured[str(body.metadata.get("uid"))] = generation
    return token


@kopf.index("pods", labels={naming.L_COMPONENT: "controller", naming.L_ARRAY: kopf.PRESENT})
async def controller_pods(namespace: str | None, body: kopf.Body, labels: kopf.Labels, memo: kopf.Memo,
                          **_: Any) -> dict[tuple[str, str], bool]:
    """(namespace, DiskArray) -> whether its controller pod is Ready; wakes a reconcile waiting for it
    (``OperatorState.controller_waits``)."""
    waits = state.of(memo).controller_waits
    key = (namespace or "", labels[naming.L_ARRAY])
    ready = not body.metadata.get("deletionTimestamp") and any(
        c.get("type") == "Ready" and c.get("status") == "True" for c in body.get("status", {}).get("conditions", []))
    if ready and key in waits:
        waits[key].set()  # the waiter runs once this event is indexed
    return {key: ready}

#: How long a reconcile waits in place for the controller pod before it retries later: waking on
#: the pod event costs no request per second, and a retry costs a status patch and a pass.
CONTROLLER_WAIT = 60.0


def _controller_ready(pods: kopf.Index[Any, Any], key: tuple[str, str]) -> bool:
    return any(pods.get(key, []))


async def _wait_for_controller(
    st: state.OperatorState, body: kopf.Body, *, name: str, namespace: str, status: Mapping[str, Any], patch: kopf.Patch, generation: int,
    pods: kopf.Index[Any, Any],
) -> None:
    """Wait (bounded) for the controller pod to be Ready, then retry later (TemporaryError).

    The status says ``WaitingForController`` from the start of the wait (one patch, skipped
    when it says so already), not only once the wait has timed out.
    """
    key = (namespace, name)
    if _controller_ready(pods, key):
        return
    # registered before the status patch below: a pod event indexed while that request is out
    # wakes the wait instead of being missed for the whole CONTROLLER_WAIT
    wake = st.controller_waits.setdefault(key, asyncio.Event())
    wake.clear()
    cond = conditions.set_condition(status.get("conditions", []), type=conditions.READY, status="False",
                                    reason="WaitingForController", message="the controller pod is not Ready yet",
                                    generation=generation)
    cond = conditions.set_condition(cond, type=conditions.PROGRESSING, status="True",
                                    reason="WaitingForController", message="waiting for the controller pod",
                                    generation=generation)
    try:
        if cond != status.get("conditions") or status.get("observedGeneration") != generation:
            await st.kube.patch("DiskArray", name, {"status": {"conditions": cond, "observedGeneration": generation}},
                                namespace=namespace, subresource="status")
        if not _controller_ready(pods, key):
            await asyncio.wait_for(wake.wait(), timeout=CONTROLLER_WAIT)
    except TimeoutError:
        pass
    finally:
        st.controller_waits.pop(key, None)
    if _controller_ready(pods, key):
        return
    patch.status["conditions"] = cond
    patch.status["observedGeneration"] = generation
    raise kopf.TemporaryError("waiting for the controller pod to be Ready", delay=settings.current().retry_delay)


async def _provision(
    st: state.OperatorState,
    body: kopf.Body,
    parsed: da_spec.DiskArraySpec,
    *,
    name: str,
    namespace: str,
    token: str,
    status: Mapping[str, Any],
    patch: kopf.Patch,
    generation: int,
) -> None:
    """LUs, file-system formatting and the program seed; transient failures retry."""
    api = arrayapi.ArrayAPI(st.http, endpoints.controller_api(namespace, name), token=token)
    nbd = endpoints.controller_nbd(namespace, name)
    tls_dir = None
    if endpoints.controller_nbd_tls(namespace, name):
        tls_dir = await nbdtls.admin_dir(st.kube, array=name, namespace=namespace, cache=st.admin_dirs)
        if tls_dir is None:
            raise kopf.TemporaryError("waiting for the NBD admin certificate Secret",
                                      delay=settings.current().retry_delay)
    arrayapi.use_nbd_tls(nbd, str(tls_dir) if tls_dir is not None else None)
    deadline = time.monotonic() + CONTROLLER_WAIT
    while True:
        try:
            ensured = await api.ensure_lus(builders.desired_lus(parsed))
            fs = await ensure_formatted(parsed, nbd=nbd, lus=ensured.lus, status=status, patch=patch, locks=st.lu_locks)
            async with st.lu_locks.hold((nbd, naming.LU_PROGRAM)):
                seeded = await arrayapi.seed_program(nbd, version=parsed.software_version)
            break
        except arrayapi.ArrayRefused as exc:
            reason = "NoSpace" if exc.no_space else "ControllerRefused"  # 409 NoSpace, or an older 507
            _not_ready(status, patch, generation=generation, reason=reason, message=str(exc))
            events.warning(body, "NoSpace" if exc.no_space else "ControllerUnavailable", f"the controller refused: {exc}")
            metrics.RECONCILE_ERRORS.labels("DiskArray", reason).inc()
            raise kopf.TemporaryError(str(exc), delay=max(30.0, settings.current().retry_delay)) from None
        except arrayapi.ArrayUnavailable as exc:
            _not_ready(status, patch, generation=generation, reason="ControllerUnavailable", message=str(exc))
            metrics.RECONCILE_ERRORS.labels("DiskArray", "ControllerUnavailable").inc()
            if time.monotonic() >= deadline:
                raise kopf.TemporaryError(str(exc), delay=settings.current().retry_delay) from None
            # A transient failure (the controller restarting, an NBD connection reset) is retried
            # here, bounded like the wait for the controller pod, with the status showing it
            # now: kopf's own retry needs a later event to wake it, and events that arrive
            # while it sleeps (the groups', the timer's) could leave it waiting for the next
            # spec change.
            await st.kube.patch("DiskArray", name, {"status": dict(patch.status)}, namespace=namespace,
                                subresource="status")
            await asyncio.sleep(settings.current().retry_delay)
    if ensured.changed or fs.formatted:
        done = [f"created or grew LUs: {', '.join(ensured.changed)}"] if ensured.changed else []
        done += [f"formatted: {', '.join(fs.formatted)}"] if fs.formatted else []
        events.normal(body, "LUsCreated", "; ".join(done))
    if seeded:
        events.normal(body, "ProgramSeeded", f"software {parsed.software_version} stored in the program LU")
    versions = list(status.get("software", {}).get("seeded", []))
    if parsed.software_version not in versions:
        versions.append(parsed.software_version)
    patch.status["software"] = {"version": parsed.software_version, "seeded": versions}
    if fs.refused:
        message = (f"LUs {', '.join(fs.refused)} hold data that is not a nasblade file system; they were not formatted. "
                   "Move the data away and clear the LU's first 4 KiB, or rename the file system")
        _not_ready(status, patch, generation=generation, reason="ForeignData", message=message)
        events.warning(body, "ForeignData", message)
        metrics.RECONCILE_ERRORS.labels("DiskArray", "ForeignData").inc()
        raise kopf.TemporaryError(message, delay=max(60.0, settings.current().retry_delay))


ROOT_MODE = 0o1777


@dataclasses.dataclass
class FormatResult:
    formatted: list[str] = dataclasses.field(default_factory=list)  # LUs mkfs ran on in this pass
    refused: list[str] = dataclasses.field(default_factory=list)  # LUs holding foreign data


async def ensure_formatted(
    parsed: da_spec.DiskArraySpec, *, nbd: str, lus: Mapping[str, arrayapi.LU], status: Mapping[str, Any],
    patch: kopf.Patch, locks: state.KeyedLocks,
) -> FormatResult:
    """Bring every file-system LU to "recorded as formatted" (``formatting`` decides each step).

    ``locks`` (``OperatorState.lu_locks``): one writer per (NBD endpoint, LU) in this process.

    ``status.fileSystems`` in the patch is rewritten after each LU, so a failure later in the
    pass still records what was done (kopf applies the patch when the handler raises too).
    """
    records = formatting.records_by_name(status)
    slots = nfsslots.assign(nfsslots.recorded(status), [f.name for f in parsed.file_systems])
    out: dict[str, dict[str, Any]] = {}
    result = FormatResult()

    def publish() -> None:
        patch.status["fileSystems"] = list(out.values())
        patch.status["fileSystemsReady"] = f"{sum(1 for r in out.values() if r['formatted'])}/{len(out)}"

    def entry(f: da_spec.FileSystem, *, formatted: bool, lu_created: str) -> dict[str, Any]:
        return {"name": f.name, "lu": naming.filesystem_lu(f.name), "size": f.size, "clusterGroup": f.cluster_group,
                "ready": formatted, "formatted": formatted, "luCreated": lu_created, "nfsSlot": slots[f.name]}

    todo: list[tuple[da_spec.FileSystem, arrayapi.LU]] = []
    for f in parsed.file_systems:
        lu = lus[naming.filesystem_lu(f.name)]
        recorded = formatting.is_recorded(records.get(f.name), lu_created=lu.created)
        out[f.name] = entry(f, formatted=recorded, lu_created=lu.created)
        if formatting.decide(recorded=recorded, probe=None) is formatting.Step.PROBE:
            todo.append((f, lu))
    publish()
    for f, lu in todo:
        async with locks.hold((nbd, lu.name)):
            head = await arrayapi.read_lu_head(nbd, lu.name, length=formatting.PROBE_SIZE)
            step = formatting.decide(recorded=False, probe=formatting.classify(head))
            if step is formatting.Step.REFUSE:
                result.refused.append(lu.name)
                continue
            if step is formatting.Step.FORMAT:
                await arrayapi.format_filesystem(nbd, lu.name, root_mode=ROOT_MODE)
                result.formatted.append(lu.name)
        out[f.name] = entry(f, formatted=True, lu_created=lu.created)
        publish()
    return result


def _not_ready(status: Mapping[str, Any], patch: kopf.Patch, *, generation: int, reason: str, message: str) -> None:
    cond = conditions.set_condition(status.get("conditions", []), type=conditions.READY, status="False",
                                    reason=reason, message=message, generation=generation)
    patch.status["conditions"] = cond
    patch.status["observedGeneration"] = generation


async def _renew_certificates(st: state.OperatorState, body: kopf.Body, *, name: str, namespace: str) -> None:
    """Every ``nbdtls.check_interval``: the array's CA and certificates renewed or rotated when
    due, and the access file checked (an Event says what changed); the operator's own trust
    follows a new CA at once."""
    key = (namespace, name)
    if time.monotonic() < st.cert_checks.get(key, 0.0):
        await st.trust(namespace, name)
        return
    st.cert_checks[key] = time.monotonic() + nbdtls.check_interval()
    done = await nbdtls.renew_array(st.kube, body, array=name, namespace=namespace,
                                    domain=settings.current().cluster_domain)
    # the access file again, from the array as it is now (a portion claimed or released
    # while an older access file was being written is not missed for long)
    async with st.claim_locks.hold((namespace, name)):
        done += await nbdtls.ensure_access(st.kube, array=name, namespace=namespace)
    await st.trust(namespace, name, force=bool(done))
    if done:
        events.normal(body, "Certificates", "; ".join(done))


#: Unchanged controller figures are written again (a fresh ``updated``) after this many seconds.
FIGURES_MAX_AGE = 60.0


@kopf.timer(*RESOURCE, interval=settings.current().status_interval, initial_delay=settings.current().status_interval)
async def refresh_figures(body: kopf.Body, name: str, namespace: str | None, status: kopf.Status, patch: kopf.Patch,
                          logger: kopf.Logger, memo: kopf.Memo, **_: Any) -> None:
    """Copy the controller's load and cache figures, the LU layout and the devices' health into the
    status (only while Ready)."""
    st = state.of(memo)
    namespace = namespace or ""
    if not conditions.is_true(status.get("conditions", []), conditions.READY):
        return
    token = st.tokens.get((namespace, name))
    if token is None:
        return
    await _renew_certificates(st, body, name=name, namespace=namespace)
    api = arrayapi.ArrayAPI(st.http, endpoints.controller_api(namespace, name), token=token)
    try:
        f, layout, answer = await asyncio.gather(api.figures(), api.layout(), api.array())
    except (arrayapi.ArrayUnavailable, arrayapi.ArrayRefused) as exc:
        logger.debug("figures of %s/%s unavailable: %s", namespace, name, exc)
        datametrics.controller_unreachable(namespace, name)
        return
    datametrics.controller_figures(namespace, name, f, lus=len(layout))
    datametrics.array_health(namespace, name, answer)
    asked = (body.metadata.get("annotations") or {}).get(naming.A_REPLACE_DEVICE)
    if asked is not None:
        await _replace_device(st, body, asked, answer, name=name, namespace=namespace)
    await _show_device_health(st, body, answer, name=name, namespace=namespace, status=status, patch=patch,
                              logger=logger)
    if status.get("lus") != layout:  # the map's LU extents, patched only when they moved
        patch.status["lus"] = layout
    figures = {
        "load": {"iops": f.iops, "readMBps": f.read_mbps, "writeMBps": f.write_mbps,
                 "queueDepth": f.queue_depth, "dirtyRatio": f.dirty_ratio},
        "cache": {"size": f.cache_size, "used": f.cache_used, "dirtyBytes": f.dirty_bytes,
                  "dirtyRatio": f.dirty_ratio, "hitRatio": f.hit_ratio},
    }
    old = status.get("controller", {})
    updated = conditions.parse_time(old.get("updated"))
    stale = updated is None or (datetime.datetime.now(datetime.UTC) - updated).total_seconds() >= FIGURES_MAX_AGE
    if stale or any(old.get(k) != v for k, v in figures.items()):  # an idle array costs no patch every interval
        patch.status["controller"] = {**figures, "updated": conditions.now_rfc3339()}


async def _replace_device(st: state.OperatorState, body: kopf.Body, asked: str, answer: Mapping[str, Any], *,
                          name: str, namespace: str) -> None:
    """The ``nasblade.io/replace-device: N`` annotation: the controller replaces failed device N
    by a new, empty one and rebuilds it online (the Events ``DeviceReplaced`` /
    ``DeviceReplaceRefused`` say which). The annotation is removed once answered either way, so
    a refused request is not retried every interval; it stays while the controller cannot be
    reached. The rebuild's progress shows in ``status.devices``."""
    why = devices.replace_refusal(asked, answer)
    admin = await st.admin_token(namespace, name) if why is None else None
    if why is None and admin is None:
        why = (f"the token Secret {naming.token_secret_name(name)} has no admin-token key (made by an older "
               "operator): add one, restart the controller pod, then annotate again")
    if why is None and admin is not None:
        api = arrayapi.ArrayAPI(st.http, endpoints.controller_api(namespace, name), token=admin)
        try:
            await api.replace_device(int(asked))
        except arrayapi.ArrayRefused as exc:
            why = f"device {asked}: the controller refused: {exc}"
        except arrayapi.ArrayUnavailable as exc:
            events.warning(body, "DeviceReplaceDeferred", f"device {asked}: the controller is unreachable ({exc})")
            return
    await st.kube.patch("DiskArray", name, {"metadata": {"annotations": {naming.A_REPLACE_DEVICE: None}}},
                        namespace=namespace)
    if why is not None:
        events.warning(body, "DeviceReplaceRefused", why)
    else:
        events.normal(body, "DeviceReplaced", f"device {asked} replaced by a new, empty one; it is rebuilt online "
                      "(status.devices shows the progress)")


async def _show_device_health(st: state.OperatorState, body: kopf.Body, answer: Mapping[str, Any], *, name: str,
                              namespace: str, status: Mapping[str, Any], patch: kopf.Patch, logger: kopf.Logger) -> None:
    """``status.redundancy``, ``status.devices`` and the ``Degraded`` condition, patched only when
    they changed; Events for the transitions (``diskarray/devices.py`` decides both).

    The conditions are one list, and this timer runs beside the reconcile handler: a list
    computed from the status this timer read would put back a ``Ready`` the handler has since
    rewritten (a spec change's new ``observedGeneration`` lost for good). So the list is
    written only against the resourceVersion it was computed from; on a conflict the next
    interval computes it again from the newer status."""
    found = devices.assess(answer, name=name, namespace=namespace, status=status,
                           generation=int(body.metadata.get("generation", 0)))
    for key, value in found.patch.items():
        if key != "conditions":
            patch.status[key] = value
    if "conditions" in found.patch:
        try:
            await st.kube.patch("DiskArray", name, {"metadata": {"resourceVersion": body.metadata.get("resourceVersion")},
                                                    "status": {"conditions": found.patch["conditions"]}},
                                namespace=namespace, subresource="status")
        except kube.KubeError as exc:
            if exc.status != 409:
                raise
            logger.debug("Degraded of %s/%s not written: the DiskArray changed meanwhile", namespace, name)
    for e in found.events:
        (events.warning if e.type == "Warning" else events.normal)(body, e.reason, e.message)


@kopf.on.delete(*RESOURCE)
async def delete(body: kopf.Body, spec: kopf.Spec, name: str, namespace: str | None, memo: kopf.Memo, **_: Any) -> None:
    """Tear down in order: ClusterGroups, controller, Service, Secret; PVCs per deletionPolicy;
    then drop the array from the operator state."""
    st = state.of(memo)
    namespace = namespace or ""
    k = st.kube
    groups = [g for g in await k.list("ClusterGroup", namespace=namespace)
              if g.get("spec", {}).get("diskArrayRef", {}).get("name") == name]
    if groups:
        for g in groups:
            if not g["metadata"].get("deletionTimestamp"):
                await k.delete("ClusterGroup", g["metadata"]["name"], namespace=namespace)
        events.normal(body, "Deleting", f"waiting for ClusterGroups {', '.join(g['metadata']['name'] for g in groups)} to go")
        raise kopf.TemporaryError("waiting for the ClusterGroups to be deleted", delay=2)
    await k.delete("Deployment", csi.name(name), namespace=namespace)  # the CSI plugin, if any, first
    await csi.forget(k, array=name, namespace=namespace)
    await k.delete("StatefulSet", naming.controller_name(name), namespace=namespace)
    await k.delete("Service", naming.controller_name(name), namespace=namespace)
    await k.delete("Secret", naming.token_secret_name(name), namespace=namespace)
    policy = spec.get("deletionPolicy", "Retain")
    count = int(spec.get("devices", {}).get("count", 0))
    pvcs = [f"dev-{i}-{naming.controller_name(name)}-0" for i in range(count)]
    if policy == "Delete":
        for pvc in pvcs:
            await k.delete("PersistentVolumeClaim", pvc, namespace=namespace)
        events.normal(body, "DataDeleted", f"deleted the device PVCs {', '.join(pvcs)}")
    else:
        events.normal(body, "DataRetained", f"kept the device PVCs {', '.join(pvcs)} (deletionPolicy Retain)")
    st.forget_array(namespace, name, uid=str(body.metadata.get("uid")))
    datametrics.forget("DiskArray", namespace, name)
