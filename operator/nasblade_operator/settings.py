"""Operator settings, read once from the environment at start-up.

``main.py`` builds an ``OperatorConfig`` and installs it with ``configure``; the handlers, the
ClusterGroup daemon and ``endpoints`` read it through ``current()``. Tests build their own
config and pass the same variables to the operator process.

Variables:
  NASBLADE_IMAGE                 image of every role (default nasblade/nasblade:<package version>)
  NASBLADE_ENDPOINT_OVERRIDES    JSON {"<namespace>/<array>": {"api": URL, "nbd": "host:port"},
                                 "<namespace>/<pod>": {"blade": URL}, "*": {...}} -- where the
                                 operator reaches controllers and blades instead of cluster DNS
                                 (tests run real processes on localhost; no pod really runs).
  NASBLADE_METRICS_PORT          Prometheus endpoint port, 0 to disable (default 8081)
  NASBLADE_STATUS_INTERVAL       seconds between status refreshes (default 10)
  NASBLADE_RETRY_DELAY           seconds before retrying a step that waits on something (default 5)
  NASBLADE_CLUSTER_DOMAIN        cluster DNS suffix (default svc; e.g. svc.cluster.local)
  NASBLADE_IMAGE_PULL_POLICY     pull policy of the controller and blade containers (IfNotPresent)
  NASBLADE_IMAGE_PULL_SECRETS    comma-separated Secret names given to every pod the operator
                                 makes (they must exist in the DiskArray's namespace)
  NASBLADE_NETWORK_POLICIES      "true": a NetworkPolicy set per DiskArray and ClusterGroup
                                 (docs/operator.md, "Network policies"); default false
  NASBLADE_LOG_FORMAT            text or json: the operator's log (``nasblade --log-format``) and
                                 that of every pod it makes
  NASBLADE_OPERATOR_NAMESPACE    the operator's namespace and the labels of its pods (JSON
  NASBLADE_OPERATOR_LABELS       object): the peer the NetworkPolicies let in
  NASBLADE_CERT_LIFETIME         lifetime of every leaf certificate the operator issues (controller,
                                 admin, blades), a Go duration (default 2160h: 90 days); renewed with a third left
  NASBLADE_CA_LIFETIME           lifetime of an array's CA (default 87600h: 10 years); replaced with a third
                                 left, the old one trusted beside it until it expires
  NASBLADE_CERT_PROPAGATION      how long a new CA is only trusted before leaves are issued from it
                                 (the kubelet's time to bring every pod the new bundle; default 10m)
  NASBLADE_CSI_CLUSTER_ROLE      the ClusterRole the operator binds each DiskArray's CSI controller
                                 plugin to (spec.csi; the chart's csi.enabled makes it)
  NASBLADE_CSI_SNAPSHOTTER_IMAGE the image of the csi-snapshotter sidecar (kubernetes-csi/external-
                                 snapshotter) added to each CSI controller plugin: VolumeSnapshots
                                 of its volumes; empty: no sidecar (the chart's csi.snapshotter)
  NASBLADE_METRICS_SCRAPER       JSON {"namespaceSelector": <label selector>, "podSelector": <label
                                 selector>}: the pods (Prometheus) the NetworkPolicies let in to
                                 GET /v1/metrics on the controller's control API and the blades'
                                 API; empty, or both selectors absent or empty: no scrape access
                                 (default). An empty selector is not "everything" here, so a typo
                                 cannot open the APIs to every pod of the cluster.
  NASBLADE_POD_DEFAULTS          JSON {"controller": {...}, "blades": {...}}, each with nodeSelector,
                                 tolerations, priorityClassName and resources: what controller
                                 pods (and CSI controller plugins) and blade pods get where their
                                 DiskArray / ClusterGroup spec sets nothing (the chart's podDefaults)
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from importlib import metadata
from typing import Any

from nasblade import units

from nasblade_operator import podspec, validation


def _package_version() -> str:
    try:
        return metadata.version("nasblade")
    except metadata.PackageNotFoundError:
        return "0.0.0"


@dataclasses.dataclass(frozen=True)
class OperatorConfig:
    image: str
    endpoint_overrides: Mapping[str, Mapping[str, str]]
    metrics_port: int = 8081
    status_interval: float = 10.0
    retry_delay: float = 5.0
    cluster_domain: str = "svc"
    image_pull_policy: str = "IfNotPresent"
    image_pull_secrets: tuple[str, ...] = ()
    network_policies: bool = False
    operator_namespace: str = ""
    operator_labels: Mapping[str, str] = dataclasses.field(default_factory=dict)
    log_format: str = "text"
    #: the NetworkPolicy peer of NASBLADE_METRICS_SCRAPER, None: no scrape access
    metrics_scraper: Mapping[str, Any] | None = None
    #: seconds: leaf certificates, the arrays' CAs, a new CA's trust-only time
    cert_lifetime: float = 90 * 86400.0
    ca_lifetime: float = 3650 * 86400.0
    cert_propagation: float = 600.0
    #: the ClusterRole a DiskArray's CSI controller plugin is bound to (the chart's); empty: the
    #: installation has none and ``spec.csi.enabled`` is refused
    csi_cluster_role: str = ""
    #: the csi-snapshotter sidecar's image in each CSI controller plugin; empty: none
    csi_snapshotter_image: str = ""
    #: the external-provisioner and external-resizer sidecars' images; empty: the driver does
    #: that job itself (``nasblade_csi.provisioner``)
    csi_provisioner_image: str = ""
    csi_resizer_image: str = ""
    #: placement and resources of controller and blade pods where their resources say nothing
    controller_defaults: podspec.RoleDefaults = dataclasses.field(default_factory=podspec.RoleDefaults)
    blade_defaults: podspec.RoleDefaults = dataclasses.field(default_factory=podspec.RoleDefaults)

    @property
    def pod_defaults(self) -> podspec.PodDefaults:
        """What every pod the operator makes gets from its installation (pulling, log format,
        placement and resources by role)."""
        return podspec.PodDefaults(pull_policy=self.image_pull_policy, pull_secrets=self.image_pull_secrets,
                                   log_format=self.log_format, controller=self.controller_defaults,
                                   blades=self.blade_defaults)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> OperatorConfig:
        e = os.environ if env is None else env
        raw = e.get("NASBLADE_ENDPOINT_OVERRIDES", "").strip()
        overrides: Any = json.loads(raw) if raw else {}
        if not isinstance(overrides, dict):
            raise ValueError("NASBLADE_ENDPOINT_OVERRIDES must be a JSON object")
        policy = e.get("NASBLADE_IMAGE_PULL_POLICY") or "IfNotPresent"
        if policy not in ("Always", "IfNotPresent", "Never"):
            raise ValueError("NASBLADE_IMAGE_PULL_POLICY must be Always, IfNotPresent or Never")
        raw_labels = e.get("NASBLADE_OPERATOR_LABELS", "").strip()
        op_labels: Any = json.loads(raw_labels) if raw_labels else {}
        if not isinstance(op_labels, dict) or not all(isinstance(v, str) for v in op_labels.values()):
            raise ValueError("NASBLADE_OPERATOR_LABELS must be a JSON object of strings")
        controller_defaults, blade_defaults = _pod_defaults(e.get("NASBLADE_POD_DEFAULTS", ""))
        return cls(
            controller_defaults=controller_defaults,
            blade_defaults=blade_defaults,
            image=e.get("NASBLADE_IMAGE") or f"nasblade/nasblade:{_package_version()}",
            endpoint_overrides=overrides,
            metrics_port=int(e.get("NASBLADE_METRICS_PORT", "8081")),
            status_interval=float(e.get("NASBLADE_STATUS_INTERVAL", "10")),
            retry_delay=float(e.get("NASBLADE_RETRY_DELAY", "5")),
            cluster_domain=e.get("NASBLADE_CLUSTER_DOMAIN", "svc"),
            image_pull_policy=policy,
            image_pull_secrets=tuple(s.strip() for s in e.get("NASBLADE_IMAGE_PULL_SECRETS", "").split(",") if s.strip()),
            network_policies=e.get("NASBLADE_NETWORK_POLICIES", "").strip().lower() in ("1", "true", "yes"),
            operator_namespace=e.get("NASBLADE_OPERATOR_NAMESPACE", ""),
            operator_labels={str(k): str(v) for k, v in op_labels.items()},
            log_format="json" if e.get("NASBLADE_LOG_FORMAT", "").strip().lower() == "json" else "text",
            metrics_scraper=scraper_peer(e.get("NASBLADE_METRICS_SCRAPER", "")),
            cert_lifetime=_duration(e, "NASBLADE_CERT_LIFETIME", "2160h"),
            ca_lifetime=_duration(e, "NASBLADE_CA_LIFETIME", "87600h"),
            cert_propagation=_duration(e, "NASBLADE_CERT_PROPAGATION", "10m"),
            csi_cluster_role=e.get("NASBLADE_CSI_CLUSTER_ROLE", "").strip(),
            csi_snapshotter_image=e.get("NASBLADE_CSI_SNAPSHOTTER_IMAGE", "").strip(),
            csi_provisioner_image=e.get("NASBLADE_CSI_PROVISIONER_IMAGE", "").strip(),
            csi_resizer_image=e.get("NASBLADE_CSI_RESIZER_IMAGE", "").strip(),
        )


def _pod_defaults(raw: str) -> tuple[podspec.RoleDefaults, podspec.RoleDefaults]:
    """``NASBLADE_POD_DEFAULTS``: the chart's ``podDefaults`` as JSON, ``{"controller": {...},
    "blades": {...}}`` (each: nodeSelector, tolerations, priorityClassName, resources)."""
    if not raw.strip():
        return podspec.RoleDefaults(), podspec.RoleDefaults()
    try:
        doc: Any = json.loads(raw)
    except ValueError as exc:
        raise ValueError(f"NASBLADE_POD_DEFAULTS is not JSON: {exc}") from exc
    if not isinstance(doc, dict) or not set(doc) <= {"controller", "blades"}:
        raise ValueError("NASBLADE_POD_DEFAULTS must be a JSON object with controller and/or blades")
    c = validation.Collector()
    controller = podspec.parse_role_defaults(c, "podDefaults.controller", doc.get("controller") or {})
    blades = podspec.parse_role_defaults(c, "podDefaults.blades", doc.get("blades") or {})
    if c.errors:
        raise ValueError("NASBLADE_POD_DEFAULTS: " + "; ".join(f"{e.path}: {e.problem}" for e in c.errors))
    return controller, blades


def _duration(e: Mapping[str, str], name: str, default: str) -> float:
    raw = e.get(name, "").strip() or default
    try:
        value = units.parse_duration(raw)
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from exc
    if value <= 0:
        raise ValueError(f"{name} must be positive, got {raw!r}")
    return value


_SELECTOR_OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")


def scraper_peer(raw: str) -> dict[str, Any] | None:
    """The NetworkPolicy peer ``NASBLADE_METRICS_SCRAPER`` names, or None when it names nobody.

    ``raw`` is JSON ``{"namespaceSelector": ..., "podSelector": ...}`` (Kubernetes label
    selectors: ``matchLabels`` and/or ``matchExpressions``). A selector that is absent, null or
    empty is left out; with neither left the result is None (an empty selector would select
    every namespace or every pod). Raises ValueError naming the field that is wrong."""
    raw = raw.strip()
    value: Any = json.loads(raw) if raw else None
    if value is None:
        return None
    if not isinstance(value, dict) or not set(value) <= {"namespaceSelector", "podSelector"}:
        raise ValueError("NASBLADE_METRICS_SCRAPER must be a JSON object with namespaceSelector and/or podSelector")
    peer = {key: _label_selector(sel, f"NASBLADE_METRICS_SCRAPER.{key}")
            for key, sel in value.items() if sel is not None}
    return {key: sel for key, sel in peer.items() if sel} or None


def _label_selector(sel: Any, where: str) -> dict[str, Any]:
    """``sel`` checked as a Kubernetes label selector (what the API server would refuse)."""
    if not isinstance(sel, dict) or not set(sel) <= {"matchLabels", "matchExpressions"}:
        raise ValueError(f"{where} must be a label selector (matchLabels, matchExpressions)")
    labels = sel.get("matchLabels") or {}
    if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
        raise ValueError(f"{where}.matchLabels must be an object of strings")
    exprs = sel.get("matchExpressions") or []
    if not isinstance(exprs, list):
        raise ValueError(f"{where}.matchExpressions must be a list")
    for i, x in enumerate(exprs):
        ok = (isinstance(x, dict) and isinstance(x.get("key"), str) and x.get("operator") in _SELECTOR_OPERATORS
              and isinstance(x.get("values", []), list) and all(isinstance(v, str) for v in x.get("values", [])))
        if not ok:
            raise ValueError(f"{where}.matchExpressions[{i}] must be {{key, operator ({', '.join(_SELECTOR_OPERATORS)}), "
                             "values: [strings]}}")
    out: dict[str, Any] = {}
    if labels:
        out["matchLabels"] = {str(k): v for k, v in labels.items()}
    if exprs:
        out["matchExpressions"] = exprs
    return out


_current: OperatorConfig | None = None


def configure(config: OperatorConfig) -> None:
    """Install ``config`` as the process-wide settings."""
    global _current
    _current = config


def current() -> OperatorConfig:
    """The installed settings; read from the environment on first use."""
    global _current
    if _current is None:
        _current = OperatorConfig.from_env()
    return _current
