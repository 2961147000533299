"""What every pod the operator makes shares: placement, pulling, hardening.

The controller StatefulSet (``diskarray/builders.py``) and the blade pods
(``clustergroup/builders.py``) are built as plain dicts; ``finish`` then adds, in one place:

* placement from the resource's spec (``Placement``: nodeSelector, tolerations,
  priorityClassName; for blades also how the group's blades spread over nodes);
* the image pull policy, pull secrets and log format the operator was installed with
  (``PodDefaults`` from ``settings.OperatorConfig``: chart values ``image.pullPolicy``,
  ``imagePullSecrets``, ``logFormat``);
* hardening: no ServiceAccount token (no controller or blade daemon talks to the Kubernetes API),
  read-only root file systems with a small writable ``/tmp`` per container, non-root, every
  capability dropped, no privilege escalation, seccomp ``RuntimeDefault``;
* default resource requests and limits for containers whose spec gives none (``api_access``
  gives the credentials to the containers of a pod that do talk to the API server).

Pure functions: the same input gives the same pod (the StatefulSet's template digest depends
on it). docs/operator.md ("Placement", "Pod hardening") describes the fields.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from nasblade_operator import validation

Spread = Literal["Preferred", "Required", "None"]
Role = Literal["controller", "csi", "blades"]
"""Which installation defaults a pod takes: the CSI controller plugin is placed like its array's
controller but keeps its own small requests (the controller's are sized for its cache)."""
SPREADS: tuple[Spread, ...] = ("Preferred", "Required", "None")
PULL_POLICIES = ("Always", "IfNotPresent", "Never")
HOSTNAME = "kubernetes.io/hostname"
TMP_DIR = "/tmp"
#: uid/gid of the image's nasblade user (Dockerfile).
NASBLADE_UID = 10001
#: Requests of a container whose spec sets no resources: enough to be Burstable (not the first
#: evicted), small enough for a one-node test cluster.
DEFAULT_REQUESTS = {"cpu": "25m", "memory": "64Mi"}
#: Limits of a container whose spec and installation set no resources, by role: caps that stop
#: a runaway process from taking a node, set well above what the bench runs measure (a blade's
#: file processor 140-240 MiB with its 128 MiB read cache, its block processor 70-140 MiB; a CSI
#: plugin's containers under 100 MiB; docs/performance.md), so they are not a tuning knob. CPU
#: caps are whole cores: CFS throttling below what a role uses in a burst adds NFS and NBD
#: latency. The controller's memory cap is its cache and 1 GiB more (its builder sets it).
DEFAULT_LIMITS: Mapping[str, Mapping[str, str]] = {
    "blades": {"cpu": "2", "memory": "1Gi"},
    "controller": {"cpu": "4", "memory": "1Gi"},
    "csi": {"cpu": "1", "memory": "512Mi"},
}
#: Where client-go and pykube read a pod's ServiceAccount credentials.
API_ACCESS_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


@dataclasses.dataclass(frozen=True)
class Placement:
    node_selector: Mapping[str, str] = dataclasses.field(default_factory=dict)
    tolerations: tuple[Mapping[str, Any], ...] = ()
    priority_class_name: str = ""
    spread: Spread = "Preferred"


DEFAULT_PLACEMENT = Placement()


@dataclasses.dataclass(frozen=True)
class RoleDefaults:
    """The installation's defaults for one kind of pod (the chart's ``podDefaults.controller``
    or ``.blades``): each field is used where the resource's spec leaves it empty."""

    placement: Placement = DEFAULT_PLACEMENT
    #: a container's ``resources`` (requests / limits) when its spec sets none
    resources: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class PodDefaults:
    """What every pod gets from the operator's installation (settings.OperatorConfig)."""

    pull_policy: str = "IfNotPresent"
    pull_secrets: tuple[str, ...] = ()
    #: ``nasblade.logformat``: ``json`` reaches the containers as NASBLADE_LOG_FORMAT
    log_format: str = "text"
    controller: RoleDefaults = RoleDefaults()  # controller pods and the CSI controller plugin
    blades: RoleDefaults = RoleDefaults()


DEFAULTS = PodDefaults()
RESOURCE_KEYS = ("requests", "limits")


def parse_role_defaults(c: validation.Collector, path: str, section: Any) -> RoleDefaults:
    """``podDefaults.controller`` / ``.blades`` of the chart (``NASBLADE_POD_DEFAULTS``)."""
    if not isinstance(section, Mapping):
        c.add(path, "must be a map (nodeSelector, tolerations, priorityClassName, resources)")
        return RoleDefaults()
    unknown = set(section) - {"nodeSelector", "tolerations", "priorityClassName", "resources"}
    if unknown:
        c.add(path, f"unknown field(s) {', '.join(sorted(unknown))}")
    resources = section.get("resources") or {}
    if not isinstance(resources, Mapping) or not set(resources) <= set(RESOURCE_KEYS):
        c.add(f"{path}.resources", "must be a map with requests and/or limits")
        resources = {}
    for key, amounts in resources.items():
        if not isinstance(amounts, Mapping):
            c.add(f"{path}.resources.{key}", "must be a map of resource name to quantity")
            continue
        for name, amount in amounts.items():
            c.quantity(f"{path}.resources.{key}.{name}", str(amount))
    return RoleDefaults(placement=parse_placement(c, path, section, spread=False),
                        resources={k: dict(v) for k, v in resources.items() if isinstance(v, Mapping)})


def with_defaults(placement: Placement, d: RoleDefaults) -> Placement:
    """``placement`` (from a resource's spec) with its empty fields taken from ``d``."""
    return dataclasses.replace(
        placement, node_selector=placement.node_selector or d.placement.node_selector,
        tolerations=placement.tolerations or d.placement.tolerations,
        priority_class_name=placement.priority_class_name or d.placement.priority_class_name)


def parse_placement(c: validation.Collector, path: str, section: Mapping[str, Any], *, spread: bool) -> Placement:
    """The placement fields of ``section`` (``spec.controller`` or ``spec.blades``)."""
    selector_in = section.get("nodeSelector") or {}
    selector: dict[str, str] = {}
    if not isinstance(selector_in, Mapping):
        c.add(f"{path}.nodeSelector", "must be a map of node label to value")
    else:
        for k, v in selector_in.items():
            if not isinstance(v, str):
                c.add(f"{path}.nodeSelector.{k}", "must be a string")
            else:
                selector[str(k)] = v
    tol_in = section.get("tolerations") or []
    tolerations: list[Mapping[str, Any]] = []
    if not isinstance(tol_in, list):
        c.add(f"{path}.tolerations", "must be a list of tolerations")
    else:
        for i, t in enumerate(tol_in):
            if not isinstance(t, Mapping):
                c.add(f"{path}.tolerations[{i}]", "must be a toleration (key, operator, value, effect)")
            else:
                tolerations.append(dict(t))
    priority = section.get("priorityClassName") or ""
    if not isinstance(priority, str):
        c.add(f"{path}.priorityClassName", "must be the name of a PriorityClass")
        priority = ""
    how: Spread = "Preferred"
    if spread:
        chosen = c.choice(f"{path}.spread", section.get("spread", "Preferred"), SPREADS)
        how = "Required" if chosen == "Required" else "None" if chosen == "None" else "Preferred"
    return Placement(node_selector=selector, tolerations=tuple(tolerations),
                     priority_class_name=priority, spread=how)


def spread_rules(placement: Placement, selector: Mapping[str, str]) -> dict[str, Any]:
    """Pod-spec fields that keep pods matching ``selector`` on different nodes.

    ``Preferred``: a preferred pod anti-affinity on the node name plus a topology spread over
    zones that never blocks scheduling -- a one-node cluster still runs every blade.
    ``Required``: a required anti-affinity -- a blade stays Pending rather than share a node.
    """
    if placement.spread == "None":
        return {}
    term = {"labelSelector": {"matchLabels": dict(selector)}, "topologyKey": HOSTNAME}
    if placement.spread == "Required":
        return {"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [term]}}}
    return {
        "affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": 100, "podAffinityTerm": term}]}},
        "topologySpreadConstraints": [{
            "maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone",
            "whenUnsatisfiable": "ScheduleAnyway", "labelSelector": {"matchLabels": dict(selector)},
        }],
    }


def finish(
    pod_spec: dict[str, Any], *, placement: Placement, defaults: PodDefaults, role: Role,
    spread_selector: Mapping[str, str] | None = None, tmp_size: str = "64Mi",
) -> dict[str, Any]:
    """Add placement, pulling, log format and hardening to ``pod_spec`` (changed in place and
    returned); what the spec leaves empty comes from the installation's defaults for ``role``."""
    role_defaults = defaults.blades if role == "blades" else defaults.controller
    placement = with_defaults(placement, role_defaults)
    default_resources = role_defaults.resources if role != "csi" else {}
    if placement.node_selector:
        pod_spec["nodeSelector"] = dict(placement.node_selector)
    if placement.tolerations:
        pod_spec["tolerations"] = [dict(t) for t in placement.tolerations]
    if placement.priority_class_name:
        pod_spec["priorityClassName"] = placement.priority_class_name
    if spread_selector is not None:
        pod_spec.update(spread_rules(placement, spread_selector))
    if defaults.pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": s} for s in defaults.pull_secrets]
    pod_spec["automountServiceAccountToken"] = False
    pod_spec["enableServiceLinks"] = False
    psc = pod_spec.setdefault("securityContext", {})
    # fsGroup: Secret volumes (token, NBD TLS keys: mode 0400) become readable by the
    # nasblade user through their group; without it they are root's and the daemons cannot
    # read their credentials
    psc.update({"runAsNonRoot": True, "runAsUser": NASBLADE_UID, "runAsGroup": NASBLADE_UID,
                "fsGroup": NASBLADE_UID, "seccompProfile": {"type": "RuntimeDefault"}})
    volumes: list[dict[str, Any]] = pod_spec.setdefault("volumes", [])
    for c in _containers(pod_spec):
        c["imagePullPolicy"] = defaults.pull_policy
        if defaults.log_format != "text":
            c.setdefault("env", []).append({"name": "NASBLADE_LOG_FORMAT", "value": defaults.log_format})
        c["securityContext"] = {**c.get("securityContext", {}), "allowPrivilegeEscalation": False,
                                "readOnlyRootFilesystem": True, "runAsNonRoot": True,
                                "capabilities": {"drop": ["ALL"]}}
        tmp = f"tmp-{c['name']}"
        volumes.append({"name": tmp, "emptyDir": {"sizeLimit": tmp_size}})
        c.setdefault("volumeMounts", []).append({"name": tmp, "mountPath": TMP_DIR})
        resources = c.setdefault("resources", {})
        if not resources.get("requests") and not resources.get("limits"):
            if default_resources:
                resources.update({k: dict(v) for k, v in default_resources.items()})
            else:
                resources["requests"] = dict(DEFAULT_REQUESTS)
                resources["limits"] = dict(DEFAULT_LIMITS[role])
    return pod_spec


def api_access(pod_spec: dict[str, Any], containers: Sequence[str]) -> dict[str, Any]:
    """Give the named containers of ``pod_spec`` the pod's ServiceAccount credentials, and no
    other container: the volume the kubelet would mount into every container with
    ``automountServiceAccountToken`` (a token of 3607 s, which the API server extends for
    clients that do not reload it and the kubelet renews; the cluster's CA; the namespace),
    mounted where client libraries look. ``finish`` turned the automatic mount off."""
    pod_spec.setdefault("volumes", []).append({"name": "api-access", "projected": {
        "defaultMode": 0o444,
        "sources": [
            {"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}},
            {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
            {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {
                "apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
        ]}})
    for c in _containers(pod_spec):
        if c["name"] in containers:
            c.setdefault("volumeMounts", []).append(
                {"name": "api-access", "mountPath": API_ACCESS_DIR, "readOnly": True})
    return pod_spec


def _containers(pod_spec: Mapping[str, Any]) -> Sequence[dict[str, Any]]:
    return [*pod_spec.get("initContainers", []), *pod_spec.get("containers", [])]
