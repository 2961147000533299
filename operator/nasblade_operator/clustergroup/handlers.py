"""kopf handlers of ClusterGroup: what kopf calls, each short; the work is in the modules below.

- ``reconcile`` (create, update of ``spec``, resume): validate the spec, check the DiskArray
  (from the ``diskarrays`` index of ``diskarray/handlers.py``), claim a portion
  (``portions.py``) and wake the daemon;
- ``run_group`` (one kopf daemon per group): ``daemon.py`` keeps the blades, NFS Services,
  failover, give-back, planned moves, rollout and backups going (with ``plan.py`` deciding,
  ``actor.py`` and ``backups.py`` acting, ``status.py`` building the status);
- ``delete``: refuse while the group serves a live DiskArray's file systems; else remove its
  pods and Services, release the portion and drop the group from the operator state.

The indexes these handlers and the daemon read are declared in ``indexes.py`` (imported here,
so loading this module registers them too). Every handler gets the operator state
(``state.py``) from kopf's ``memo``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import kopf

from nasblade_operator import (
    conditions,
    datametrics,
    events,
    metrics,
    naming,
    nbdtls,
    settings,
    state,
)
from nasblade_operator.clustergroup import builders, daemon, indexes, portions
from nasblade_operator.clustergroup import spec as cg_spec
from nasblade_operator.validation import InvalidSpec

RESOURCE = indexes.RESOURCE


@kopf.on.resume(*RESOURCE)
@kopf.on.create(*RESOURCE)
@kopf.on.update(*RESOURCE, field="spec")
async def reconcile(
    body: kopf.Body, spec: kopf.Spec, name: str, namespace: str | None, status: kopf.Status, patch: kopf.Patch,
    memo: kopf.Memo, **kwargs: Any,
) -> None:
    """Validate the spec, check the DiskArray, claim a portion; the daemon does the rest."""
    st = state.of(memo)
    namespace = namespace or ""
    metrics.RECONCILES.labels("ClusterGroup").inc()
    generation = int(body.metadata.get("generation", 0))
    try:
        parsed = cg_spec.parse(spec, name=name)
    except InvalidSpec as exc:
        _refuse(status, patch, generation=generation, reason="InvalidSpec", message=str(exc))
        events.warning(body, "InvalidSpec", f"fix the spec: {exc}")
        raise kopf.PermanentError(f"invalid spec: {exc}") from None
    array = indexes.one(kwargs["diskarrays"], (namespace, parsed.disk_array))
    if array is None or array["deleting"]:
        message = f"DiskArray {parsed.disk_array!r} does not exist in namespace {namespace}; create it or fix spec.diskArrayRef.name"
        _refuse(status, patch, generation=generation, reason="DiskArrayMissing", message=message)
        retry = int(kwargs.get("retry", 0))
        if retry % 10 == 0:  # not an Event on every retry
            events.warning(body, "DiskArrayMissing", message)
        raise kopf.TemporaryError(message, delay=min(60.0, settings.current().retry_delay * 2 ** min(retry, 2)))
    if status.get("portion") is None:
        patch.status["portion"] = await portions.claim(st, body, name=name, namespace=namespace, array=parsed.disk_array)
    else:  # spec.backup.targets may have changed: the array's access file follows (nbdtls.array_access)
        async with st.claim_locks.hold((namespace, parsed.disk_array)):
            await nbdtls.ensure_access(st.kube, array=parsed.disk_array, namespace=namespace)
    patch.status["activeArea"] = status.get("activeArea", "portion")
    st.wakeups.wake_group(namespace, name)


def _refuse(status: Mapping[str, Any], patch: kopf.Patch, *, generation: int, reason: str, message: str) -> None:
    metrics.RECONCILE_ERRORS.labels("ClusterGroup", reason).inc()
    patch.status["conditions"] = conditions.set_condition(
        status.get("conditions", []), type=conditions.READY, status="False", reason=reason, message=message,
        generation=generation,
    )
    patch.status["observedGeneration"] = generation


@kopf.on.delete(*RESOURCE)
async def delete(body: kopf.Body, spec: kopf.Spec, name: str, namespace: str | None, memo: kopf.Memo, **kwargs: Any) -> None:
    """Refuse while the group serves file systems of a live DiskArray; else remove its objects."""
    st = state.of(memo)
    namespace = namespace or ""
    array_name = str(spec.get("diskArrayRef", {}).get("name", ""))
    array = indexes.one(kwargs["diskarrays"], (namespace, array_name))
    if array is not None and not array["deleting"]:
        serving = [f.get("name") for f in array["spec"].get("fileSystems", []) if f.get("clusterGroup") == name]
        if serving:
            message = (f"still serves file systems {', '.join(serving)} of DiskArray {array_name}: move them to another "
                       "ClusterGroup (spec.fileSystems[].clusterGroup) or delete the DiskArray")
            events.warning(body, "DeletionBlocked", message)
            raise kopf.TemporaryError(message, delay=settings.current().retry_delay)
    events.normal(body, "Deleting", "removing the blades and NFS Services")
    for kind, selector in (("Pod", builders.group_selector(name)), ("Service", {naming.L_GROUP: name, naming.L_COMPONENT: "nfs"})):
        for obj in await st.kube.list(kind, namespace=namespace, selector=selector):
            await st.kube.delete(kind, obj["metadata"]["name"], namespace=namespace)
    await portions.release(st, name=name, namespace=namespace, array=array_name)
    st.forget_group(namespace, name)
    datametrics.forget("ClusterGroup", namespace, name)


# Asked to stop, a daemon finishes its pass (up to 30 s: a pass under a slow API server may take
# seconds) before kopf cancels it; without a backoff kopf would cancel at once, mid-pass.
@kopf.daemon(*RESOURCE, cancellation_backoff=30.0, cancellation_timeout=5.0)
async def run_group(
    body: kopf.Body, name: str, namespace: str | None, stopped: kopf.DaemonStopped, logger: kopf.Logger,
    memo: kopf.Memo, **kwargs: Any,
) -> None:
    """Observe -> plan -> act, on every relevant event and whenever a deadline comes up (``daemon.run``)."""
    ix = daemon.Indexes(pods=kwargs["blade_pods"], arrays=kwargs["diskarrays"], services=kwargs["nfs_services"],
                        group_services=kwargs["nfs_services_of_group"])
    await daemon.run(state.of(memo), body, name=name, namespace=namespace or "", stopped=stopped, logger=logger, ix=ix)
