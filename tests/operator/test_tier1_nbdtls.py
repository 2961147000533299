"""The operator issues the TLS credentials (tier-1 API server): a CA per DiskArray, the
controller's server certificate, its access file, the operator's admin certificate and the
CA bundle alone, as Secrets owned by the array, and one certificate per blade pod, owned by
its ClusterGroup; the controller's pod template and every blade pod mount them. The
certificates are checked as TLS would: they load, chain to the array's CA, and carry the
identities the controller's access rule reads. With short lifetimes the operator renews them
in place and replaces the CA in two steps (bundle first, then leaves from the new CA)."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import Controller, Kubectl, assert_clean
from cryptography import x509
from nasblade import grants, pki, tls
from nasblade.nbd import access
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
        "a1-nbd-ca", "a1-nbd-controller", "a1-nbd-admin", "a1-nbd-csi", "a1-nbd-g1-blade-0", "a1-nbd-g1-blade-1",
        "a1-nbd-access", "a1-tls-trust")}
    assert all(s is not None for s in secrets.values()), [n for n, s in secrets.items() if s is None]
    for n, s in secrets.items():
        assert s is not None and s["metadata"]["ownerReferences"][0]["name"] == ("g1" if "blade" in n else "a1")
    assert kubectl.get("secret", "a1-nbd-group-g1") is None  # one certificate per blade, none per group
    # the token Secret made beforehand with the data-path token alone got the other roles' tokens
    tokens = kubectl.get("secret", "a1-control-token")
    assert tokens is not None and set(tokens["data"]) == {"token", "admin-token", "metrics-token", "operator-token",
                                                          "operator-token-sha256", "csi-token", "csi-token-sha256"}
    # the CSI plugin's token is derived from the data-path token that was kept
    assert grants.is_csi(files(tokens)["csi-token"].decode(), files(tokens)["token"].decode())
    # the operator token given beforehand was kept, and its digest is the one the blades get
    assert files(tokens)["operator-token-sha256"].decode() == hashlib.sha256(files(tokens)["operator-token"]).hexdigest()
    ca_files = files(secrets["a1-nbd-ca"])  # type: ignore[arg-type]
    ca = x509.load_pem_x509_certificate(ca_files["ca-cert.pem"])

    # each leaf loads with its key, chains to the CA and names its identity
    assert files(secrets["a1-tls-trust"]) == {"ca-cert.pem": ca_files["ca-cert.pem"]}  # type: ignore[arg-type]
    for name, identity, kind in (("a1-nbd-controller", "controller", "server"),
                                 ("a1-nbd-admin", tls.ADMIN, "client"),
                                 ("a1-nbd-csi", tls.CSI, "client"),
                                 ("a1-nbd-g1-blade-0", "group:g1", "client"),
                                 ("a1-nbd-g1-blade-1", "group:g1", "server")):
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
    # ... and of procinfo and backup only the portion it claimed (status.portions)
    da = kubectl.get("diskarray", "a1")
    assert da is not None
    (claim,) = [p for p in da["status"]["portions"] if p["group"] == "g1"]
    window = policy.window(g1, "procinfo")
    assert window is not None and len(window) == 1 and window == policy.window(g1, "backup")
    assert window[0][0] == claim["index"] * window[0][1] and window[0][1] >= 1 << 20

    # the blades' control-API credential: their group's token (owned by the group), projected
    # into every blade pod as `token` in place of the array's control token
    gt = kubectl.get("secret", "g1-group-token")
    assert gt is not None and gt["metadata"]["ownerReferences"][0]["name"] == "g1"
    assert files(gt) == {"token": grants.group_token(controller.token, "g1").encode()}

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
        assert mounted(pod["spec"], "block-processor", nbdtls.TLS_DIR) == f"a1-nbd-{pod['metadata']['name']}"
        (bp,) = [c for c in pod["spec"]["containers"] if c["name"] == "block-processor"]
        assert {"name": tls.ENV_DIR, "value": nbdtls.TLS_DIR} in bp["env"]
        (tok,) = [v for v in pod["spec"]["volumes"] if v["name"] == "token"]
        assert [src["secret"]["name"] for src in tok["projected"]["sources"]] == ["g1-group-token", "a1-control-token"]
        assert all(i["key"] != "token" for i in tok["projected"]["sources"][1]["secret"]["items"])


def _serial(kubectl: Kubectl, name: str, key: str) -> int:
    secret = kubectl.get("secret", name)
    assert secret is not None, name
    return x509.load_pem_x509_certificate(files(secret)[key]).serial_number


def test_certificates_are_renewed_in_place_and_the_ca_replaced_in_two_steps(
    kubectl: Kubectl, operator: Callable[..., Any], controller: Controller, token_secret: Callable[[str], None],
) -> None:
    """Leaves of 90 s are renewed with a third of their life left (the Secrets keep their names,
    so running pods get the files); a CA of 150 s is replaced at 100 s: first every leaf Secret
    holds both CAs with its old certificate, then, 20 s later, a certificate of the new CA.
    (40 s between the renewal and the CA's replacement: a loaded machine's slow polling must
    not see the renewal only after the replacement.)"""
    token_secret("a1")
    with operator(cert_lifetime=90.0, ca_lifetime=150.0, cert_propagation=20.0) as runner:
        kubectl.apply(array())
        kubectl.apply(group())
        kubectl.wait("diskarray/a1", "condition=Ready", timeout=90)
        wait_until("the blades' certificates", lambda: kubectl.get("secret", "a1-nbd-g1-blade-1"))
        ctl0 = _serial(kubectl, "a1-nbd-controller", "server-cert.pem")
        blade0 = _serial(kubectl, "a1-nbd-g1-blade-0", "client-cert.pem")
        ca = files(kubectl.get("secret", "a1-nbd-ca"))  # type: ignore[arg-type]
        # renewed in place well before they expire (at 60 s of 90)
        wait_until("the controller's certificate renewed",
                   lambda: _serial(kubectl, "a1-nbd-controller", "server-cert.pem") != ctl0, timeout=90)
        wait_until("a blade's certificate renewed",
                   lambda: _serial(kubectl, "a1-nbd-g1-blade-0", "client-cert.pem") != blade0, timeout=90)
        renewed = files(kubectl.get("secret", "a1-nbd-g1-blade-0"))  # type: ignore[arg-type]
        info = pki.leaf_info(renewed["client-cert.pem"])
        assert info.common_name == "group:g1" and info.server and info.client
        # from the array's CA: the one read above, or -- when this machine is slow enough that
        # the renewal is seen only after the CA's replacement began -- the one that replaced it
        now_ca = files(kubectl.get("secret", "a1-nbd-ca"))  # type: ignore[arg-type]
        assert info.issuer_key_id in {pki.key_id(ca["ca-cert.pem"]), pki.key_id(now_ca["ca-cert.pem"])}

        # the CA is replaced with a third of its 150 s left; step 1: bundles hold both CAs
        def rotated() -> dict[str, bytes] | None:
            now = files(kubectl.get("secret", "a1-nbd-ca"))  # type: ignore[arg-type]
            return now if now["ca-cert.pem"] != ca["ca-cert.pem"] else None
        new = wait_until("a new CA", rotated, timeout=90)
        assert new["ca-previous.pem"] == ca["ca-cert.pem"]
        both = [new["ca-cert.pem"], ca["ca-cert.pem"]]

        def bundled(name: str) -> bool:
            got = files(kubectl.get("secret", name))  # type: ignore[arg-type]
            return pki.split_pem(got["ca-cert.pem"]) == both
        wait_until("the controller's Secret holding both CAs", lambda: bundled("a1-nbd-controller"), timeout=30)
        # ... with its certificate still from the old CA: a blade that has not yet received the
        # bundle still trusts the controller
        still = files(kubectl.get("secret", "a1-nbd-controller"))  # type: ignore[arg-type]
        assert pki.leaf_info(still["server-cert.pem"]).issuer_key_id == pki.key_id(ca["ca-cert.pem"])
        for name in ("a1-nbd-admin", "a1-nbd-g1-blade-0", "a1-tls-trust"):
            wait_until(f"{name} holding both CAs", lambda name=name: bundled(name), timeout=30)
        # step 2, after the propagation time: the leaves come from the new CA
        def from_new(name: str, key: str) -> bool:
            got = files(kubectl.get("secret", name))  # type: ignore[arg-type]
            return pki.leaf_info(got[key]).issuer_key_id == pki.key_id(new["ca-cert.pem"])
        for name, key in (("a1-nbd-controller", "server-cert.pem"), ("a1-nbd-g1-blade-1", "server-cert.pem")):
            wait_until(f"{name} issued by the new CA", lambda name=name, key=key: from_new(name, key), timeout=40)
        events = json.loads(kubectl("get", "events", "--field-selector", "reason=Certificates", "-o", "json").stdout)["items"]
        assert {e["involvedObject"]["name"] for e in events} >= {"a1", "g1"}
    assert_clean(runner)
