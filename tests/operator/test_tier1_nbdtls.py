"""The operator issues the NBD TLS credentials (tier-1 API server): a CA per DiskArray, the
controller's server certificate, its access file, the operator's admin certificate and one
client certificate per cluster group, as Secrets owned by the array; the controller's pod
template and every blade pod mount them. The certificates are checked as TLS would: they load,
chain to the array's CA, and carry the identities the controller's access rule reads."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import Controller, Kubectl, assert_clean
from cryptography import x509
from nasblade.nbd import access, pki, tls
from nasblade_operator import nbdtls
from test_tier1_operator import array, group, wait_until

pytestmark = pytest.mark.tier1


def files(secret: dict[str, Any]) -> dict[str, bytes]:
    return {k: base64.b64decode(v) for k, v in secret["data"].items()}


def mounted(pod_spec: dict[str, Any], container: str, path: str) -> str:
    (c,) = [c for c in pod_spec["containers"] if c["name"] == container]
    (vol,) = [m["name"] for m in c["volumeMounts"] if m["mountPath"] == path]
    (v,) = [v for v in pod_spec["volumes"] if v["name"] == vol]
    return str(v["secret"]["secretName"])


def test_nbd_tls_secrets_are_made_owned_and_mounted(
    kubectl: Kubectl, operator: Callable[[], Any], controller: Controller, token_secret: Callable[[str], None],
    tmp_path: Path,
) -> None:
    token_secret("a1")
    with operator() as runner:
        kubectl.apply(array())
        kubectl.apply(group())
        kubectl.wait("diskarray/a1", "condition=Ready", timeout=90)
        kubectl.wait("clustergroup/g1", "condition=Ready", timeout=60)
        pods = wait_until("blade pods", lambda: kubectl.list("pod", "nasblade.io/cluster-group=g1"))
    assert_clean(runner)

    secrets = {n: kubectl.get("secret", n) for n in (
        "a1-nbd-ca", "a1-nbd-controller", "a1-nbd-admin", "a1-nbd-group-g1", "a1-nbd-access")}
    assert all(s is not None for s in secrets.values()), [n for n, s in secrets.items() if s is None]
    for s in secrets.values():
        assert s is not None and s["metadata"]["ownerReferences"][0]["name"] == "a1"
    ca_files = files(secrets["a1-nbd-ca"])  # type: ignore[arg-type]
    ca = x509.load_pem_x509_certificate(ca_files["ca-cert.pem"])

    # each leaf loads with its key, chains to the CA and names its identity
    for name, identity, kind in (("a1-nbd-controller", "controller", "server"),
                                 ("a1-nbd-admin", tls.ADMIN, "client"),
                                 ("a1-nbd-group-g1", "group:g1", "client")):
        d = pki.write_dir(tmp_path / name, files(secrets[name]))  # type: ignore[arg-type]
        (tls.server_context if kind == "server" else tls.client_context)(d)
        cert = x509.load_pem_x509_certificate((d / f"{kind}-cert.pem").read_bytes())
        cert.verify_directly_issued_by(ca)
        assert (d / "ca-cert.pem").read_bytes() == ca_files["ca-cert.pem"]
        assert pki.common_name((d / f"{kind}-cert.pem").read_bytes()) == identity
    server = x509.load_pem_x509_certificate(files(secrets["a1-nbd-controller"])["server-cert.pem"])  # type: ignore[arg-type]
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert f"a1-controller.{kubectl.namespace}.svc" in sans.get_values_for_type(x509.DNSName)

    # the access file: g1 opens its two file systems and the shared LUs, nothing else
    policy = access.AccessPolicy.from_json(json.loads(files(secrets["a1-nbd-access"])["access.json"]))  # type: ignore[arg-type]
    g1 = tls.Identity("group:g1")
    assert policy.permits(g1, "fs-home") and policy.permits(g1, "fs-scratch") and policy.permits(g1, "procinfo")
    assert not policy.permits(tls.Identity("group:g2"), "fs-home")

    # mounted: the controller's server certificate and access file, each blade's group certificate
    sts = kubectl.get("statefulset", "a1-controller")
    assert sts is not None
    tpl = sts["spec"]["template"]["spec"]
    assert mounted(tpl, "controller", nbdtls.TLS_DIR) == "a1-nbd-controller"
    assert mounted(tpl, "controller", nbdtls.ACCESS_DIR) == "a1-nbd-access"
    args = tpl["containers"][0]["args"]
    assert "--tls-dir" in args and "--nbd-access" in args
    assert len(pods) == 2
    for pod in pods:
        assert mounted(pod["spec"], "block-processor", nbdtls.TLS_DIR) == "a1-nbd-group-g1"
        (bp,) = [c for c in pod["spec"]["containers"] if c["name"] == "block-processor"]
        assert {"name": tls.ENV_DIR, "value": nbdtls.TLS_DIR} in bp["env"]
