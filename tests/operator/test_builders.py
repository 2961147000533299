"""Child objects built from parsed specs (no API server)."""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

import pytest
from nasblade import grants
from nasblade.cluster import config as cluster_config
from nasblade_operator import naming
from nasblade_operator.clustergroup import builders as cg_builders
from nasblade_operator.clustergroup import spec as cg_spec
from nasblade_operator.diskarray import builders as da_builders
from nasblade_operator.diskarray import spec as da_spec
from nasblade_operator.validation import InvalidSpec

RAW_ARRAY: dict[str, Any] = {
    "devices": {"count": 3, "size": "2Gi", "storageClassName": "fast"},
    "deletionPolicy": "Delete",
    "fileSystems": [
        {"name": "home", "size": "512Mi", "clusterGroup": "g1",
         "exports": [{"clients": ["10.1.0.0/16"], "access": "ro", "squash": "all"}]},
        {"name": "scratch", "size": "256Mi", "clusterGroup": "g1"},
    ],
}
ARRAY = da_spec.parse(RAW_ARRAY)
#: scratch in a slot other than 0: the two are served on different ports, by any one blade
SLOTS = {"home": 0, "scratch": 5}
GROUP = cg_spec.parse({"diskArrayRef": {"name": "a1"}, "blades": {"count": 2, "resources": {"requests": {"cpu": "100m"}}}})


def test_statefulset_has_one_claim_per_device_and_the_policy() -> None:
    sts = da_builders.controller_statefulset("a1", ARRAY, image="nasblade/nasblade:t")
    assert sts["metadata"]["name"] == "a1-controller" and sts["spec"]["replicas"] == 1
    claims = sts["spec"]["volumeClaimTemplates"]
    assert [c["metadata"]["name"] for c in claims] == ["dev-0", "dev-1", "dev-2"]
    assert all(c["spec"]["storageClassName"] == "fast" for c in claims)
    assert claims[0]["spec"]["resources"]["requests"]["storage"] == "2Gi"
    assert sts["spec"]["persistentVolumeClaimRetentionPolicy"]["whenDeleted"] == "Delete"
    c = sts["spec"]["template"]["spec"]["containers"][0]
    assert c["image"] == "nasblade/nasblade:t" and c["imagePullPolicy"] == "IfNotPresent"
    assert c["args"][0] == "controller" and c["args"].count("--device") == 3
    assert f"/devices/dev-2/device.img:{da_builders.device_file_size(2 * 2**30)}" in c["args"]
    # two tokens: the data path's and the admin's (fault injection, device replace)
    assert c["args"][c["args"].index("--token-file") + 1] == "/etc/nasblade/token/token"
    assert c["args"][c["args"].index("--admin-token-file") + 1] == "/etc/nasblade/token/admin-token"
    assert c["args"][c["args"].index("--metrics-token-file") + 1] == "/etc/nasblade/token/metrics-token"
    assert "--faults" not in c["args"]  # fault injection is off unless the spec asks
    faulty = da_spec.parse({**RAW_ARRAY, "controller": {"faultInjection": True}})
    assert "--faults" in da_builders.controller_statefulset("a1", faulty, image="img")["spec"]["template"]["spec"][
        "containers"][0]["args"]
    with pytest.raises(InvalidSpec, match=r"spec\.controller\.faultInjection"):
        da_spec.parse({**RAW_ARRAY, "controller": {"faultInjection": "yes"}})
    assert sts["spec"]["selector"]["matchLabels"].items() <= sts["spec"]["template"]["metadata"]["labels"].items()
    assert da_builders.pvc_names("a1", ARRAY) == ["dev-0-a1-controller-0", "dev-1-a1-controller-0", "dev-2-a1-controller-0"]


def test_service_secret_and_lus() -> None:
    svc = da_builders.controller_service("a1")
    assert {p["port"] for p in svc["spec"]["ports"]} == {naming.CONTROL_PORT, naming.NBD_PORT}
    sec = da_builders.token_secret("a1", token="s3cret", admin_token="adm1n", metrics_token="scr4pe",
                                   operator_token="0per")
    assert base64.b64decode(sec["data"]["token"]) == b"s3cret"
    assert base64.b64decode(sec["data"]["admin-token"]) == b"adm1n"
    assert base64.b64decode(sec["data"]["metrics-token"]) == b"scr4pe"
    assert base64.b64decode(sec["data"]["operator-token"]) == b"0per"
    assert base64.b64decode(sec["data"]["operator-token-sha256"]).decode() == hashlib.sha256(b"0per").hexdigest()
    # the CSI plugin's token is derived from the control token; the blades get its digest
    csi = base64.b64decode(sec["data"]["csi-token"]).decode()
    assert grants.is_csi(csi, "s3cret") and not grants.is_csi(csi, "other")
    assert base64.b64decode(sec["data"]["csi-token-sha256"]).decode() == hashlib.sha256(csi.encode()).hexdigest()
    made = da_builders.token_secret("a1", token="t", admin_token="a", metrics_token="m")  # a fresh operator token
    assert len(base64.b64decode(made["data"]["operator-token"])) >= 32
    lus = da_builders.desired_lus(ARRAY)
    assert list(lus) == ["program", "procinfo", "backup", "fs-home", "fs-scratch"]
    assert lus["fs-home"] == 512 * 2**20


def test_blade_pod_and_nfs_service() -> None:
    pod = cg_builders.blade_pod(group="g1", namespace="ns", index=1, spec=GROUP, portion=3, portion_size=2**20,
                                version="1.2.3", image="img:1", file_systems=ARRAY.file_systems_of("g1"), slots=SLOTS)
    assert pod["metadata"]["name"] == "g1-blade-1"
    labels = pod["metadata"]["labels"]
    assert labels[naming.L_VERSION] == "1.2.3" and labels[naming.L_BLADE] == "g1-blade-1"
    bp, fp = pod["spec"]["containers"]
    assert (bp["name"], fp["name"]) == ("block-processor", "file-processor")
    args = bp["args"]
    assert args[args.index("--group-index") + 1] == "3" and args[args.index("--slot") + 1] == "1"
    assert args[args.index("--controller-nbd") + 1] == "a1-controller.ns.svc:10809"
    # every file system of the group, as the block processor takes it (blockproc/main.py)
    specs = [json.loads(args[i + 1]) for i, a in enumerate(args) if a == "--fs-spec"]
    assert [(s["name"], s["lu"]) for s in specs] == [("home", "fs-home"), ("scratch", "fs-scratch")]
    assert (specs[0]["nfsPort"], specs[0]["mountPort"], specs[0]["portmapPort"]) == (2049, 20048, 10111)
    assert (specs[1]["nfsPort"], specs[1]["mountPort"], specs[1]["portmapPort"]) == (21015, 21016, 21017)
    # what the portmapper answers: the ports the clients reach through the Service
    assert specs[0]["advertise"] == specs[1]["advertise"] == {"nfsPort": 2049, "mountPort": 20048, "portmapPort": 111}
    assert specs[0]["exports"] == [{"path": "/home", "subdir": "/", "clients": ["10.1.0.0/16"], "access": "ro",
                                    "rootSquash": True, "allSquash": True}]
    assert specs[1]["exports"] == [{"path": "/scratch", "subdir": "/", "clients": ["127.0.0.1/32"], "access": "ro",
                                    "rootSquash": True, "allSquash": False}]  # no exports: the pod only
    assert "--lu" not in args and "--own" not in args  # takeovers only: a new pod never fences a survivor
    assert args[args.index("--fp-unix") + 1] == "/run/nasblade/fp.sock"
    # the cluster configuration: a downward-API file of the pod annotation, valid for the blade
    path = args[args.index("--cluster-config") + 1]
    mount = next(m for m in bp["volumeMounts"] if path.startswith(m["mountPath"] + "/"))
    volume = next(v for v in pod["spec"]["volumes"] if v["name"] == mount["name"])
    item = volume["downwardAPI"]["items"][0]
    assert path == f"{mount['mountPath']}/{item['path']}"
    key = item["fieldRef"]["fieldPath"].split("'")[1]
    config = cluster_config.parse(json.loads(pod["metadata"]["annotations"][key]))
    assert config.members == ("g1-blade-0", "g1-blade-1") and config.group_index == 3
    assert [(f.policy.name, f.policy.home) for f in config.file_systems] == [("home", "g1-blade-0"),
                                                                            ("scratch", "g1-blade-1")]
    # the file processor is the blade agent, controlled through the socket the block processor uses
    assert fp["args"][:5] == ["boot", "--software-dir", "/run/nasblade/software", "--", "blade-file-processor"]
    assert fp["args"][fp["args"].index("--control-unix") + 1] == "/run/nasblade/fp.sock"
    assert fp["args"][fp["args"].index("--local-unix") + 1] == args[args.index("--local-unix") + 1]
    assert "readinessProbe" not in fp  # a standby blade does not listen on the NFS ports
    assert bp["resources"] == {"requests": {"cpu": "100m"}}
    env = {e["name"]: e for e in bp["env"]}
    # tokens are files of the mounted Secret, never environment variables
    assert not any("TOKEN" in e["name"] or "secretKeyRef" in e.get("valueFrom", {})
                   for c in (bp, fp) for e in c["env"])
    assert args[args.index("--token-file") + 1] == "/etc/nasblade-token/token"
    # its management API checks callers against the SHA-256 of the operator's token
    assert "--api-token-file" not in args
    assert args[args.index("--api-token-sha256-file") + 1] == "/etc/nasblade-token/operator-token-sha256"
    (tok,) = [v for v in pod["spec"]["volumes"] if v["name"] == "token"]
    # the blade gets its group's control-API token (never the array's), the scrapers'
    # read-only one and the operator token's digest: never the admin token, never the
    # operator's token itself
    assert tok["projected"]["sources"] == [
        {"secret": {"name": "g1-group-token", "items": [{"key": "token", "path": "token"}]}},
        {"secret": {"name": "a1-control-token",
                    "items": [{"key": "metrics-token", "path": "metrics-token"},
                              {"key": "operator-token-sha256", "path": "operator-token-sha256"},
                              {"key": "csi-token-sha256", "path": "csi-token-sha256"}]}}]
    assert args[args.index("--csi-token-sha256-file") + 1] == "/etc/nasblade-token/csi-token-sha256"
    assert tok["projected"]["defaultMode"] == 0o400
    assert args[args.index("--metrics-token-file") + 1] == "/etc/nasblade-token/metrics-token"
    assert {"name": "token", "mountPath": "/etc/nasblade-token", "readOnly": True} in bp["volumeMounts"]
    assert all(m["name"] != "token" for m in fp["volumeMounts"])
    assert '"squash": "all"' in env["NASBLADE_FILESYSTEMS"]["value"]
    svc = cg_builders.nfs_service(array="a1", group="g1", fs="home", blade="g1-blade-1", slot=0)
    assert svc["metadata"]["name"] == "a1-home-nfs"
    assert svc["spec"]["selector"] == {naming.L_GROUP: "g1", naming.L_BLADE: "g1-blade-1"}
    assert svc["spec"]["selector"].items() <= labels.items()
    # NFS over TCP only; the portmapper, MOUNT, NLM and NSM over UDP too (a rebooted client's
    # sm-notify), each UDP port to the same container port number as over TCP
    assert {(p["protocol"], p["port"], p["targetPort"]) for p in svc["spec"]["ports"]} == {
        ("TCP", 2049, 2049), ("TCP", 20048, 20048), ("TCP", 111, 10111),
        ("UDP", 2049, 2049), ("UDP", 20048, 20048), ("UDP", 111, 10111)}
    other = cg_builders.nfs_service(array="a1", group="g1", fs="scratch", blade="g1-blade-1", slot=5)
    assert {(p["protocol"], p["port"], p["targetPort"]) for p in other["spec"]["ports"]} == {
        ("TCP", 2049, 21015), ("TCP", 20048, 21016), ("TCP", 111, 21017),
        ("UDP", 2049, 21015), ("UDP", 20048, 21016), ("UDP", 111, 21017)}
    (fp_ports,) = [c["ports"] for c in pod["spec"]["containers"] if c["name"] == "file-processor"]
    declared = {(c["protocol"], c["containerPort"]) for c in fp_ports}
    assert {(p["protocol"], p["targetPort"]) for s in (svc, other) for p in s["spec"]["ports"]} == declared


def _restricted(pod_spec: dict[str, object]) -> list[str]:
    """What in a pod spec breaks the Pod Security "restricted" profile (v1.33 rules)."""
    problems = []
    psc = pod_spec.get("securityContext") or {}
    assert isinstance(psc, dict)
    if psc.get("runAsNonRoot") is not True:
        problems.append("pod: runAsNonRoot")
    if (psc.get("seccompProfile") or {}).get("type") not in ("RuntimeDefault", "Localhost"):
        problems.append("pod: seccompProfile")
    for c in pod_spec["containers"]:  # type: ignore[attr-defined]
        sc = c.get("securityContext") or {}
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{c['name']}: allowPrivilegeEscalation")
        if (sc.get("capabilities") or {}).get("drop") != ["ALL"]:
            problems.append(f"{c['name']}: capabilities.drop")
        if sc.get("privileged"):
            problems.append(f"{c['name']}: privileged")
    return problems


def test_controller_and_blade_pods_meet_the_restricted_profile() -> None:
    sts = da_builders.controller_statefulset("a1", ARRAY, image="nasblade/nasblade:t")
    assert _restricted(sts["spec"]["template"]["spec"]) == []
    pod = cg_builders.blade_pod(group="g1", namespace="ns", index=0, spec=GROUP, portion=0, portion_size=2**20,
                                version="1", image="img:1", file_systems=ARRAY.file_systems_of("g1"), slots=SLOTS)
    assert _restricted(pod["spec"]) == []
