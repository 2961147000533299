"""The node plugin's kubelet registrations, one socket per CSI driver name
(``nasblade_csi.registration.Registrations``), without a kubelet: the test plays the kubelet's
part and asks each socket for its ``GetInfo``."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from nasblade_csi import registration
from nasblade_csi.registration import LabelledDrivers, Registrations, socket_path

A1 = "a1.storage.nas.nasblade.io"
B2 = "b2.storage.nas.nasblade.io"
ENDPOINT = "/var/lib/kubelet/plugins/nas.nasblade.io/csi.sock"


@pytest.fixture
def registry() -> Iterator[Path]:
    # short: a Unix socket's path is limited to 107 bytes
    d = Path(tempfile.mkdtemp(prefix="reg-", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def get_info(sock: str) -> Any:
    with grpc.insecure_channel(f"unix://{sock}") as channel:
        stub = registration.rpb_grpc.RegistrationStub(channel)
        return stub.GetInfo(registration.rpb.InfoRequest(), timeout=10)


def test_one_socket_per_name_each_answering_its_own_name(registry: Path) -> None:
    regs = Registrations(str(registry), f"unix://{ENDPOINT}")
    try:
        regs.sync([A1, B2])
        assert regs.names == {A1, B2}
        assert sorted(p.name for p in registry.iterdir()) == [f"{A1}-reg.sock", f"{B2}-reg.sock"]
        for name in (A1, B2):
            info = get_info(socket_path(str(registry), name))
            assert (info.type, info.name, info.endpoint) == ("CSIPlugin", name, ENDPOINT)
            assert list(info.supported_versions) == ["1.0.0"]

        regs.sync([A1])  # B2's driver is gone: its socket too (the kubelet unregisters it)
        assert regs.names == {A1}
        assert not Path(socket_path(str(registry), B2)).exists()
        assert get_info(socket_path(str(registry), A1)).name == A1

        regs.sync([A1, B2])  # and back
        assert get_info(socket_path(str(registry), B2)).name == B2
    finally:
        regs.close()
    assert list(registry.iterdir()) == []
    assert regs.names == frozenset()


@pytest.mark.parametrize("bad", ["Upper.nasblade.io", "-a.nasblade.io", "a.nasblade.io.", "a_b.io",
                                 "x" * 64, "", "a/b"])
def test_an_invalid_name_is_logged_and_skipped(registry: Path, bad: str, caplog: pytest.LogCaptureFixture) -> None:
    regs = Registrations(str(registry), ENDPOINT)
    try:
        regs.sync([bad, A1])
        assert regs.names == {A1}
        assert [p.name for p in registry.iterdir()] == [f"{A1}-reg.sock"]
        assert f"{bad!r} is not a CSI driver name" in caplog.text
    finally:
        regs.close()
    assert list(registry.iterdir()) == []


def test_valid_names() -> None:
    assert registration.valid_name("nas.nasblade.io")
    assert registration.valid_name("a" * 63)
    assert registration.valid_name("0-a.b")
    assert not registration.valid_name("a" * 64)


def test_the_kubelets_verdict_is_kept_per_name(registry: Path) -> None:
    regs = Registrations(str(registry), ENDPOINT)
    try:
        regs.sync([A1, B2])
        for name, ok in ((A1, True), (B2, False)):
            with grpc.insecure_channel(f"unix://{socket_path(str(registry), name)}") as channel:
                registration.rpb_grpc.RegistrationStub(channel).NotifyRegistrationStatus(
                    registration.rpb.RegistrationStatus(plugin_registered=ok, error="" if ok else "no"), timeout=10)
        assert regs.registrar(A1).registered.is_set()
        assert not regs.registrar(B2).registered.is_set() and regs.registrar(B2).error == "no"
    finally:
        regs.close()


class FakeAPI:
    """pykube's HTTPClient as far as ``LabelledDrivers`` uses it."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.fail = False
        self.params: list[dict[str, str]] = []

    def get(self, *, version: str, url: str, params: dict[str, str]) -> Any:
        assert (version, url) == ("storage.k8s.io/v1", "csidrivers")
        self.params.append(params)
        if self.fail:
            raise ConnectionError("the API server is away")
        items = [{"metadata": {"name": n}} for n in self.names]
        return type("Response", (), {"json": lambda _self: {"items": items}})()

    def raise_for_status(self, response: Any) -> None:
        pass


def test_labelled_drivers_keep_the_last_names_when_a_listing_fails(caplog: pytest.LogCaptureFixture) -> None:
    api = FakeAPI()
    labelled = LabelledDrivers("nasblade.io/csi-driver=true", client=lambda: api)
    api.names = [A1, B2]
    assert labelled() == {A1, B2}
    assert api.params[-1] == {"labelSelector": "nasblade.io/csi-driver=true"}
    api.fail = True
    assert labelled() == {A1, B2}
    assert labelled() == {A1, B2}
    assert caplog.text.count("cannot list the CSIDriver objects") == 1  # once per distinct error
    api.fail, api.names = False, [A1]
    assert labelled() == {A1}


def test_a_new_plugin_removes_the_sockets_a_killed_one_left_for_names_of_its_domain(registry: Path) -> None:
    """A plugin killed with SIGKILL leaves its sockets: the next one's first sync removes those
    of this driver's domain it does not register (the kubelet then drops them), replaces the
    one it does, and leaves other drivers' sockets and other files alone."""
    for name in (A1, B2, "nas.nasblade.io", "nfs.csi.k8s.io", "notnas.nasblade.io.example"):
        Path(socket_path(str(registry), name)).write_bytes(b"")  # stand-ins for dead sockets
    (registry / "DEPRECATED").write_text("")
    regs = Registrations(str(registry), ENDPOINT)
    try:
        regs.sync([A1])
        assert sorted(p.name for p in registry.iterdir()) == sorted(
            ["DEPRECATED", f"{A1}-reg.sock", "nfs.csi.k8s.io-reg.sock", "notnas.nasblade.io.example-reg.sock"])
        assert get_info(socket_path(str(registry), A1)).name == A1  # served again, not the dead one
        Path(socket_path(str(registry), B2)).write_bytes(b"")  # later: only the first sync sweeps
        regs.sync([A1])
        assert Path(socket_path(str(registry), B2)).exists()
    finally:
        regs.close()
