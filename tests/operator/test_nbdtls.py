"""The TLS objects the operator builds (``nasblade_operator.nbdtls``), no API server: the
controller mounts its server certificate and access file and serves its API over HTTPS, a
blade's block processor mounts the blade's own certificate and serves its API over HTTPS; the
access file follows ``fileSystems[].clusterGroup``; the certificates made from the CA Secret
load into TLS contexts and carry the right identity; renewal and CA rotation decide as
documented (a third of the life left; a new CA trusted everywhere before it signs)."""

from __future__ import annotations

import base64
import datetime
import json
from pathlib import Path

import pytest
from cryptography import x509
from nasblade import pki, tls
from nasblade.nbd import access
from nasblade_operator import nbdtls, settings
from nasblade_operator.clustergroup import builders as cg_builders
from nasblade_operator.clustergroup import spec as cg_spec
from nasblade_operator.diskarray import builders as da_builders
from nasblade_operator.diskarray import spec as da_spec

ARRAY = da_spec.parse({
    "devices": {"count": 2, "size": "1Gi"},
    "fileSystems": [
        {"name": "home", "size": "512Mi", "clusterGroup": "g1"},
        {"name": "scratch", "size": "256Mi", "clusterGroup": "g1"},
        {"name": "data", "size": "256Mi", "clusterGroup": "g2"},
    ],
})
GROUP = cg_spec.parse({"diskArrayRef": {"name": "a1"}, "blades": {"count": 2}})


def _mounted(spec: dict[str, object], container: dict[str, object], path: str) -> str:
    """The Secret mounted at ``path`` in ``container`` of a pod spec."""
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}  # type: ignore[attr-defined,index]
    volumes = {v["name"]: v for v in spec["volumes"]}  # type: ignore[attr-defined,index]
    return str(volumes[mounts[path]]["secret"]["secretName"])


def test_controller_serves_nbd_over_tls_only() -> None:
    sts = da_builders.controller_statefulset("a1", ARRAY, image="img")
    spec = sts["spec"]["template"]["spec"]
    c = spec["containers"][0]
    args = c["args"]
    assert args[args.index("--tls-dir") + 1] == nbdtls.TLS_DIR
    assert args[args.index("--nbd-access") + 1] == f"{nbdtls.ACCESS_DIR}/access.json"
    assert _mounted(spec, c, nbdtls.TLS_DIR) == "a1-nbd-controller"
    assert _mounted(spec, c, nbdtls.ACCESS_DIR) == "a1-nbd-access"
    assert all(m.get("readOnly") for m in c["volumeMounts"] if m["mountPath"].startswith("/etc/nasblade"))
    # the control API is HTTPS with the same certificate; the kubelet probes it so
    assert "--api-tls" in args
    assert c["readinessProbe"]["httpGet"]["scheme"] == "HTTPS"


def test_blade_block_processor_gets_its_own_certificate_only() -> None:
    pods = [cg_builders.blade_pod(group="g1", namespace="ns", index=i, spec=GROUP, portion=0, portion_size=2**20,
                                  version="1", image="img", file_systems=ARRAY.file_systems_of("g1"),
                                  slots={f.name: i for i, f in enumerate(ARRAY.file_systems_of("g1"))})
            for i in (0, 1)]
    assert [_mounted(p["spec"], p["spec"]["containers"][0], nbdtls.TLS_DIR) for p in pods] == [
        "a1-nbd-g1-blade-0", "a1-nbd-g1-blade-1"]
    pod = pods[0]
    bp, fp = pod["spec"]["containers"]
    assert {"name": tls.ENV_DIR, "value": nbdtls.TLS_DIR} in bp["env"]
    # its API is HTTPS with that certificate; it calls the controller's over HTTPS
    args = bp["args"]
    assert args[args.index("--api-tls-dir") + 1] == nbdtls.TLS_DIR
    assert args[args.index("--controller-api") + 1].startswith("https://a1-controller.ns.svc:")
    assert bp["readinessProbe"]["httpGet"]["scheme"] == "HTTPS"
    # the file processor reaches LUs only through the block processor's Unix socket
    assert all(m["mountPath"] != nbdtls.TLS_DIR for m in fp["volumeMounts"])
    assert all(e["name"] != tls.ENV_DIR for e in fp["env"])


def test_access_file_gives_each_group_its_file_systems() -> None:
    policy = nbdtls.access_policy((f.name, f.cluster_group) for f in ARRAY.file_systems)
    secret = nbdtls.access_secret("a1", policy)
    body = json.loads(base64.b64decode(secret["data"]["access.json"]))
    back = access.AccessPolicy.from_json(body)
    g1, g2 = tls.Identity("group:g1"), tls.Identity("group:g2")
    assert back.permits(g1, "fs-home") and back.permits(g1, "fs-scratch") and not back.permits(g1, "fs-data")
    assert back.permits(g2, "fs-data") and not back.permits(g2, "fs-home")
    assert all(back.permits(g2, lu) for lu in ("program", "procinfo", "backup"))
    assert back.read_only_for(g2, "program") and body["readOnly"] == ["program"]  # blades only read software
    assert nbdtls.access_secret("a1", policy) == secret  # same input, same object


def test_access_file_gives_each_group_only_its_claimed_portion() -> None:
    """``array_access``: the DiskArray as the API server holds it, with the portions
    ClusterGroups claimed in its status; each group's window of procinfo and backup is its
    portion (spec.areas: 64 MiB of processor information in 8 portions: 8 MiB each)."""
    da = {"spec": {"devices": {"count": 2, "size": "1Gi"},
                   "areas": {"processorInfoSize": "64Mi", "portions": 8},
                   "fileSystems": [{"name": "home", "size": "512Mi", "clusterGroup": "g1"},
                                   {"name": "data", "size": "256Mi", "clusterGroup": "g2"}]},
          "status": {"portions": [{"index": 0, "group": "g1", "activeArea": "portion"},
                                  {"index": 3, "group": "g2", "activeArea": "backup"}]}}
    policy = nbdtls.array_access(da)
    g1, g2 = tls.Identity("group:g1"), tls.Identity("group:g2")
    mib = 1 << 20
    assert policy.window(g1, "procinfo") == ((0, 8 * mib),) == policy.window(g1, "backup")
    assert policy.window(g2, "procinfo") == ((24 * mib, 8 * mib),)
    assert policy.window(g2, "fs-data") is None and policy.permits(g2, "fs-data")
    assert not access.inside(policy.window(g1, "procinfo"), 24 * mib, 4096)
    # the Secret carries the windows; a DiskArray without claims yet has none
    back = access.AccessPolicy.from_json(json.loads(base64.b64decode(
        nbdtls.access_secret("a1", policy)["data"]["access.json"])))
    assert back == policy
    assert nbdtls.array_access({**da, "status": {}}).windows == {}
    # a group whose spec.backup.targets names another also reaches that group's portion
    groups = [{"metadata": {"name": "g1"}, "spec": {"diskArrayRef": {"name": "a1"}, "backup": {"targets": ["g2"]}}},
              {"metadata": {"name": "g2"}, "spec": {"diskArrayRef": {"name": "a1"}}}]
    cross = nbdtls.array_access(da, groups)
    assert cross.window(g1, "backup") == ((0, 8 * mib), (24 * mib, 8 * mib))
    assert cross.window(g2, "procinfo") == ((24 * mib, 8 * mib),)


def test_certificates_from_the_secrets_load_and_name_the_service(tmp_path: Path) -> None:
    ca = pki.make_ca("a1")
    names = nbdtls.server_names("a1", "ns", "cluster.local")
    assert "a1-controller.ns.svc" in names  # what blades dial
    authority = nbdtls.Authority(ca)
    now = datetime.datetime.now(datetime.UTC)
    server_spec, admin_spec, csi_spec = nbdtls.array_leaves("a1", "ns", "cluster.local")
    # the CSI plugin's is a client certificate of its own role, beside the operator's admin one
    assert (admin_spec.identity, csi_spec.identity) == (tls.ADMIN, tls.CSI)
    assert csi_spec.name == "a1-nbd-csi" and csi_spec.client and not csi_spec.server
    server = nbdtls.secret(server_spec.name, "a1", nbdtls.leaf_files(server_spec, authority, now=now, lifetime=86400))
    blade_spec = nbdtls.blade_leaf("a1", "g1", "g1-blade-0")
    blade = nbdtls.secret(blade_spec.name, "a1", nbdtls.leaf_files(blade_spec, authority, now=now, lifetime=86400))
    sdir = pki.write_dir(tmp_path / "s", nbdtls.files_of(server))
    bdir = pki.write_dir(tmp_path / "b", nbdtls.files_of(blade))
    tls.server_context(sdir)
    tls.client_context(bdir)
    tls.server_context(bdir, client_auth=False)  # the blade's API
    cert = x509.load_pem_x509_certificate((sdir / tls.SERVER_CERT).read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(sans.get_values_for_type(x509.DNSName)) | {str(a) for a in sans.get_values_for_type(x509.IPAddress)} \
        == set(names)
    info = pki.leaf_info((bdir / tls.CLIENT_CERT).read_bytes())
    assert info.common_name == "group:g1" and info.client and info.server
    assert set(info.server_names) == {"g1-blade-0", "a1-blades"}
    assert not pki.leaf_info((sdir / tls.SERVER_CERT).read_bytes()).client  # the controller is no client


T0 = datetime.datetime(2027, 1, 1, tzinfo=datetime.UTC)


def _at(monkeypatch: pytest.MonkeyPatch, when: datetime.datetime) -> None:
    """Certificates made as if at ``when`` (pki reads the clock once per certificate)."""
    monkeypatch.setattr(pki, "_now", lambda: when)


def test_a_leaf_is_renewed_with_a_third_of_its_life_left(monkeypatch: pytest.MonkeyPatch) -> None:
    _at(monkeypatch, T0)
    authority = nbdtls.Authority(pki.make_ca("a1", days=3650))
    spec = nbdtls.blade_leaf("a1", "g1", "g1-blade-0")
    files = nbdtls.leaf_files(spec, authority, now=T0, lifetime=90 * 86400)
    day = datetime.timedelta(days=1)
    assert nbdtls.leaf_action(files, authority, now=T0 + 59 * day, propagation=600) is None
    assert nbdtls.leaf_action(files, authority, now=T0 + 61 * day, propagation=600) == "reissue"
    _at(monkeypatch, T0 + 61 * day)
    renewed = nbdtls.leaf_files(spec, authority, now=T0 + 61 * day, lifetime=90 * 86400)
    assert renewed.keys() == files.keys() and renewed[tls.CLIENT_CERT] != files[tls.CLIENT_CERT]
    assert pki.leaf_info(renewed[tls.SERVER_CERT]).server_names == pki.leaf_info(files[tls.SERVER_CERT]).server_names
    assert nbdtls.leaf_action(renewed, authority, now=T0 + 61 * day, propagation=600) is None


def test_a_ca_rotation_is_trusted_everywhere_before_it_signs(monkeypatch: pytest.MonkeyPatch) -> None:
    year = datetime.timedelta(days=365)
    _at(monkeypatch, T0)
    old = nbdtls.Authority(pki.make_ca("a1", days=3 * 365))
    spec = nbdtls.blade_leaf("a1", "g1", "g1-blade-0")
    leaf = nbdtls.leaf_files(spec, old, now=T0, lifetime=3 * 365 * 86400)
    assert nbdtls.rotate_ca(old, name="a1", now=T0 + year, lifetime=3 * 365 * 86400) is None
    later = T0 + 2 * year + datetime.timedelta(days=1)  # less than a third of the CA's life left
    _at(monkeypatch, later)
    new = nbdtls.rotate_ca(old, name="a1", now=later, lifetime=3 * 365 * 86400)
    assert new is not None and new.previous == (old.signer.cert,)
    assert pki.split_pem(new.bundle(later)) == [new.signer.cert, old.signer.cert]
    # step 1: the leaf keeps its key and certificate and gains the new bundle
    assert nbdtls.leaf_action(leaf, new, now=later, propagation=600) == "rebundle"
    bundled = nbdtls.leaf_files(spec, new, now=later, lifetime=86400, have=leaf)
    assert bundled[tls.CLIENT_CERT] == leaf[tls.CLIENT_CERT] and bundled[tls.CA_CERT] == new.bundle(later)
    assert nbdtls.leaf_action(bundled, new, now=later + datetime.timedelta(seconds=60), propagation=600) is None
    # step 2, once every pod has had the bundle: issued by the new CA
    settled = later + datetime.timedelta(minutes=20)
    assert nbdtls.leaf_action(bundled, new, now=settled, propagation=600) == "reissue"
    _at(monkeypatch, settled)
    reissued = nbdtls.leaf_files(spec, new, now=settled, lifetime=86400)
    assert pki.leaf_info(reissued[tls.CLIENT_CERT]).issuer_key_id == pki.key_id(new.signer.cert)
    # once the old CA has expired it leaves the bundle
    gone = T0 + 3 * year + datetime.timedelta(days=1)
    assert pki.split_pem(new.bundle(gone)) == [new.signer.cert]
    assert nbdtls.Authority.of(new.files(gone)).previous == ()


def test_certificate_lifetimes_are_settings() -> None:
    cfg = settings.OperatorConfig.from_env({"NASBLADE_CERT_LIFETIME": "90s", "NASBLADE_CA_LIFETIME": "1h",
                                            "NASBLADE_CERT_PROPAGATION": "20s"})
    assert (cfg.cert_lifetime, cfg.ca_lifetime, cfg.cert_propagation) == (90.0, 3600.0, 20.0)
    default = settings.OperatorConfig.from_env({})
    assert default.cert_lifetime == 90 * 86400 and default.ca_lifetime == 3650 * 86400
    with pytest.raises(ValueError, match="NASBLADE_CERT_LIFETIME"):
        settings.OperatorConfig.from_env({"NASBLADE_CERT_LIFETIME": "soon"})
