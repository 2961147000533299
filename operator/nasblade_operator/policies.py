"""NetworkPolicies and the PodDisruptionBudget the operator keeps next to an array's pods.

Built as plain dicts (pure, like the builders) and kept by ``ensure`` (create, or patch the
spec when it differs: a group's exports can change).

Per DiskArray (``NASBLADE_NETWORK_POLICIES=true``, chart value ``networkPolicy.enabled``):

* ``<array>-default-deny``: every pod labelled with the array (controller, blades) accepts no
  traffic but what the policies below allow;
* ``<controller>``: the controller's control API and NBD ports accept the blades of this array
  and the operator (which formats file systems over NBD); the control API (``GET /v1/metrics``)
  also accepts the metrics scraper, when one is configured.

Per ClusterGroup (same switch):

* ``<group>-blades``: the blade API accepts the operator and the group's own blades; the NFS
  ports (nfs, mountd, portmapper over TCP; mountd, portmapper, NLM/NSM over UDP) accept the
  CIDRs the group's exports name (``ipBlock``; a
  file system without exports admits nobody); the blade API (``GET /v1/metrics``) also accepts
  the metrics scraper, when one is configured.

The metrics scraper is ``settings.OperatorConfig.metrics_scraper`` (``NASBLADE_METRICS_SCRAPER``,
chart value ``metrics.scraper``): a NetworkPolicy peer, None for no scrape access. It reaches the
API port only -- never NBD or NFS -- and still needs the array's token to read anything.

And, independent of the switch, ``<group>-blades`` PodDisruptionBudget (``spec.blades.
disruptionBudget``, default true): ``minAvailable`` all blades but one, so a drain evicts
one blade of the group at a time and always leaves a survivor to take the evicted blade's
file systems over.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

import kopf

from nasblade_operator import kube, naming, settings

NAMESPACE_LABEL = "kubernetes.io/metadata.name"


def _meta(name: str, labels: Mapping[str, str]) -> dict[str, Any]:
    return {"name": name, "labels": dict(labels)}


def operator_peer(namespace: str, labels: Mapping[str, str]) -> dict[str, Any]:
    """The operator's pods, as a NetworkPolicy peer (its namespace and pod labels)."""
    peer: dict[str, Any] = {"podSelector": {"matchLabels": dict(labels)}}
    if namespace:
        peer["namespaceSelector"] = {"matchLabels": {NAMESPACE_LABEL: namespace}}
    return peer


def scrape_rule(scraper: Mapping[str, Any] | None, port: int) -> list[dict[str, Any]]:
    """The ingress rule letting ``scraper`` (a peer, None: nobody) reach ``port``, as a list of
    zero or one rule to splice into a policy's ``ingress``."""
    if not scraper:
        return []
    return [{"from": [copy.deepcopy(dict(scraper))], "ports": [{"protocol": "TCP", "port": port}]}]


def array_policies(
    array: str, *, operator_namespace: str, operator_labels: Mapping[str, str],
    scraper: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """The default-deny policy of the array's pods and the controller's policy."""
    labels = {**naming.common_labels(component="controller", instance=array), naming.L_ARRAY: array}
    blades = {"podSelector": {"matchLabels": {naming.L_ARRAY: array, naming.L_COMPONENT: "blade"}}}
    operator = operator_peer(operator_namespace, operator_labels)
    # the array's CSI controller plugin (spec.csi), when it runs: snapshots, clones, growing
    csi = {"podSelector": {"matchLabels": {naming.L_ARRAY: array, naming.L_COMPONENT: naming.CSI_COMPONENT}}}
    tcp = [{"protocol": "TCP", "port": p} for p in (naming.CONTROL_PORT, naming.NBD_PORT)]
    return [
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": _meta(f"{array}-default-deny", labels),
            "spec": {"podSelector": {"matchLabels": {naming.L_ARRAY: array}}, "policyTypes": ["Ingress"]},
        },
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": _meta(naming.controller_name(array), labels),
            "spec": {
                "podSelector": {"matchLabels": {naming.L_ARRAY: array, naming.L_COMPONENT: "controller"}},
                "policyTypes": ["Ingress"],
                "ingress": [
                    {"from": [blades, csi, operator], "ports": tcp},
                    *scrape_rule(scraper, naming.CONTROL_PORT),
                ],
            },
        },
    ]


def nfs_clients(exports: Sequence[Sequence[str]]) -> list[str]:
    """The distinct client CIDRs of a group's exports, in order."""
    seen: list[str] = []
    for clients in exports:
        for c in clients:
            if c not in seen:
                seen.append(c)
    return seen


def blade_policy(
    *, array: str, group: str, clients: Sequence[str], operator_namespace: str, operator_labels: Mapping[str, str],
    nfs_slots: Sequence[int], scraper: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The blades' policy: blade API from the operator, the group, the array's CSI controller
    plugin and the scraper, NFS from the
    exports' CIDRs to the container ports of the group's file systems' ``nfs_slots``
    (``naming.nfs_container_ports``)."""
    selector = {naming.L_GROUP: group, naming.L_COMPONENT: "blade"}
    labels = {**naming.common_labels(component="blade", instance=group), naming.L_ARRAY: array,
              naming.L_GROUP: group}
    # the array's CSI controller plugin makes directory volumes through the blade API (with the
    # group's token, which opens those routes alone)
    csi = {"podSelector": {"matchLabels": {naming.L_ARRAY: array, naming.L_COMPONENT: naming.CSI_COMPONENT}}}
    ingress: list[dict[str, Any]] = [
        {"from": [operator_peer(operator_namespace, operator_labels), {"podSelector": {"matchLabels": selector}}, csi],
         "ports": [{"protocol": "TCP", "port": naming.BLADE_API_PORT}]},
        *scrape_rule(scraper, naming.BLADE_API_PORT),
    ]
    if clients and nfs_slots:  # (an empty port list would open every port)
        ingress.append({
            "from": [{"ipBlock": {"cidr": c}} for c in clients],
            "ports": [{"protocol": proto, "port": port} for slot in nfs_slots
                      for proto in ("TCP", "UDP") for port in naming.nfs_container_ports(slot)],
        })
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _meta(f"{group}-blades", labels),
        "spec": {"podSelector": {"matchLabels": selector}, "policyTypes": ["Ingress"], "ingress": ingress},
    }


def disruption_budget(*, array: str, group: str, blades: int) -> dict[str, Any]:
    """At most one of the ``blades`` of ``group`` down through voluntary disruptions (drain,
    eviction). An integer ``minAvailable``, not ``maxUnavailable: 1``: the disruption
    controller resolves ``maxUnavailable`` through the pods' controller's scale subresource,
    which a ClusterGroup does not have, and would then allow no eviction at all."""
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _meta(f"{group}-blades", {**naming.common_labels(component="blade", instance=group),
                                              naming.L_ARRAY: array, naming.L_GROUP: group}),
        "spec": {"minAvailable": max(blades - 1, 0),
                 "selector": {"matchLabels": {naming.L_GROUP: group, naming.L_COMPONENT: "blade"}}},
    }


async def ensure(k: kube.Kube, body: kopf.Body, objs: Sequence[dict[str, Any]], *, namespace: str) -> list[str]:
    """Create each of ``objs`` (owned by ``body``), or patch its spec when it differs.
    Returns "Kind name" of those created or changed."""
    changed: list[str] = []
    for obj in objs:
        kopf.adopt(obj, owner=body)
        existing, created = await k.create(obj)
        name = f"{obj['kind']} {obj['metadata']['name']}"
        if created:
            changed.append(name)
        elif existing.get("spec") != obj["spec"] and not _contains(existing.get("spec", {}), obj["spec"]):
            await k.patch(obj["kind"], obj["metadata"]["name"], {"spec": obj["spec"]}, namespace=namespace)
            changed.append(name)
    return changed


def _contains(have: Any, want: Any) -> bool:
    """Whether ``have`` holds everything ``want`` says (the API server adds defaults)."""
    if isinstance(want, Mapping):
        return isinstance(have, Mapping) and all(k in have and _contains(have[k], v) for k, v in want.items())
    if isinstance(want, list):
        return isinstance(have, list) and len(have) == len(want) and all(
            _contains(h, w) for h, w in zip(have, want, strict=True))
    return bool(have == want)


#: owner uid -> digest of the objects last ensured for it (a pass that changes nothing costs
#: no request; a restarted operator ensures once).
_ENSURED: dict[str, str] = {}


async def sync_array(k: kube.Kube, body: kopf.Body, *, array: str, namespace: str) -> list[str]:
    """The array's NetworkPolicies, when the operator is configured to make them."""
    cfg = settings.current()
    if not cfg.network_policies:
        return []
    objs = array_policies(array, operator_namespace=cfg.operator_namespace, operator_labels=cfg.operator_labels,
                          scraper=cfg.metrics_scraper)
    return await _sync(k, body, objs, namespace=namespace)


async def sync_group(
    k: kube.Kube, body: kopf.Body, *, array: str, group: str, namespace: str, disruption_budget_on: bool,
    blades: int, exports: Sequence[Sequence[str]], nfs_slots: Sequence[int],
) -> list[str]:
    """The group's PodDisruptionBudget and, when configured, its blades' NetworkPolicy (NFS open
    on the ports of ``nfs_slots``, those of its file systems)."""
    cfg = settings.current()
    objs: list[dict[str, Any]] = []
    if disruption_budget_on:
        objs.append(disruption_budget(array=array, group=group, blades=blades))
    if cfg.network_policies:
        objs.append(blade_policy(array=array, group=group, clients=nfs_clients(exports), nfs_slots=nfs_slots,
                                 operator_namespace=cfg.operator_namespace, operator_labels=cfg.operator_labels,
                                 scraper=cfg.metrics_scraper))
    return await _sync(k, body, objs, namespace=namespace)


async def _sync(k: kube.Kube, body: kopf.Body, objs: list[dict[str, Any]], *, namespace: str) -> list[str]:
    uid = str(body.metadata.get("uid"))
    digest = hashlib.sha256(json.dumps(objs, sort_keys=True).encode()).hexdigest()
    if _ENSURED.get(uid) == digest:
        return []
    changed = await ensure(k, body, objs, namespace=namespace)
    _ENSURED[uid] = digest
    return changed
