"""kopf indexes the ClusterGroup daemons read instead of asking the API server.

kopf calls these on every watch event of blade pods, NFS Services and ClusterGroups and keeps
what they return; the daemon (``daemon.py``) reads them through its ``blade_pods``,
``nfs_services`` and ``nfs_services_of_group`` keyword arguments, the DiskArray through
``diskarrays`` (declared in ``diskarray/handlers.py``). Each index function also wakes the
group the event concerns (``wakeups``, in the operator state of ``state.py``), so a daemon runs
its pass once the event is indexed. ``one`` and ``service_summary`` read and build entries.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import kopf

from nasblade_operator import naming, state

RESOURCE = (naming.GROUP, naming.VERSION, "clustergroups")


@kopf.index("pods", labels={naming.L_COMPONENT: "blade", naming.L_GROUP: kopf.PRESENT})
async def blade_pods(namespace: str | None, name: str, body: kopf.Body, labels: kopf.Labels, memo: kopf.Memo,
                     **_: Any) -> dict[tuple[str, str], dict[str, Any]]:
    """(namespace, group) -> summaries of its blade pods (what ``plan.PodObs`` needs); wakes the group."""
    namespace = namespace or ""
    state.of(memo).wakeups.wake_group(namespace, labels[naming.L_GROUP])  # runs once this event is indexed
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
            "clusterConfig": _cluster_config(body),
        }
    }


def _cluster_config(pod: Mapping[str, Any]) -> dict[str, Any] | None:
    """The blade pod's cluster configuration (its annotation, ``builders.cluster_config``), or None."""
    text = (pod.get("metadata", {}).get("annotations") or {}).get(naming.A_CLUSTER_CONFIG)
    try:
        parsed = json.loads(text) if isinstance(text, str) else None
    except ValueError:
        return None
    return parsed if isinstance(parsed, dict) else None


@kopf.index("services", labels={naming.L_COMPONENT: "nfs", naming.L_GROUP: kopf.PRESENT})
async def nfs_services(namespace: str | None, name: str, body: kopf.Body, labels: kopf.Labels, memo: kopf.Memo,
                       **_: Any) -> dict[tuple[str, str], dict[str, Any]]:
    """(namespace, Service name) -> which group, file system and blade an NFS Service has; wakes the group."""
    namespace = namespace or ""
    state.of(memo).wakeups.wake_group(namespace, labels[naming.L_GROUP])
    return {(namespace, name): service_summary(body)}


@kopf.index("services", labels={naming.L_COMPONENT: "nfs", naming.L_GROUP: kopf.PRESENT})
async def nfs_services_of_group(namespace: str | None, name: str, body: kopf.Body, labels: kopf.Labels,
                                **_: Any) -> dict[tuple[str, str], dict[str, Any]]:
    """(namespace, group) -> its NFS Services (``nfs_services`` by group: a pass reads its own, not all)."""
    return {(namespace or "", labels[naming.L_GROUP]): {**service_summary(body), "name": name}}


@kopf.index(*RESOURCE)
async def group_requests(
    namespace: str | None, name: str, meta: kopf.Meta, annotations: kopf.Annotations, status: kopf.Status,
    memo: kopf.Memo, **_: Any,
) -> dict[tuple[str, str], list[str]]:
    """(namespace, group) -> the request annotations it carries; wakes its daemon when it has one,
    so ``nasblade takeover`` and ``nasblade backup`` start at once rather than at the next deadline,
    and when its portion claim (``portions.claim``) has landed in the status, so the first blades
    start at once (``OperatorState.portions_seen``: the portion at the last event; nothing is kept
    of a group that is being deleted)."""
    st = state.of(memo)
    key = (namespace or "", name)
    asked = sorted(a for a in (naming.A_MOVE_REQUEST, naming.A_BACKUP_NOW) if a in annotations)
    portion = status.get("portion")
    deleting = bool(meta.get("deletionTimestamp"))
    if asked or (not deleting and portion is not None and st.portions_seen.get(key) != portion):
        st.wakeups.wake_group(*key)
    if deleting:
        st.portions_seen.pop(key, None)
    elif portion is not None:
        st.portions_seen[key] = portion
    return {key: asked}


def one(index: kopf.Index[Any, Any], key: tuple[str, str]) -> dict[str, Any] | None:
    """The single entry an index holds under ``key``, or None."""
    store = index.get(key)
    return next(iter(store), None) if store is not None else None


def port_targets(ports: Any) -> list[tuple[str, int, Any]]:
    """A Service's ports as sorted (protocol, port, target port) triples, to compare."""
    return sorted((str(p.get("protocol", "TCP")), int(p.get("port", 0)), p.get("targetPort"))
                  for p in ports or [] if isinstance(p, Mapping))


def service_summary(svc: Mapping[str, Any]) -> dict[str, Any]:
    """What the NFS Service indexes keep of a Service: group, array, file system, selected
    blade, owner uid and its ports (``port_targets``)."""
    labels = svc.get("metadata", {}).get("labels", {}) or {}
    owners = svc.get("metadata", {}).get("ownerReferences", []) or []
    return {
        "group": labels.get(naming.L_GROUP, ""),
        "array": labels.get(naming.L_ARRAY, ""),
        "fs": labels.get(naming.L_FILESYSTEM, ""),
        "blade": (svc.get("spec", {}).get("selector") or {}).get(naming.L_BLADE, ""),
        "owner": owners[0].get("uid") if owners else None,
        "targets": port_targets(svc.get("spec", {}).get("ports")),
    }
