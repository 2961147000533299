"""A ClusterGroup's portion of its DiskArray's processor-information areas: claim and release.

The claim is a record ``{index, group, activeArea}`` in the DiskArray's ``status.portions``,
written with the DiskArray's ``resourceVersion`` (optimistic lock: a conflict raises
``kopf.TemporaryError`` and kopf retries). ``handlers.reconcile`` claims (one claim per array
at a time in this process, ``OperatorState.claim_locks``) and records the index in the group's
``status.portion``; ``handlers.delete`` releases. ``diskarray/areas.py`` mirrors the
``activeArea`` of each record afterwards. Each claim and release rewrites the array's access
file (``nbdtls.ensure_access``): a group's blades reach only their own portion.
"""

from __future__ import annotations

import kopf

from nasblade_operator import events, kube, nbdtls, settings, state


async def claim(st: state.OperatorState, body: kopf.Body, *, name: str, namespace: str, array: str) -> int:
    """Record (group -> lowest free portion index) in the DiskArray status; the group's own
    record if it has one already."""
    async with st.claim_locks.hold((namespace, array)):
        return await _claim(st.kube, body, name=name, namespace=namespace, array=array)


async def _claim(k: kube.Kube, body: kopf.Body, *, name: str, namespace: str, array: str) -> int:
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
    # the group's blades reach only this portion of procinfo and backup (the access file)
    await nbdtls.ensure_access(k, array=array, namespace=namespace)
    return free[0]


async def release(st: state.OperatorState, *, name: str, namespace: str, array: str) -> None:
    """Remove the group's record from the DiskArray status (nothing to do if the array is going)."""
    async with st.claim_locks.hold((namespace, array)):
        await _release(st.kube, name=name, namespace=namespace, array=array)


async def _release(k: kube.Kube, *, name: str, namespace: str, array: str) -> None:
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
            await nbdtls.ensure_access(k, array=array, namespace=namespace)
            return
        except kube.KubeError as exc:
            if exc.status != 409:
                raise
    raise kopf.TemporaryError("could not release the portion (conflicts)", delay=1)
