"""Placement, pulling and hardening of the pods the operator makes, its NetworkPolicies and the
group's PodDisruptionBudget (issue 16): the builders offline, then the same objects through a
real API server (tier 1) -- CRD fields accepted, Pod Security "restricted" admits the pods,
the policy objects validate, and the operator creates them for a DiskArray and a ClusterGroup."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from typing import Any

import pytest
from conftest import Kubectl, assert_clean
from nasblade_operator import naming, podspec, policies, settings
from nasblade_operator.clustergroup import builders as cg_builders
from nasblade_operator.clustergroup import spec as cg_spec
from nasblade_operator.diskarray import builders as da_builders
from nasblade_operator.diskarray import csi as da_csi
from nasblade_operator.diskarray import spec as da_spec
from nasblade_operator.validation import InvalidSpec

ARRAY = da_spec.parse({
    "devices": {"count": 1, "size": "1Gi"},
    "controller": {"nodeSelector": {"disk": "ssd"}, "priorityClassName": "storage-critical",
                   "tolerations": [{"key": "storage", "operator": "Exists", "effect": "NoSchedule"}]},
    "fileSystems": [
        {"name": "home", "size": "64Mi", "clusterGroup": "g1",
         "exports": [{"clients": ["10.1.0.0/16", "192.168.7.0/24"]}]},
        {"name": "data", "size": "64Mi", "clusterGroup": "g1", "exports": [{"clients": ["10.1.0.0/16"]}]},
    ],
})
PULL = podspec.PodDefaults(pull_policy="Always", pull_secrets=("regcred", "mirror"))


def group_spec(**blades: Any) -> cg_spec.ClusterGroupSpec:
    return cg_spec.parse({"diskArrayRef": {"name": "a1"}, "blades": {"count": 2, **blades}})


def blade(spec: cg_spec.ClusterGroupSpec, defaults: podspec.PodDefaults = PULL) -> dict[str, Any]:
    return cg_builders.blade_pod(group="g1", namespace="ns", index=0, spec=spec, portion=0, portion_size=2**20,
                                 version="1", image="reg.example/nb:1", file_systems=ARRAY.file_systems_of("g1"),
                                 slots={f.name: i for i, f in enumerate(ARRAY.file_systems_of("g1"))},
                                 defaults=defaults)


def controller_pod_spec(defaults: podspec.PodDefaults = PULL) -> dict[str, Any]:
    spec: dict[str, Any] = da_builders.controller_statefulset("a1", ARRAY, image="reg.example/nb:1", defaults=defaults)[
        "spec"]["template"]["spec"]
    return spec


# ---------------------------------------------------------------- offline


SNAPSHOTTER = "reg.example/csi-snapshotter:v8.7.0"


def csi_pod_spec(defaults: podspec.PodDefaults = PULL, snapshotter: str = "") -> dict[str, Any]:
    on = dataclasses.replace(ARRAY, csi=da_spec.Csi(enabled=True, cluster_group="g1", clients=("10.1.0.0/16",)))
    spec: dict[str, Any] = da_csi.deployment("ns", "a1", on, image="reg.example/nb:1", defaults=defaults,
                                             snapshotter=snapshotter)["spec"]["template"]["spec"]
    return spec


def test_pull_policy_and_secrets_reach_every_container() -> None:
    for pod in (controller_pod_spec(), blade(group_spec())["spec"], csi_pod_spec(snapshotter=SNAPSHOTTER)):
        assert pod["imagePullSecrets"] == [{"name": "regcred"}, {"name": "mirror"}]
        assert {c["imagePullPolicy"] for c in pod["containers"]} == {"Always"}
        assert not any(e["name"] == "NASBLADE_LOG_FORMAT" for c in pod["containers"] for e in c.get("env", []))
    json_logs = blade(group_spec(), defaults=podspec.PodDefaults(log_format="json"))["spec"]
    for c in json_logs["containers"]:
        assert {"name": "NASBLADE_LOG_FORMAT", "value": "json"} in c["env"]
    plain = blade(group_spec(), defaults=podspec.PodDefaults())["spec"]
    assert "imagePullSecrets" not in plain
    assert {c["imagePullPolicy"] for c in plain["containers"]} == {"IfNotPresent"}


def test_settings_read_the_pull_and_policy_variables() -> None:
    cfg = settings.OperatorConfig.from_env({
        "NASBLADE_IMAGE_PULL_POLICY": "Always", "NASBLADE_IMAGE_PULL_SECRETS": "regcred, mirror,",
        "NASBLADE_NETWORK_POLICIES": "true", "NASBLADE_OPERATOR_NAMESPACE": "nb-system",
        "NASBLADE_OPERATOR_LABELS": json.dumps({"app.kubernetes.io/component": "operator"}),
        "NASBLADE_LOG_FORMAT": "json"})
    assert cfg.pod_defaults == dataclasses.replace(PULL, log_format="json")
    assert cfg.network_policies and cfg.operator_namespace == "nb-system"
    default = settings.OperatorConfig.from_env({})
    assert default.pod_defaults == podspec.PodDefaults() and not default.network_policies
    with pytest.raises(ValueError, match="PULL_POLICY"):
        settings.OperatorConfig.from_env({"NASBLADE_IMAGE_PULL_POLICY": "Sometimes"})


def test_every_container_is_hardened() -> None:
    for pod in (controller_pod_spec(), blade(group_spec())["spec"], csi_pod_spec(),
                csi_pod_spec(snapshotter=SNAPSHOTTER)):
        # no pod has the kubelet's automatic token; only the CSI plugin, which talks to the API
        # server (claims, volumes, snapshots), mounts its credentials, into each of its containers
        assert pod["automountServiceAccountToken"] is False
        csi = pod.get("serviceAccountName") == "a1-csi-controller"
        access = [v for v in pod["volumes"] if v["name"] == "api-access"]
        assert len(access) == (1 if csi else 0)
        for c in pod["containers"]:
            mounts = [m for m in c["volumeMounts"] if m["mountPath"] == podspec.API_ACCESS_DIR]
            assert mounts == ([{"name": "api-access", "mountPath": podspec.API_ACCESS_DIR, "readOnly": True}]
                              if csi else []), c["name"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["fsGroup"] == 10001  # Secret volumes readable by the nasblade user
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        volumes = {v["name"]: v for v in pod["volumes"]}
        for c in pod["containers"]:
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
            assert sc["capabilities"] == {"drop": ["ALL"]}
            tmp = [m for m in c["volumeMounts"] if m["mountPath"] == "/tmp"]
            assert len(tmp) == 1 and "emptyDir" in volumes[tmp[0]["name"]]
            assert c["resources"]["requests"], f"{c['name']} has no requests"
            assert {"cpu", "memory"} <= set(c["resources"]["limits"]), f"{c['name']} is not capped"


def test_default_and_given_resources() -> None:
    ctrl = controller_pod_spec()["containers"][0]
    assert ctrl["resources"] == {"requests": {"cpu": "50m", "memory": f"{256 + 64}Mi"},  # cache + 64Mi
                                 "limits": {"cpu": "4", "memory": f"{256 + 1024}Mi"}}  # cache + 1Gi
    big = da_spec.parse({"devices": {"count": 1, "size": "8Gi"}, "controller": {"cacheSize": "4Gi"}})
    big_ctl = da_builders.controller_statefulset("a2", big, image="reg.example/nb:1")["spec"]["template"]["spec"]
    assert big_ctl["containers"][0]["resources"]["limits"]["memory"] == f"{4096 + 1024}Mi"
    pod = blade(group_spec())["spec"]
    assert all(c["resources"] == {"requests": podspec.DEFAULT_REQUESTS, "limits": {"cpu": "2", "memory": "1Gi"}}
               for c in pod["containers"])
    given = blade(group_spec(resources={"limits": {"memory": "1Gi"}}))["spec"]
    assert all(c["resources"] == {"limits": {"memory": "1Gi"}} for c in given["containers"])


def test_csi_section_is_parsed_and_checked() -> None:
    assert ARRAY.csi == da_spec.Csi()  # off unless asked
    base = {"devices": {"count": 1, "size": "1Gi"}}
    on = da_spec.parse({**base, "csi": {"enabled": True, "clusterGroup": "g1", "clients": ["10.1.0.7/16"]}})
    assert on.csi == da_spec.Csi(enabled=True, cluster_group="g1", clients=("10.1.0.0/16",))
    with pytest.raises(InvalidSpec) as bad:
        da_spec.parse({**base, "csi": {"enabled": True, "clients": ["ten"]}})
    assert {e.path for e in bad.value.errors} == {"spec.csi.clusterGroup", "spec.csi.clients[0]"}


def test_csi_plugin_runs_on_the_controllers_placement_with_files_not_variables() -> None:
    pod = csi_pod_spec()
    assert pod["nodeSelector"] == {"disk": "ssd"} and pod["priorityClassName"] == "storage-critical"
    (c,) = pod["containers"]
    assert c["env"] == [{"name": "NASBLADE_NBD_TLS_DIR", "value": da_csi.TLS_DIR}]  # a path, no secret value
    token = next(v for v in pod["volumes"] if v["name"] == "token")
    # the CSI token (its own LUs), not the array's control token, the admin or the operator token
    assert token["secret"]["items"] == [{"key": "csi-token", "path": "token"}]
    tls_secret = next(v for v in pod["volumes"] if v["name"] == "nbd-tls")
    assert tls_secret["secret"]["secretName"] == "a1-nbd-csi"  # identity csi, not admin


def test_csi_plugin_gets_the_snapshotter_sidecar_when_the_installation_names_its_image() -> None:
    assert [c["name"] for c in csi_pod_spec()["containers"]] == ["csi-controller"]
    pod = csi_pod_spec(snapshotter=SNAPSHOTTER)
    plugin, sidecar = pod["containers"]
    assert sidecar["name"] == "csi-snapshotter" and sidecar["image"] == SNAPSHOTTER
    assert f"--csi-address={da_csi.SOCKET_DIR}/csi.sock" in sidecar["args"]
    assert "--leader-election=false" in sidecar["args"]  # one replica (Recreate)
    assert "--endpoint" in plugin["args"] and f"unix://{da_csi.SOCKET_DIR}/csi.sock" in plugin["args"]
    # the socket's volume and nothing of the plugin's credentials
    mounts = {m["name"] for m in sidecar["volumeMounts"]}
    assert "socket" in mounts and not mounts & {"token", "nbd-tls"}
    assert "env" not in sidecar
    assert settings.OperatorConfig.from_env(
        {"NASBLADE_CSI_SNAPSHOTTER_IMAGE": f" {SNAPSHOTTER} "}).csi_snapshotter_image == SNAPSHOTTER
    assert settings.OperatorConfig.from_env({}).csi_snapshotter_image == ""


def test_controller_placement() -> None:
    pod = controller_pod_spec()
    assert pod["nodeSelector"] == {"disk": "ssd"}
    assert pod["priorityClassName"] == "storage-critical"
    assert pod["tolerations"] == [{"key": "storage", "operator": "Exists", "effect": "NoSchedule"}]
    assert "affinity" not in pod  # one controller per array: nothing to spread


def test_blades_of_a_group_spread_over_nodes() -> None:
    selector = {naming.L_GROUP: "g1", naming.L_COMPONENT: "blade"}
    pod = blade(group_spec())
    assert selector.items() <= pod["metadata"]["labels"].items()
    preferred = pod["spec"]["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert preferred[0]["podAffinityTerm"] == {"labelSelector": {"matchLabels": selector},
                                               "topologyKey": "kubernetes.io/hostname"}
    assert pod["spec"]["topologySpreadConstraints"][0]["whenUnsatisfiable"] == "ScheduleAnyway"
    required = blade(group_spec(spread="Required"))["spec"]
    assert required["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][0][
        "topologyKey"] == "kubernetes.io/hostname"
    assert "topologySpreadConstraints" not in required
    none = blade(group_spec(spread="None", nodeSelector={"pool": "nas"}))["spec"]
    assert "affinity" not in none and none["nodeSelector"] == {"pool": "nas"}


def test_installation_defaults_fill_what_the_specs_leave_empty() -> None:
    """The chart's ``podDefaults`` (``NASBLADE_POD_DEFAULTS``): controller pods and the CSI
    controller plugin take ``controller``, blade pods ``blades``, field by field where the
    resource's spec sets nothing; a container without resources gets the role's."""
    cfg = settings.OperatorConfig.from_env({"NASBLADE_POD_DEFAULTS": json.dumps({
        "controller": {"nodeSelector": {"pool": "infra"}, "priorityClassName": "infra-critical",
                       "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"memory": "2Gi"}}},
        "blades": {"nodeSelector": {"pool": "nas"}, "priorityClassName": "nas-critical",
                   "tolerations": [{"key": "nas", "operator": "Exists", "effect": "NoSchedule"}],
                   "resources": {"requests": {"cpu": "250m"}}}})})
    d = cfg.pod_defaults
    # the DiskArray sets its controller's selector, priority and tolerations: they win
    ctl = controller_pod_spec(d)
    assert ctl["nodeSelector"] == {"disk": "ssd"} and ctl["priorityClassName"] == "storage-critical"
    assert {json.dumps(c["resources"], sort_keys=True) for c in ctl["containers"]} == {
        json.dumps({"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"memory": "2Gi"}}, sort_keys=True)}
    bare = da_spec.parse({"devices": {"count": 1, "size": "1Gi"}})
    bare_ctl = da_builders.controller_statefulset("a2", bare, image="reg.example/nb:1", defaults=d)[
        "spec"]["template"]["spec"]
    assert bare_ctl["nodeSelector"] == {"pool": "infra"} and bare_ctl["priorityClassName"] == "infra-critical"
    assert "tolerations" not in bare_ctl
    csi = csi_pod_spec(d)  # placed like the controller, with its own small requests
    assert csi["nodeSelector"] == {"disk": "ssd"}
    assert all(c["resources"] == {"requests": podspec.DEFAULT_REQUESTS, "limits": podspec.DEFAULT_LIMITS["csi"]}
               for c in csi["containers"])
    # blades: the group sets nothing but its spread
    pod = blade(group_spec(), defaults=d)["spec"]
    assert pod["nodeSelector"] == {"pool": "nas"} and pod["priorityClassName"] == "nas-critical"
    assert pod["tolerations"] == [{"key": "nas", "operator": "Exists", "effect": "NoSchedule"}]
    assert all(c["resources"] == {"requests": {"cpu": "250m"}} for c in pod["containers"])
    assert "podAntiAffinity" in pod["affinity"]
    own = blade(group_spec(nodeSelector={"disk": "nvme"}), defaults=d)["spec"]
    assert own["nodeSelector"] == {"disk": "nvme"} and own["priorityClassName"] == "nas-critical"
    # without defaults: no placement, the small requests
    plain = blade(group_spec())["spec"]
    assert "nodeSelector" not in plain and "priorityClassName" not in plain
    assert all(c["resources"] == {"requests": podspec.DEFAULT_REQUESTS, "limits": podspec.DEFAULT_LIMITS["blades"]}
               for c in plain["containers"])


@pytest.mark.parametrize(("raw", "match"), [
    ("{", "not JSON"),
    ('{"controllers": {}}', "controller and/or blades"),
    ('{"blades": {"nodeSelector": {"pool": 1}}}', "podDefaults.blades.nodeSelector.pool"),
    ('{"blades": {"resources": {"requests": {"cpu": "lots"}}}}', "podDefaults.blades.resources.requests.cpu"),
    ('{"controller": {"resources": {"wants": {}}}}', "podDefaults.controller.resources"),
    ('{"controller": {"affinity": {}}}', "unknown field"),
])
def test_bad_installation_defaults_stop_the_operator(raw: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        settings.OperatorConfig.from_env({"NASBLADE_POD_DEFAULTS": raw})


@pytest.mark.parametrize(("blades", "path"), [
    ({"spread": "Sometimes"}, "spec.blades.spread"),
    ({"nodeSelector": {"disk": 1}}, "spec.blades.nodeSelector.disk"),
    ({"tolerations": "all"}, "spec.blades.tolerations"),
    ({"disruptionBudget": "yes"}, "spec.blades.disruptionBudget"),
])
def test_invalid_placement_is_refused(blades: dict[str, Any], path: str) -> None:
    with pytest.raises(InvalidSpec) as e:
        group_spec(**blades)
    assert path in str(e.value)


def test_disruption_budget() -> None:
    pdb = policies.disruption_budget(array="a1", group="g1", blades=3)
    assert pdb["spec"] == {"minAvailable": 2,
                           "selector": {"matchLabels": {naming.L_GROUP: "g1", naming.L_COMPONENT: "blade"}}}
    assert policies.disruption_budget(array="a1", group="g1", blades=1)["spec"]["minAvailable"] == 0  # drains proceed
    assert group_spec().blades.disruption_budget and not group_spec(disruptionBudget=False).blades.disruption_budget


def test_network_policies() -> None:
    op = {"app.kubernetes.io/component": "operator"}
    deny, ctrl = policies.array_policies("a1", operator_namespace="nb-system", operator_labels=op)
    assert deny["spec"] == {"podSelector": {"matchLabels": {naming.L_ARRAY: "a1"}}, "policyTypes": ["Ingress"]}
    data = ctrl["spec"]["ingress"][0]
    assert {p["port"] for p in data["ports"]} == {naming.CONTROL_PORT, naming.NBD_PORT}
    assert data["from"][0] == {"podSelector": {"matchLabels": {naming.L_ARRAY: "a1", naming.L_COMPONENT: "blade"}}}
    assert data["from"][1] == {"podSelector": {"matchLabels": {naming.L_ARRAY: "a1",
                                                               naming.L_COMPONENT: naming.CSI_COMPONENT}}}
    assert data["from"][2] == {"podSelector": {"matchLabels": op},
                               "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "nb-system"}}}
    exports = [e.clients for f in ARRAY.file_systems_of("g1") for e in f.exports]
    bp = policies.blade_policy(array="a1", group="g1", clients=policies.nfs_clients(exports), nfs_slots=[0],
                               operator_namespace="nb-system", operator_labels=op)
    api, nfs = bp["spec"]["ingress"]
    assert api["ports"] == [{"protocol": "TCP", "port": naming.BLADE_API_PORT}]
    # the blade API: the operator, the group's own blades and the array's CSI controller plugin
    # (directory volumes), nobody else
    assert api["from"][1:] == [
        {"podSelector": {"matchLabels": {naming.L_GROUP: "g1", naming.L_COMPONENT: "blade"}}},
        {"podSelector": {"matchLabels": {naming.L_ARRAY: "a1", naming.L_COMPONENT: naming.CSI_COMPONENT}}}]
    assert nfs["from"] == [{"ipBlock": {"cidr": "10.1.0.0/16"}}, {"ipBlock": {"cidr": "192.168.7.0/24"}}]
    assert {(p["protocol"], p["port"]) for p in nfs["ports"]} == {("TCP", c) for _, _, c in naming.NFS_PORTS} | {
        ("UDP", c) for _, _, c in naming.NFS_UDP_PORTS}
    two = policies.blade_policy(array="a1", group="g1", clients=["10.1.0.0/16"], nfs_slots=[0, 2],
                                operator_namespace="nb-system", operator_labels=op)
    assert {(p["protocol"], p["port"]) for p in two["spec"]["ingress"][1]["ports"]} == {
        (proto, port) for s in (0, 2) for proto in ("TCP", "UDP") for port in naming.nfs_container_ports(s)}
    closed = policies.blade_policy(array="a1", group="g1", clients=[], nfs_slots=[0], operator_namespace="",
                                   operator_labels=op)
    # no file system: no NFS rule (an empty port list would admit every port)
    assert len(policies.blade_policy(array="a1", group="g1", clients=["10.1.0.0/16"], nfs_slots=[],
                                     operator_namespace="", operator_labels=op)["spec"]["ingress"]) == 1
    assert len(closed["spec"]["ingress"]) == 1  # no exports: no NFS client admitted
    # every rule names who it admits: no port is open to anyone (nothing listens on a "metrics port")
    for policy in (ctrl, bp, closed):
        assert all(rule.get("from") for rule in policy["spec"]["ingress"]), policy["metadata"]["name"]


SCRAPER = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
           "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}}


def _admitted(policy: dict[str, Any]) -> dict[str, set[int]]:
    """Each peer of ``policy`` (as JSON) -> the ports it may reach."""
    out: dict[str, set[int]] = {}
    for rule in policy["spec"]["ingress"]:
        for peer in rule["from"]:
            out.setdefault(json.dumps(peer, sort_keys=True), set()).update(p["port"] for p in rule["ports"])
    return out


def test_scraper_reaches_the_api_ports_only() -> None:
    """The metrics scraper gets the controller's control API and the blades' API (GET /v1/metrics),
    not NBD, not NFS; everybody else keeps exactly what they had; no scraper, no rule."""
    op = {"app.kubernetes.io/component": "operator"}
    peer = json.dumps(SCRAPER, sort_keys=True)
    exports = ["10.1.0.0/16"]
    kw: dict[str, Any] = {"operator_namespace": "nb-system", "operator_labels": op}
    _, ctrl = policies.array_policies("a1", scraper=SCRAPER, **kw)
    _, ctrl_closed = policies.array_policies("a1", scraper=None, **kw)
    bp = policies.blade_policy(array="a1", group="g1", clients=exports, scraper=SCRAPER, nfs_slots=[0], **kw)
    bp_closed = policies.blade_policy(array="a1", group="g1", clients=exports, scraper=None, nfs_slots=[0], **kw)

    assert _admitted(ctrl)[peer] == {naming.CONTROL_PORT}
    assert _admitted(bp)[peer] == {naming.BLADE_API_PORT}
    assert {k: v for k, v in _admitted(ctrl).items() if k != peer} == _admitted(ctrl_closed)
    assert {k: v for k, v in _admitted(bp).items() if k != peer} == _admitted(bp_closed)
    assert peer not in _admitted(ctrl_closed) and peer not in _admitted(bp_closed)
    assert ctrl["spec"]["ingress"][-1] == {"from": [SCRAPER], "ports": [{"protocol": "TCP", "port": naming.CONTROL_PORT}]}
    assert ctrl["spec"]["ingress"][-1]["from"][0] is not SCRAPER  # a copy: the config is not shared with the object
    assert policies.scrape_rule({}, naming.CONTROL_PORT) == []


def test_settings_read_the_scraper() -> None:
    """NASBLADE_METRICS_SCRAPER: a peer from namespace and pod selectors; unset, empty or with
    empty selectors it is None (no scrape access: an empty selector would match every pod)."""
    assert settings.OperatorConfig.from_env({"NASBLADE_METRICS_SCRAPER": json.dumps(SCRAPER)}).metrics_scraper == SCRAPER
    for raw in ("", " ", "null", "{}", '{"namespaceSelector": null, "podSelector": {}}',
                '{"namespaceSelector": {"matchLabels": {}}, "podSelector": {"matchExpressions": []}}'):
        assert settings.scraper_peer(raw) is None, raw
    assert settings.OperatorConfig.from_env({}).metrics_scraper is None
    only_ns = {"namespaceSelector": {"matchExpressions": [{"key": "team", "operator": "In", "values": ["obs"]}]}}
    assert settings.scraper_peer(json.dumps({**only_ns, "podSelector": {}})) == only_ns
    for bad, where in (('["monitoring"]', "must be a JSON object"),
                       ('{"ipBlock": {"cidr": "0.0.0.0/0"}}', "must be a JSON object"),
                       ('{"podSelector": {"app": "prometheus"}}', "NASBLADE_METRICS_SCRAPER.podSelector must"),
                       ('{"podSelector": {"matchLabels": {"a": 1}}}', "podSelector.matchLabels"),
                       ('{"namespaceSelector": {"matchExpressions": [{"key": "a", "operator": "Is"}]}}',
                        r"namespaceSelector.matchExpressions\[0\]")):
        with pytest.raises(ValueError, match=where):
            settings.scraper_peer(bad)


def test_contains_ignores_server_defaults() -> None:
    want = {"spec": {"ports": [{"port": 1}]}}
    assert policies._contains({"spec": {"ports": [{"port": 1, "protocol": "TCP"}], "x": 1}}, want)
    assert not policies._contains({"spec": {"ports": [{"port": 2}]}}, want)
    assert not policies._contains({"spec": {"ports": [{"port": 1}, {"port": 2}]}}, want)


# ---------------------------------------------------------------- against the API server


def _restricted(kubectl: Kubectl) -> None:
    kubectl("label", "namespace", kubectl.namespace, "pod-security.kubernetes.io/enforce=restricted",
            "pod-security.kubernetes.io/warn=restricted", "--overwrite")


@pytest.mark.tier1
def test_built_objects_pass_the_api_server(kubectl: Kubectl) -> None:
    """Pods with placement and hardening are admitted under Pod Security "restricted" (and the
    check is real: a pod with a capability added is refused); policies and budget validate."""
    _restricted(kubectl)
    ns = kubectl.namespace
    pod = blade(group_spec(spread="Required", tolerations=[{"key": "k", "operator": "Equal", "value": "v",
                                                             "effect": "NoExecute", "tolerationSeconds": 30}]))
    sts = da_builders.controller_statefulset("a1", ARRAY, image="reg.example/nb:1", defaults=PULL)
    objs = [pod, sts, policies.disruption_budget(array="a1", group="g1", blades=2),
            *policies.array_policies("a1", operator_namespace="nb-system", operator_labels={"a": "b"}, scraper=SCRAPER),
            policies.blade_policy(array="a1", group="g1", clients=["10.0.0.0/8"], operator_namespace="nb-system",
                                  operator_labels={"a": "b"}, nfs_slots=[0, 1], scraper=SCRAPER)]
    for obj in objs:
        obj["metadata"]["namespace"] = ns
        r = kubectl("create", "--dry-run=server", "-f", "-", input=json.dumps(obj), check=False)
        assert r.returncode == 0 and "Warning" not in r.stderr, (obj["kind"], r.stderr)
    loose = json.loads(json.dumps(pod))
    loose["spec"]["containers"][0]["securityContext"]["capabilities"] = {"add": ["NET_ADMIN"], "drop": ["ALL"]}
    r = kubectl("create", "--dry-run=server", "-f", "-", input=json.dumps(loose), check=False)
    assert r.returncode != 0 and "violates PodSecurity" in r.stderr, r.stderr


@pytest.mark.tier1
def test_crds_accept_placement_fields(kubectl: Kubectl) -> None:
    kubectl.apply({"apiVersion": "nasblade.io/v1alpha1", "kind": "ClusterGroup", "metadata": {"name": "g1"},
                   "spec": {"diskArrayRef": {"name": "a1"}, "blades": {
                       "nodeSelector": {"pool": "nas"}, "priorityClassName": "p",
                       "tolerations": [{"key": "k", "operator": "Exists"}]}}})
    g = kubectl.get("cg", "g1")
    assert g is not None
    assert g["spec"]["blades"]["spread"] == "Preferred" and g["spec"]["blades"]["disruptionBudget"] is True
    assert cg_spec.parse(g["spec"]).blades.placement.node_selector == {"pool": "nas"}
    bad = {"apiVersion": "nasblade.io/v1alpha1", "kind": "ClusterGroup", "metadata": {"name": "g2"},
           "spec": {"diskArrayRef": {"name": "a1"}, "blades": {"spread": "Sometimes"}}}
    r = kubectl.apply(bad, check=False)
    assert r.returncode != 0 and "spec.blades.spread" in r.stderr
    kubectl.apply({"apiVersion": "nasblade.io/v1alpha1", "kind": "DiskArray", "metadata": {"name": "a1"},
                   "spec": {"devices": {"size": "1Gi"}, "controller": {"nodeSelector": {"disk": "ssd"}}}})


@pytest.mark.tier1
def test_operator_makes_policies_and_budget(
    kubectl: Kubectl, operator: Callable[[], Any], token_secret: Callable[[str], None],
) -> None:
    """With NASBLADE_NETWORK_POLICIES=true the running operator creates the array's and the
    group's NetworkPolicies (the configured scraper on the API ports) and the group's
    PodDisruptionBudget, owned by the resources, and follows a changed export."""
    from test_tier1_operator import array, group, wait_until

    token_secret("a1")
    runner = operator()
    settings.configure(dataclasses.replace(settings.current(), network_policies=True, operator_namespace="nb-system",
                                           operator_labels={"app.kubernetes.io/component": "operator"},
                                           metrics_scraper=SCRAPER))
    want = {("NetworkPolicy", "a1-default-deny"), ("NetworkPolicy", "a1-controller"),
            ("NetworkPolicy", "g1-blades"), ("PodDisruptionBudget", "g1-blades")}

    def made() -> set[tuple[str, str]]:
        have = {(o["kind"], o["metadata"]["name"]) for kind in ("networkpolicy", "pdb") for o in kubectl.list(kind)}
        return have if want <= have else set()

    def cidrs() -> list[str]:
        np = kubectl.get("networkpolicy", "g1-blades") or {"spec": {}}
        return [p["ipBlock"]["cidr"] for rule in np["spec"].get("ingress", [])
                for p in rule.get("from", []) if "ipBlock" in p]

    with runner:
        kubectl.apply(array())
        kubectl.apply(group())
        wait_until("policies and budget", made, timeout=90)
        # the group's first pass may come before the array has given its file systems NFS
        # slots: its policy then has no NFS rule (no ports to open) until the next pass
        wait_until("the export's clients in the policy", lambda: cidrs() == ["10.0.0.0/8"], timeout=60)
        for name, port in (("a1-controller", naming.CONTROL_PORT), ("g1-blades", naming.BLADE_API_PORT)):
            np = kubectl.get("networkpolicy", name)
            assert np is not None
            assert {"from": [SCRAPER], "ports": [{"protocol": "TCP", "port": port}]} in np["spec"]["ingress"]
        a = kubectl.get("diskarray", "a1")
        assert a is not None
        fs = a["spec"]["fileSystems"]
        fs[0]["exports"] = [{"clients": ["172.16.0.0/12"]}]
        kubectl("patch", "diskarray", "a1", "--type=merge", "-p", json.dumps({"spec": {"fileSystems": fs}}))
        wait_until("the new export in the policy", lambda: cidrs() == ["172.16.0.0/12"], timeout=60)
    assert_clean(runner)
    for kind, name in want:
        obj = kubectl.get(kind.lower(), name)
        assert obj is not None
        assert obj["metadata"]["ownerReferences"][0]["kind"] == ("DiskArray" if name.startswith("a1") else "ClusterGroup")


@pytest.mark.tier1
def test_crd_takes_an_arrays_topology_and_refuses_a_malformed_one(kubectl: Kubectl) -> None:
    """``spec.csi.topology`` on the API server: segments of label values kept as given (and
    parsed by the operator the same), an empty segment or a value no label can have refused."""
    zone = "topology.kubernetes.io/zone"
    csi = {"enabled": True, "clusterGroup": "g1", "topology": [{zone: "zone-a"}]}
    kubectl.apply({"apiVersion": "nasblade.io/v1alpha1", "kind": "DiskArray", "metadata": {"name": "t1"},
                   "spec": {"devices": {"size": "1Gi"}, "csi": csi}})
    a = kubectl.get("diskarray", "t1")
    assert a is not None and a["spec"]["csi"]["topology"] == [{zone: "zone-a"}]
    assert da_spec.parse(a["spec"]).csi.topology == ({zone: "zone-a"},)
    for bad in ([{}], [{zone: "not a value!"}]):
        r = kubectl.apply({"apiVersion": "nasblade.io/v1alpha1", "kind": "DiskArray", "metadata": {"name": "t2"},
                           "spec": {"devices": {"size": "1Gi"}, "csi": {**csi, "topology": bad}}}, check=False)
        assert r.returncode != 0 and "spec.csi.topology" in r.stderr, r.stderr
