"""Component tests: the control and blade APIs over HTTPS with the array's certificates, and
certificates renewed and a CA replaced under running processes.

A controller started with ``--tls-dir`` and ``--api-tls`` serves its control API over HTTPS
with its NBD server certificate; a block processor started with ``--api-tls-dir`` serves the
blade API over HTTPS with the blade's own certificate, and reaches the controller over HTTPS
and NBD over TLS with that same certificate (``NASBLADE_NBD_TLS_DIR``), as a blade pod does.
The operator's clients (``sessions``, ``arrayapi``, ``bladeapi``) call both and check them
against the array's CA and their names. Then the credential files are replaced as the kubelet
replaces a renewed Secret's: the next connections see the new certificate, no process restarts,
and during a CA rotation peers that hold the two-CA bundle keep talking while a peer that
trusts only the old CA is refused (why ``nasblade_operator.nbdtls`` hands out the bundle
before it issues from the new CA).
"""

from __future__ import annotations

import asyncio
import http.client
import os
import signal
import socket
import ssl
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from ctlharness import TOKEN, Controller
from nasblade import pki, ready, tls
from nasblade.controller.apiclient import ControlAPIError, ControlClient
from nasblade.nbd import access
from nasblade.nbd.client import NBDBlockDevice
from nasblade_operator import arrayapi, bladeapi, sessions

pytestmark = pytest.mark.component

MiB = 1 << 20
BLADE_TOKEN = "blade-token-for-tests"


class Creds:
    """One array's credentials as the operator lays them out, one directory per holder."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.ca = pki.make_ca("test array CA")
        self.bundle = self.ca.cert
        self.write_server(self.ca)
        self.write("g1", self.ca, pki.issue(self.ca, "group:g1", server_names=["b0", "a1-blades"],
                                            server=True, client=True))
        self.write("admin", self.ca, pki.issue(self.ca, "admin"))

    def write_server(self, signer: pki.KeyPair) -> bytes:
        leaf = pki.issue(signer, "controller", server_names=["localhost", "127.0.0.1"], server=True)
        pki.write_dir(self.root / "server", {tls.CA_CERT: self.bundle, tls.SERVER_CERT: leaf.cert,
                                             tls.SERVER_KEY: leaf.key})
        return leaf.cert

    def write(self, who: str, signer: pki.KeyPair, leaf: pki.KeyPair) -> None:
        files = {tls.CA_CERT: self.bundle, tls.CLIENT_CERT: leaf.cert, tls.CLIENT_KEY: leaf.key}
        if pki.leaf_info(leaf.cert).server:
            files |= {tls.SERVER_CERT: leaf.cert, tls.SERVER_KEY: leaf.key}
        pki.write_dir(self.root / who, files)

    def rebundle(self, who: str) -> None:
        pki.write_dir(self.root / who, {tls.CA_CERT: self.bundle})

    def dir(self, who: str) -> Path:
        return self.root / who


def der(pem: bytes) -> bytes:
    return ssl.PEM_cert_to_DER_cert(pem.decode())


@pytest.fixture
def creds(tmp_path: Path) -> Creds:
    return Creds(tmp_path / "creds")


@pytest.fixture
def https_controller(controller_factory: Callable[..., Controller], creds: Creds, tmp_path: Path,
                     monkeypatch: pytest.MonkeyPatch) -> Controller:
    access_file = tmp_path / "access.json"
    access.write(access_file, access.AccessPolicy.of_groups({"g1": ["fs-a"]}))
    # the harness's ControlClient finds its credentials where a blade's does
    monkeypatch.setenv(tls.ENV_DIR, str(creds.dir("g1")))
    ctl = controller_factory(extra=["--tls-dir", str(creds.dir("server")), "--api-tls",
                                    "--nbd-access", str(access_file)])
    for lu in ("fs-a", "fs-b"):
        ctl.client.create_lu(lu, 16 * MiB)
    return ctl


def https_peer(api: str, context: ssl.SSLContext, name: str = "localhost") -> bytes:
    host, port = api.removeprefix("https://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as s, \
            context.wrap_socket(s, server_hostname=name) as t:
        cert = t.getpeercert(binary_form=True)
    assert cert is not None
    return cert


def nbd_peer(ctl: Controller, creds: Creds, who: str, lu: str = "fs-a") -> bytes:
    port = ctl.nbd.rsplit(":", 1)[1]
    with NBDBlockDevice.connect(f"nbd://localhost:{port}/{lu}", tls_dir=str(creds.dir(who))) as dev:
        assert isinstance(dev._sock, ssl.SSLSocket)
        cert = dev._sock.getpeercert(binary_form=True)
    assert cert is not None
    return cert


def test_the_control_api_is_https_only_and_still_wants_the_token(https_controller: Controller,
                                                                  creds: Creds) -> None:
    ctl = https_controller
    assert ctl.api.startswith("https://")
    assert {lu["name"] for lu in ctl.client.list_lus()} >= {"fs-a", "fs-b"}
    # plaintext HTTP on the port gets no answer: the token would have crossed in clear
    host, port = ctl.api.removeprefix("https://").rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    with pytest.raises((http.client.HTTPException, OSError)):
        conn.request("GET", "/v1/lus", headers={"Authorization": f"Bearer {TOKEN}"})
        assert conn.getresponse().status >= 400
    conn.close()
    # a client that does not trust the array's CA refuses the server (the system's CAs do not)
    with pytest.raises(ssl.SSLCertVerificationError):
        ControlClient(ctl.api, TOKEN, ssl_context=ssl.create_default_context()).list_lus()
    # TLS does not replace the token
    with pytest.raises(ControlAPIError) as refused:
        ControlClient(ctl.api, "not-the-token").list_lus()
    assert refused.value.status == 401
    assert ctl.proc is not None and ctl.proc.poll() is None


@pytest.fixture
def start_blade(https_controller: Controller, creds: Creds, tmp_path: Path) -> Iterator[Callable[[], str]]:
    """A block processor as a blade pod runs it: HTTPS and NBD/TLS to the controller with the
    blade's certificate, its own API over HTTPS with the same certificate. Returns its API URL."""
    procs: list[subprocess.Popen[bytes]] = []

    def start() -> str:
        (tmp_path / "ctl-token").write_text(TOKEN)
        (tmp_path / "blade-token").write_text(BLADE_TOKEN)
        port = https_controller.nbd.rsplit(":", 1)[1]
        api_port = https_controller.api.rsplit(":", 1)[1]
        args = [sys.executable, "-m", "nasblade", "block-processor", "--blade", "b0", "--group", "g1",
                "--controller-nbd", f"localhost:{port}", "--controller-api", f"https://localhost:{api_port}",
                "--token-file", str(tmp_path / "ctl-token"), "--procinfo-lu", "", "--program-lu", "",
                "--own", "fs-a", "--nbd-unix", str(tmp_path / "nbd.sock"), "--local-unix", str(tmp_path / "local.sock"),
                "--api-listen", "127.0.0.1:0", "--api-token-file", str(tmp_path / "blade-token"),
                "--api-tls-dir", str(creds.dir("g1"))]
        env = {**os.environ, tls.ENV_DIR: str(creds.dir("g1"))}
        with open(tmp_path / "bp.log", "ab") as log:
            proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=log, env=env)
        procs.append(proc)
        return str(ready.wait_ready(proc, timeout=60)["endpoints"]["api"])

    yield start
    for p in procs:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    log = (tmp_path / "bp.log").read_text() if (tmp_path / "bp.log").exists() else ""
    assert "Traceback" not in log, log


def test_the_operators_clients_check_the_controller_and_the_blade(https_controller: Controller, creds: Creds,
                                                                  start_blade: Callable[[], str]) -> None:
    # the blade reserved fs-a through the HTTPS control API and opened it over NBD/TLS
    api = start_blade()
    assert api.startswith("https://127.0.0.1:")
    assert https_controller.client.get_reservation("fs-a")["holder"] == "b0"

    async def calls() -> None:
        trusting, naive = sessions.Sessions(), sessions.Sessions()
        trusting.trust(creds.bundle)
        try:
            lus = await arrayapi.ArrayAPI(trusting, https_controller.api, token=TOKEN).list_lus()
            assert {"fs-a", "fs-b"} <= set(lus)
            status = await bladeapi.status(trusting, api, blade="b0", token=BLADE_TOKEN)
            assert status.failed is None
            # the certificate must name the pod the operator meant (dialled by IP)
            with pytest.raises(bladeapi.BladeUnavailable, match="b1"):
                await bladeapi.status(trusting, api, blade="b1", token=BLADE_TOKEN)
            # an operator that does not trust the array's CA reaches neither
            with pytest.raises(bladeapi.BladeUnavailable):
                await bladeapi.status(naive, api, blade="b0", token=BLADE_TOKEN)
            with pytest.raises(arrayapi.ArrayUnavailable):
                await arrayapi.ArrayAPI(naive, https_controller.api, token=TOKEN).list_lus()
        finally:
            await trusting.close()
            await naive.close()

    asyncio.run(calls())


def test_renewed_certificates_and_a_new_ca_are_used_without_a_restart(https_controller: Controller,
                                                                      creds: Creds) -> None:
    ctl = https_controller
    assert ctl.proc is not None
    pid = ctl.proc.pid
    first = der((creds.dir("server") / tls.SERVER_CERT).read_bytes())
    g1 = tls.client_context(creds.dir("g1"))
    assert https_peer(ctl.api, g1) == first and nbd_peer(ctl, creds, "g1") == first

    # a renewed leaf (same CA): the next handshakes present it, on both ports
    second = der(creds.write_server(creds.ca))
    assert second != first
    assert https_peer(ctl.api, g1) == second and nbd_peer(ctl, creds, "g1") == second

    # a CA rotation, in the operator's order: everyone gets the two-CA bundle, then the
    # controller a leaf from the new CA; the blade's leaf is still from the old one
    new_ca = pki.make_ca("test array CA, replacement")
    creds.bundle = new_ca.cert + creds.ca.cert
    creds.rebundle("g1")
    third = der(creds.write_server(new_ca))
    assert nbd_peer(ctl, creds, "g1") == third  # the server trusts the old CA's client, the client the new server
    assert https_peer(ctl.api, tls.client_context(creds.dir("g1"))) == third
    # the blade's cached HTTPS context followed its files (it trusted only the old CA before)
    assert {lu["name"] for lu in ctl.client.list_lus()} >= {"fs-a"}
    # a peer that still trusts only the old CA is refused: the reason bundles go out first
    with pytest.raises(ssl.SSLCertVerificationError):
        nbd_peer(ctl, creds, "admin")
    creds.rebundle("admin")
    assert nbd_peer(ctl, creds, "admin", lu="fs-b") == third
    assert ctl.proc.poll() is None and ctl.proc.pid == pid


def test_a_broken_renewal_keeps_the_last_good_certificate(https_controller: Controller, creds: Creds) -> None:
    ctl = https_controller
    good = der((creds.dir("server") / tls.SERVER_CERT).read_bytes())
    other = pki.issue(creds.ca, "controller", server_names=["localhost"], server=True)
    # a certificate whose key is not there (half a renewal): refused at load, the old pair stays
    pki.write_dir(creds.dir("server"), {tls.SERVER_CERT: other.cert})
    g1 = tls.client_context(creds.dir("g1"))
    assert https_peer(ctl.api, g1) == good and nbd_peer(ctl, creds, "g1") == good
    pki.write_dir(creds.dir("server"), {tls.SERVER_KEY: other.key})  # the rest of it arrives
    assert https_peer(ctl.api, g1) == der(other.cert) == nbd_peer(ctl, creds, "g1")
    assert "unreadable, keeping the last good ones" in ctl.log()
