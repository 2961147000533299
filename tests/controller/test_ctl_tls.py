"""Component tests: NBD over TLS with mutual X.509 authentication and per-group LU access.

A controller started with ``--tls-dir`` and ``--nbd-access`` (certificates from
``nasblade.pki``, the operator's and ``nasblade up``'s generator) is driven by libnbd's
``nbdinfo``/``nbdcopy`` and qemu's ``qemu-img`` with TLS credentials, and by our own clients
(``NBDBlockDevice``, the block processor's ``UpstreamPool``). A client without a certificate,
with a certificate of another CA, or in plaintext is refused; a group's certificate opens only
its group's LUs and the shared ones, and ``NBD_OPT_LIST`` shows it only those; the controller
keeps serving after every refusal.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import json
import os
import ssl
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from ctlharness import Controller
from nasblade import pki, tls
from nasblade.blockproc.upstream import UpstreamPool
from nasblade.nbd import access, proto
from nasblade.nbd.client import NBDBlockDevice, NBDError

pytestmark = pytest.mark.component

MiB = 1 << 20


@dataclass
class Array:
    ctl: Controller
    creds: Path  # one credentials directory per identity: admin, g1, g2, foreign, server
    access_file: Path

    @property
    def port(self) -> int:
        return int(self.ctl.nbd.rsplit(":", 1)[1])

    def url(self, lu: str, who: str | None) -> str:
        """An NBD URI as libnbd takes it (``nbds`` + ``tls-certificates`` with credentials)."""
        if who is None:
            return f"nbd://localhost:{self.port}/{lu}"
        return f"nbds://localhost:{self.port}/{lu}?tls-certificates={self.creds / who}"


def run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    if check:
        assert res.returncode == 0, f"{cmd}: {res.stdout}\n{res.stderr}"
    return res


def make_credentials(root: Path) -> None:
    ca = pki.make_ca("nasblade test array CA")
    server = pki.issue(ca, "controller", server_names=["localhost", "127.0.0.1"], server=True)
    pki.write_dir(root / "server", pki.server_files(ca, server))
    pki.write_dir(root / "admin", pki.client_files(ca, pki.issue(ca, "admin")))
    for g in ("g1", "g2"):
        pki.write_dir(root / g, pki.client_files(ca, pki.issue(ca, f"group:{g}")))
    pki.write_dir(root / "nobody", pki.client_files(ca, pki.issue(ca, "somebody-else")))
    pki.write_dir(root / "csi", pki.client_files(ca, pki.issue(ca, tls.CSI)))
    # a certificate that claims to be admin, from a CA the array does not trust
    other = pki.make_ca("another CA")
    pki.write_dir(root / "foreign", pki.client_files(ca, pki.issue(other, "admin")))
    pki.write_dir(root / "nocert", {"ca-cert.pem": ca.cert})


@pytest.fixture
def array(controller_factory: Callable[..., Controller], tmp_path: Path) -> Array:
    creds = tmp_path / "creds"
    make_credentials(creds)
    access_file = tmp_path / "access.json"
    access.write(access_file, access.AccessPolicy.of_groups({"g1": ["fs-a"], "g2": ["fs-b"]}))
    ctl = controller_factory(extra=["--tls-dir", str(creds / "server"),
                                    "--nbd-access", str(access_file)])
    for lu in ("fs-a", "fs-b", "procinfo"):
        ctl.client.create_lu(lu, 16 * MiB)
    return Array(ctl, creds, access_file)


def test_nbdcopy_reads_an_lu_over_tls_what_our_client_wrote(array: Array, tmp_path: Path) -> None:
    data = os.urandom(3 * MiB)
    with NBDBlockDevice.connect(f"nbd://localhost:{array.port}/fs-a",
                                tls_dir=str(array.creds / "g1")) as dev:
        assert isinstance(dev._sock, ssl.SSLSocket)
        dev.pwrite(MiB, data, fua=True)
    out = tmp_path / "copy.raw"
    run("nbdcopy", array.url("fs-a", "g1"), str(out))
    got = out.read_bytes()
    assert hashlib.sha256(got[MiB : 4 * MiB]).digest() == hashlib.sha256(data).digest()
    info = json.loads(run("nbdinfo", "--json", array.url("fs-a", "admin")).stdout)
    assert info["exports"][0]["export-size"] == 16 * MiB
    assert info["TLS"] is True


def test_qemu_img_with_tls_creds_reads_an_lu(array: Array) -> None:
    res = run("qemu-img", "info", "--output=json", "--object",
              f"tls-creds-x509,id=tls0,endpoint=client,dir={array.creds / 'admin'}",
              "--image-opts", f"driver=nbd,host=localhost,port={array.port},export=fs-b,tls-creds=tls0")
    assert json.loads(res.stdout)["virtual-size"] == 16 * MiB


@pytest.mark.parametrize("who, expect", [
    (None, "requires TLS"),  # plaintext: NBD_REP_ERR_TLS_REQD
    ("nocert", ""),  # TLS without a client certificate: the handshake is refused
    ("foreign", ""),  # a certificate of another CA (claiming admin): refused
])
def test_clients_without_a_certificate_of_the_array_are_refused(array: Array, who: str | None,
                                                                expect: str) -> None:
    res = run("nbdinfo", "--size", array.url("fs-a", who), check=False)
    assert res.returncode != 0 and expect in res.stderr, res
    res = run("nbdinfo", "--list", "--json", array.url("", who), check=False)
    assert res.returncode != 0 and "fs-a" not in res.stdout, res
    # the controller keeps serving
    assert run("nbdinfo", "--size", array.url("fs-a", "admin")).stdout.strip() == str(16 * MiB)


def test_our_client_without_credentials_is_refused(array: Array) -> None:
    with pytest.raises(NBDError):
        NBDBlockDevice.connect(f"nbd://localhost:{array.port}/fs-a", tls_dir=None).close()
    with pytest.raises((ssl.SSLError, OSError)):
        NBDBlockDevice.connect(f"nbd://localhost:{array.port}/fs-a",
                               tls_dir=str(array.creds / "foreign")).close()


def test_a_group_opens_its_own_and_shared_lus_only(array: Array) -> None:
    assert run("nbdinfo", "--size", array.url("fs-a", "g1")).returncode == 0
    assert run("nbdinfo", "--size", array.url("procinfo", "g1")).returncode == 0
    res = run("nbdinfo", "--size", array.url("fs-b", "g1"), check=False)
    assert res.returncode != 0 and "policy" in res.stderr
    with pytest.raises(NBDError) as err:
        NBDBlockDevice.connect(f"nbd://localhost:{array.port}/fs-b", tls_dir=str(array.creds / "g1"))
    assert err.value.errno == errno.EACCES
    # with a reservation identity in the export name too
    with pytest.raises(NBDError):
        NBDBlockDevice.connect(f"nbd://localhost:{array.port}/fs-b", holder="x", epoch=1,
                               tls_dir=str(array.creds / "g1"))
    # a valid certificate with no known identity opens nothing
    res = run("nbdinfo", "--size", array.url("procinfo", "nobody"), check=False)
    assert res.returncode != 0 and "policy" in res.stderr


def test_listing_shows_a_client_only_what_it_may_open(array: Array) -> None:
    def listed(who: str) -> list[str]:
        url = f"nbds://localhost:{array.port}/?tls-certificates={array.creds / who}"
        return sorted(e["export-name"] for e in json.loads(run("nbdinfo", "--list", "--json", url).stdout)["exports"])

    assert listed("admin") == ["fs-a", "fs-b", "procinfo"]
    assert listed("g1") == ["fs-a", "procinfo"]
    assert listed("g2") == ["fs-b", "procinfo"]


def test_the_csi_plugin_opens_the_csi_drivers_lus_only(array: Array) -> None:
    """The CSI driver's controller plugin (certificate ``csi``) formats, grows and reads its
    volumes, snapshots and catalog over NBD, and nothing else: not a group's file system, not
    the shared LUs; ``NBD_OPT_LIST`` shows it only its own."""
    for lu in ("pv-x", "sn-y", "csi-catalog"):
        array.ctl.client.create_lu(lu, 4 * MiB)
    data = os.urandom(64 << 10)
    with NBDBlockDevice.connect(f"nbd://localhost:{array.port}/pv-x", tls_dir=str(array.creds / "csi")) as dev:
        assert not dev.read_only
        dev.pwrite(0, data, fua=True)
        assert bytes(dev.pread(0, len(data))) == data
    assert run("nbdinfo", "--size", array.url("csi-catalog", "csi")).stdout.strip() == str(4 * MiB)
    for lu in ("fs-a", "procinfo"):
        res = run("nbdinfo", "--size", array.url(lu, "csi"), check=False)
        assert res.returncode != 0 and "policy" in res.stderr, res
    array.ctl.client.create_lu("fs-home", 4 * MiB)
    with pytest.raises(NBDError) as err:
        NBDBlockDevice.connect(f"nbd://localhost:{array.port}/fs-home", tls_dir=str(array.creds / "csi"))
    assert err.value.errno == errno.EACCES
    url = f"nbds://localhost:{array.port}/?tls-certificates={array.creds / 'csi'}"
    listed = sorted(e["export-name"] for e in json.loads(run("nbdinfo", "--list", "--json", url).stdout)["exports"])
    assert listed == ["csi-catalog", "pv-x", "sn-y"]


def test_a_moved_file_system_follows_the_access_file(array: Array) -> None:
    assert run("nbdinfo", "--size", array.url("fs-b", "g1"), check=False).returncode != 0
    access.write(array.access_file, access.AccessPolicy.of_groups({"g1": ["fs-a", "fs-b"]}))
    assert run("nbdinfo", "--size", array.url("fs-b", "g1")).returncode == 0
    assert run("nbdinfo", "--size", array.url("fs-b", "g2"), check=False).returncode != 0


def test_the_block_processor_pool_speaks_tls_and_is_refused_other_groups(array: Array) -> None:
    async def main() -> None:
        g1 = tls.client_context(array.creds / "g1")
        pool = UpstreamPool(export="fs-a", host="localhost", port=array.port, tls=g1, retry_for=1)
        await pool.start()
        try:
            reply = await pool.request(proto.Cmd.WRITE, 0, 4096, payload=b"x" * 4096)
            assert reply.error == 0
            reply = await pool.request(proto.Cmd.READ, 0, 4096)
            assert reply.data == b"x" * 4096
        finally:
            await pool.close()
        other = UpstreamPool(export="fs-b", host="localhost", port=array.port, tls=g1, retry_for=1)
        with pytest.raises(OSError) as err:
            await other.start()
        assert err.value.errno == errno.EACCES
        plain = UpstreamPool(export="fs-a", host="localhost", port=array.port, tls=None, retry_for=1)
        with pytest.raises(OSError):
            await plain.start()

    asyncio.run(main())


def test_blades_open_the_program_lu_read_only(array: Array) -> None:
    """The software catalog is shared but read-only for groups: a group's export carries
    NBD_FLAG_READ_ONLY and a WRITE sent anyway (past our client's own check) gets EPERM and
    changes nothing; admin writes it."""
    array.ctl.client.create_lu("program", 16 * MiB)
    data = os.urandom(64 * 1024)
    with NBDBlockDevice.connect(f"nbd://localhost:{array.port}/program",
                                tls_dir=str(array.creds / "admin")) as dev:
        assert not dev.read_only
        dev.pwrite(0, data, fua=True)
    info = json.loads(run("nbdinfo", "--json", array.url("program", "g1")).stdout)
    assert info["exports"][0]["is_read_only"] is True
    with NBDBlockDevice.connect(f"nbd://localhost:{array.port}/program",
                                tls_dir=str(array.creds / "g1")) as dev:
        assert dev.read_only and dev.pread(0, len(data)) == data
        with pytest.raises(PermissionError):  # the server's EPERM reply
            dev._request(proto.Cmd.WRITE, 0, 4096, payload=memoryview(bytes(4096)))
        with pytest.raises(PermissionError):
            dev._request(proto.Cmd.WRITE_ZEROES, 0, 4096)
        assert dev.pread(0, len(data)) == data  # the connection serves on
    # a group's own LU stays writable
    with NBDBlockDevice.connect(f"nbd://localhost:{array.port}/fs-a",
                                tls_dir=str(array.creds / "g1")) as dev:
        assert not dev.read_only
        dev.pwrite(0, data, fua=True)


def test_a_group_reaches_only_its_portion_of_the_shared_procinfo_and_backup_lus(array: Array) -> None:
    """The access file's windows: g1 owns the first MiB of procinfo (and of backup), g2 the
    second. A group's READ, WRITE, WRITE_ZEROES or TRIM outside its portion gets EPERM (libnbd's
    nbdcopy as well as our client) and changes nothing; the connection serves on; admin reaches
    all of it."""
    array.ctl.client.create_lu("backup", 16 * MiB)
    access.write(array.access_file, access.AccessPolicy.of_groups(
        {"g1": ["fs-a"], "g2": ["fs-b"]}, portions={"g1": (0, MiB), "g2": (MiB, MiB)}))
    theirs = os.urandom(4096)
    with NBDBlockDevice.connect(f"nbd://localhost:{array.port}/procinfo", tls_dir=str(array.creds / "g2")) as dev:
        dev.pwrite(MiB, theirs, fua=True)  # g2's own portion
    with NBDBlockDevice.connect(f"nbd://localhost:{array.port}/procinfo", tls_dir=str(array.creds / "g1")) as dev:
        dev.pwrite(MiB - 4096, b"m" * 4096, fua=True)  # the last block of g1's own portion
        assert dev.pread(0, 4096) == bytes(4096)
        for cmd, offset, payload in ((proto.Cmd.WRITE, MiB, memoryview(bytes(4096))),
                                     (proto.Cmd.WRITE, MiB - 2048, memoryview(bytes(4096))),  # straddles
                                     (proto.Cmd.WRITE_ZEROES, MiB, None), (proto.Cmd.TRIM, 2 * MiB, None),
                                     (proto.Cmd.READ, MiB, None)):
            with pytest.raises(PermissionError):
                dev._request(cmd, offset, 4096, payload=payload)
        assert dev.pread(MiB - 4096, 4096) == b"m" * 4096  # the connection serves on
    res = run("nbdcopy", array.url("procinfo", "g1"), "null:", check=False)  # reads all 16 MiB
    assert res.returncode != 0 and "Operation not permitted" in res.stderr
    with NBDBlockDevice.connect(f"nbd://localhost:{array.port}/procinfo", tls_dir=str(array.creds / "admin")) as dev:
        assert dev.pread(MiB, 4096) == theirs  # g1 changed nothing of g2's
    with NBDBlockDevice.connect(f"nbd://localhost:{array.port}/backup", tls_dir=str(array.creds / "g2")) as dev:
        dev.pwrite(MiB, theirs, fua=True)
        with pytest.raises(PermissionError):
            dev.pwrite(0, theirs, fua=True)
    # a group's own LU has no window
    with NBDBlockDevice.connect(f"nbd://localhost:{array.port}/fs-a", tls_dir=str(array.creds / "g1")) as dev:
        dev.pwrite(8 * MiB, theirs, fua=True)
