"""The csi token on the control API (``nasblade.grants.csi_token``, ``controller.api.CSI_ROUTES``).

The CSI driver's controller plugin holds the csi token, never the array's control token.
Against a real ``nasblade controller`` (with an access file giving a group ``fs-home``): the
csi token creates, grows, sets read-only and deletes the LUs of CSI volumes and snapshots,
compare-and-writes its catalog and copies a volume into a snapshot -- the calls
``nasblade_csi.array.Array`` and ``nasblade_csi.catalog.Catalog`` make; it gets ``403`` for
any other LU (a group's file system, the shared LUs) and for every other route
(reservations, clients, cache, metrics, faults, devices, scrub); listings show it only the
CSI driver's LUs and the copy jobs between them; a forged csi token is ``401``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import pytest
from ctlharness import TOKEN, Controller
from nasblade import grants
from nasblade.controller.apiclient import ControlAPIError, ControlClient
from nasblade.nbd import access

pytestmark = pytest.mark.component

MiB = 1 << 20
PV = "pv-0123456789abcdef01234567"
FS_PV = "fs-pv-0123456789abcdef01234567"
SN = "sn-0123456789abcdef01234567"


@pytest.fixture
def ctl(controller_factory: Callable[..., Controller], tmp_path_factory: pytest.TempPathFactory) -> Controller:
    path = tmp_path_factory.mktemp("access") / "access.json"
    access.write(path, access.AccessPolicy.of_groups({"g1": ["fs-home"]}, portions={"g1": (0, MiB)}))
    c = controller_factory(extra=["--nbd-access", str(path)])
    for name in ("fs-home", "program", "procinfo", "backup"):
        c.client.create_lu(name, 8 * MiB)
    return c


@pytest.fixture
def csi(ctl: Controller) -> ControlClient:
    return ControlClient(ctl.api, grants.csi_token(TOKEN))


def _error(call: Callable[[], object]) -> tuple[int, str]:
    try:
        call()
    except ControlAPIError as exc:
        return exc.status, exc.message
    return 200, ""


def _status(call: Callable[[], object]) -> int:
    return _error(call)[0]


def _cas(client: ControlClient, lu: str, data: bytes = b"x" * 16) -> Callable[[], object]:
    empty = hashlib.sha256(bytes(16)).hexdigest()
    return lambda: client.compare_and_write(lu, compare_offset=0, compare_length=16, expect_sha256=empty,
                                            write_offset=0, data=data)


def test_the_csi_token_manages_the_lus_of_csi_volumes(ctl: Controller, csi: ControlClient) -> None:
    # what the driver's Array does: create, describe, grow, set read-only, delete
    assert csi.create_lu(PV, 8 * MiB)["name"] == PV
    assert csi.get_lu(PV)["size"] == 8 * MiB
    assert csi.update_lu(PV, size=16 * MiB)["size"] == 16 * MiB
    assert csi.update_lu(PV, read_only=True)["readOnly"] is True
    assert ctl.client.get_lu(PV)["size"] == 16 * MiB
    csi.delete_lu(PV)
    assert _status(lambda: ctl.client.get_lu(PV)) == 404
    assert _status(lambda: csi.get_lu(PV)) == 404  # a CSI LU that is not there: 404, not 403
    # what its Catalog does: create the catalog LU, compare-and-write its record
    csi.create_lu("csi-catalog", MiB)
    assert _status(_cas(csi, "csi-catalog")) == 200
    assert _status(_cas(csi, "csi-catalog", b"y" * 16)) == 409  # the compare, not the credential
    # and what the driver's capacity and health checks read
    assert csi.array()["luCount"] == 5 and csi.load() and csi.openapi()["openapi"]


def test_the_csi_token_copies_a_volume_into_a_snapshot(ctl: Controller, csi: ControlClient) -> None:
    csi.create_lu(FS_PV, 8 * MiB)
    csi.create_lu(SN, 8 * MiB)
    ctl.client.compare_and_write(FS_PV, compare_offset=0, compare_length=16,
                                 expect_sha256=hashlib.sha256(bytes(16)).hexdigest(), write_offset=0, data=b"v" * 16)
    job = csi.create_copy_job(FS_PV, SN, 8 * MiB)
    assert csi.wait_copy_job(job["id"])["state"] == "succeeded"
    assert csi.get_copy_job(job["id"])["target"] == SN
    assert [j["id"] for j in csi.list_copy_jobs()] == [job["id"]]
    assert csi.cancel_copy_job(job["id"])["id"] == job["id"]  # cancelling a finished job: reached
    # the snapshot holds the volume's bytes (read with the control token's compare-and-write)
    assert _status(lambda: ctl.client.compare_and_write(
        SN, compare_offset=0, compare_length=16, expect_sha256=hashlib.sha256(b"v" * 16).hexdigest(),
        write_offset=0, data=b"v" * 16)) == 200


def test_the_csi_token_reaches_no_other_lu(ctl: Controller, csi: ControlClient) -> None:
    csi.create_lu(PV, 8 * MiB)
    csi.create_lu(SN, 8 * MiB)
    status, message = _error(lambda: csi.create_lu("fs-home2", MiB))
    assert status == 403 and message == "the CSI driver has no access to LU fs-home2"
    for call in (lambda: csi.create_lu("fs-home", MiB), lambda: csi.create_lu("mine", MiB),
                 lambda: csi.delete_lu("fs-home"), lambda: csi.delete_lu("no-such-lu"),
                 lambda: csi.update_lu("fs-home", size=16 * MiB), lambda: csi.update_lu("program", read_only=False),
                 lambda: csi.get_lu("fs-home"), lambda: csi.get_lu("procinfo"),
                 _cas(csi, "procinfo"), _cas(csi, "backup"), _cas(csi, "fs-home"),
                 lambda: csi.create_copy_job("fs-home", "sn-x", MiB),
                 lambda: csi.create_copy_job("fs-home", SN, MiB),
                 lambda: csi.create_copy_job(PV, "fs-home", MiB),
                 lambda: csi.create_copy_job("procinfo", SN, MiB)):
        assert _status(call) == 403
    assert ctl.client.get_lu("fs-home")["size"] == 8 * MiB
    assert ctl.client.get_lu("program")["readOnly"] is False
    assert {lu["name"] for lu in csi.list_lus()} == {PV, SN}
    assert len(ctl.client.list_lus()) == 6


def test_the_csi_token_calls_only_the_drivers_routes(ctl: Controller, csi: ControlClient) -> None:
    csi.create_lu(PV, 8 * MiB)
    for call in (lambda: csi.reserve(PV, "csi"), lambda: csi.get_reservation(PV), lambda: csi.release(PV),
                 lambda: csi.list_clients(), lambda: csi.register_client("x", role="csi"),
                 lambda: csi.cache(), lambda: csi.cache_directory(PV),
                 lambda: csi.add_cache_records("x", PV, [[0, 4096]]), lambda: csi.hold_destage(True),
                 lambda: csi.request("GET", "/v1/metrics"),
                 lambda: csi.list_faults(), lambda: csi.add_fault(PV, 0, 4096), lambda: csi.clear_faults(),
                 lambda: csi.request("POST", "/v1/faults/devices", {"device": 0}),
                 lambda: csi.request("POST", "/v1/array/devices/0/fail", {}),
                 lambda: csi.request("POST", "/v1/array/scrub", {}),
                 lambda: csi.request("GET", "/v1/array/scrub")):
        status, message = _error(call)
        assert status == 403 and message.startswith("the CSI driver's token cannot"), (status, message)
    assert ctl.admin.list_faults() == [] and ctl.client.get_reservation(PV)["holder"] is None


def test_copy_jobs_of_other_lus_are_invisible_to_the_csi_token(ctl: Controller, csi: ControlClient) -> None:
    csi.create_lu(PV, 8 * MiB)
    csi.create_lu(SN, 8 * MiB)
    mine = csi.create_copy_job(PV, SN, MiB)
    other = ctl.client.create_copy_job("fs-home", "backup", MiB)
    into = ctl.client.create_copy_job("fs-home", SN, MiB)  # the control token may; its job is not the CSI driver's
    for job in (mine, other, into):
        ctl.client.wait_copy_job(job["id"])
    assert [j["id"] for j in csi.list_copy_jobs()] == [mine["id"]]
    for job in (other, into):
        assert _status(lambda j=job: csi.get_copy_job(j["id"])) == 404
        assert _status(lambda j=job: csi.cancel_copy_job(j["id"])) == 404
    assert {j["id"] for j in ctl.client.list_copy_jobs()} == {mine["id"], other["id"], into["id"]}


def test_a_forged_csi_token_is_refused_and_a_group_token_is_no_csi_token(ctl: Controller) -> None:
    good = grants.csi_token(TOKEN)
    for forged in (good[:-1] + ("0" if good[-1] != "0" else "1"), "csi.", grants.csi_token("another array's token"),
                   "csi." + grants.group_token(TOKEN, "g1").rsplit(".", 1)[1]):
        assert _status(lambda t=forged: ControlClient(ctl.api, t).list_lus()) == 401
    g1 = ControlClient(ctl.api, grants.group_token(TOKEN, "g1"))
    assert _status(lambda: g1.create_lu(PV, MiB)) == 403  # a group creates no LU, CSI-named or not
    assert _status(lambda: g1.get_lu(PV)) == 403
    assert {lu["name"] for lu in g1.list_lus()} == {"fs-home", "program", "procinfo", "backup"}
