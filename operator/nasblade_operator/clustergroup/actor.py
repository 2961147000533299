"""Carries out a ClusterGroup plan: blade pods, file-system moves, NFS Services.

``plan.py`` decides the actions; ``daemon.py`` hands each to ``Actor.do`` in order and then
calls ``sync_services``. A move is ``bladeapi.release`` on the owner (unless it failed),
``bladeapi.takeover`` on the target, and the NFS Service's selector patched to the target;
pods come from ``builders.blade_pod``. Every action posts its Event (``events``) and counts in
``metrics``; the blade pods the actor replaces and deletes are noted in the group's ``Runtime``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import kopf

from nasblade_operator import (
    bladeapi,
    conditions,
    endpoints,
    events,
    metrics,
    naming,
    nbdtls,
    settings,
    state,
)
from nasblade_operator.clustergroup import builders, indexes
from nasblade_operator.clustergroup import plan as planner
from nasblade_operator.clustergroup import spec as cg_spec
from nasblade_operator.clustergroup.runtime import Runtime
from nasblade_operator.diskarray import spec as da_spec


class Actor:
    """Carries out ``plan`` actions for one pass; each is one or two API calls and an Event."""

    def __init__(
        self, st: state.OperatorState, body: kopf.Body, *, name: str, namespace: str, spec: cg_spec.ClusterGroupSpec,
        da: da_spec.DiskArraySpec, summaries: Mapping[int, Mapping[str, Any]], rt: Runtime, down_for: Mapping[str, float],
    ) -> None:
        self.st, self.body, self.name, self.namespace, self.spec, self.da = st, body, name, namespace, spec, da
        self.down_for = down_for  # blade -> seconds since its pod's Ready condition went False
        self.by_name = {s["name"]: s for s in summaries.values()}
        self.rt = rt
        self.created: dict[str, list[str]] = {}  # Event reason -> blade pods created in this pass

    async def do(self, action: planner.Action, *, file_systems: tuple[da_spec.FileSystem, ...],
                 slots: Mapping[str, int]) -> dict[str, Any] | None:
        """Carry out one action; a move returns its ``status.failovers`` record."""
        if isinstance(action, planner.CreatePod):
            await self._create_pod(action.index, file_systems=file_systems, slots=slots)
            return None
        if isinstance(action, planner.DeletePod):
            await self._delete_pod(action)
            return None
        return await self._move(action)

    def post_created(self) -> None:
        """One Event per kind for the blade pods this pass created (a new group makes all at once)."""
        for reason, pods in self.created.items():
            names = ", ".join(pods)
            events.normal(self.body, reason, f"blade pod{'s' if len(pods) > 1 else ''} {names} (software {self.da.software_version})")
        self.created.clear()

    async def _create_pod(self, index: int, *, file_systems: tuple[da_spec.FileSystem, ...],
                          slots: Mapping[str, int]) -> None:
        pod = builders.blade_pod(
            group=self.name, namespace=self.namespace, index=index, spec=self.spec,
            portion=int(self.body["status"]["portion"]), portion_size=self.da.areas.portion_size,
            version=self.da.software_version, image=settings.current().image, file_systems=file_systems,
            slots=slots, defaults=settings.current().pod_defaults,
        )
        kopf.adopt(pod, owner=self.body)
        # its own certificate (NBD client of its group's LUs, server of its HTTPS API); a pod
        # created before the Secret waits in ContainerCreating until it exists
        await nbdtls.ensure_blade(self.st.kube, self.body, array=self.spec.disk_array, group=self.name,
                                  blade=pod["metadata"]["name"], namespace=self.namespace)
        # its group's control-API credential (the array's control token stays with the operator)
        await nbdtls.ensure_group_token(self.st.kube, self.body, array=self.spec.disk_array, group=self.name,
                                        namespace=self.namespace,
                                        control_token=await self.st.token(self.namespace, self.spec.disk_array))
        _, created = await self.st.kube.create(pod)
        if created:
            # a new pod has never been Ready, whatever its predecessor of the same name did: a
            # pod deleted behind the operator's back (kubectl delete, a drain, a lost node) left
            # its name in seen_ready, and the replacement counted as a blade that had run and
            # gone not-Ready -- Failed after failureTimeout of starting, deleted, made again...
            self.rt.seen_ready.discard(pod["metadata"]["name"])
            self.rt.heartbeats.pop(pod["metadata"]["name"], None)
            self.rt.failed.discard(pod["metadata"]["name"])
            replaced = pod["metadata"]["name"] in self.rt.replacing
            self.rt.replacing.discard(pod["metadata"]["name"])
            self.created.setdefault("BladeReplaced" if replaced else "BladeCreated", []).append(pod["metadata"]["name"])

    async def _delete_pod(self, action: planner.DeletePod) -> None:
        await self.st.kube.delete("Pod", action.name, namespace=self.namespace)
        self.rt.heartbeats.pop(action.name, None)
        self.rt.failed.discard(action.name)  # its replacement has the same name
        self.rt.seen_ready.discard(action.name)
        if action.reason == "Failed":
            self.rt.replacing.add(action.name)
            events.warning(self.body, "BladeFailed", f"blade {action.name} failed; replacing its pod")
        elif action.reason == "Upgrade":
            events.normal(self.body, "Upgrading", f"blade {action.name} restarts on software {self.da.software_version}")
        else:
            await nbdtls.forget_blade(self.st.kube, array=self.spec.disk_array, blade=action.name,
                                      namespace=self.namespace)
            events.normal(self.body, "ScaledDown", f"removed blade {action.name}")

    async def _move(self, m: planner.MoveFileSystem) -> dict[str, Any]:
        t0 = time.monotonic()
        if m.reason == "Failover":  # measured from the failure: the pod's Ready transition, or when we saw it go
            t0 = min(self.rt.first_bad.get(m.source, t0), t0 - self.down_for.get(m.source, 0.0))
        await self.st.trust(self.namespace, self.spec.disk_array)
        token = await self.st.operator_token(self.namespace, self.spec.disk_array)  # the blades' APIs
        http = self.st.http
        source = self._endpoint(m.source) if m.reason != "Failover" else None
        if source is not None:
            await bladeapi.release(http, source, m.fs, blade=m.source, token=token)
        try:
            target = self._endpoint(m.target)
            if target is None:
                raise bladeapi.BladeUnavailable(f"blade {m.target} has no address yet")
            await bladeapi.takeover(http, target, m.fs, blade=m.target, token=token)
        except bladeapi.BladeUnavailable:
            if source is not None:  # a hand-over that failed half-way: the owner serves it again
                await bladeapi.takeover(http, source, m.fs, blade=m.source, token=token)
            raise
        await self.st.kube.patch(
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


async def sync_services(
    st: state.OperatorState, body: kopf.Body, *, name: str, namespace: str, array: str, owners: Mapping[str, str],
    slots: Mapping[str, int], services: kopf.Index[Any, Any], group_services: kopf.Index[Any, Any],
) -> None:
    """One NFS Service per file system, selecting its owner and mapping the standard ports onto
    its NFS slot's (``slots``); none for this group's file systems gone.

    ``services`` (the ``nfs_services`` index) is what exists, ``group_services``
    (``nfs_services_of_group``) the same by group. A Service another group left behind (its
    file system moved here) is taken over: relabelled, re-owned, re-selected; one made before
    file systems had slots gets its slot's target ports.
    """
    k = st.kube
    for fs, blade in owners.items():
        if fs not in slots:
            continue  # not given to blades yet (diskarray.nfsslots)
        svc_name = naming.nfs_service_name(array, fs)
        svc = builders.nfs_service(array=array, group=name, fs=fs, blade=blade, slot=slots[fs])
        have = indexes.one(services, (namespace, svc_name))
        if have is None:
            kopf.adopt(svc, owner=body)
            existing, created = await k.create(svc)
            if created:
                continue
            have = indexes.service_summary(existing)
        if (have["group"] != name or have["blade"] != blade or have["owner"] != body.metadata.get("uid")
                or have["targets"] != indexes.port_targets(svc["spec"]["ports"])):
            kopf.adopt(svc, owner=body)
            await k.patch("Service", svc_name, {"metadata": {"labels": svc["metadata"]["labels"],
                                                             "ownerReferences": svc["metadata"]["ownerReferences"]},
                                                "spec": {"selector": svc["spec"]["selector"],
                                                         "ports": svc["spec"]["ports"]}}, namespace=namespace)
    for have in list(group_services.get((namespace, name), [])):
        if have["array"] == array and have["fs"] not in owners:
            await k.delete("Service", have["name"], namespace=namespace)
