"""The NBD TLS objects the operator builds (``nasblade_operator.nbdtls``), no API server:
the controller mounts its server certificate and access file, a blade's block processor its
group's client certificate; the access file follows ``fileSystems[].clusterGroup``; the
certificates made from the CA Secret load into TLS contexts and carry the right identity."""

from __future__ import annotations

import base64
import json
from pathlib import Path

from cryptography import x509
from nasblade.nbd import access, pki, tls
from nasblade_operator import nbdtls
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


def test_blade_block_processor_gets_its_group_certificate_only() -> None:
    pod = cg_builders.blade_pod(group="g1", namespace="ns", index=0, spec=GROUP, portion=0, portion_size=2**20,
                                version="1", image="img", file_systems=ARRAY.file_systems_of("g1"))
    bp, fp = pod["spec"]["containers"]
    assert _mounted(pod["spec"], bp, nbdtls.TLS_DIR) == "a1-nbd-group-g1"
    assert {"name": tls.ENV_DIR, "value": nbdtls.TLS_DIR} in bp["env"]
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
    assert nbdtls.access_secret("a1", policy) == secret  # same input, same object


def test_certificates_from_the_secrets_load_and_name_the_service(tmp_path: Path) -> None:
    ca = pki.make_ca("a1")
    names = nbdtls.server_names("a1", "ns", "cluster.local")
    assert "a1-controller.ns.svc" in names  # what blades dial
    server = nbdtls.secret("a1-nbd-controller", "a1",
                           pki.server_files(ca, pki.issue(ca, "controller", server_names=names, server=True)))
    client = nbdtls.secret("a1-nbd-group-g1", "a1", pki.client_files(ca, pki.issue(ca, "group:g1")))
    sdir = pki.write_dir(tmp_path / "s", nbdtls.files_of(server))
    cdir = pki.write_dir(tmp_path / "c", nbdtls.files_of(client))
    tls.server_context(sdir)
    tls.client_context(cdir)
    cert = x509.load_pem_x509_certificate((sdir / tls.SERVER_CERT).read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(sans.get_values_for_type(x509.DNSName)) == set(names)
    assert pki.common_name((cdir / tls.CLIENT_CERT).read_bytes()) == "group:g1"
