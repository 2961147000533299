"""Group tokens on the control API (``nasblade.grants``, ``controller.api.GROUP_ROUTES``).

A blade holds its cluster group's token, never the array's control token. Against a real
``nasblade controller`` with an access file (``--nbd-access``; plaintext NBD: the API rule
does not depend on TLS): a group token reaches its own file-system LUs and the shared ones
(of ``procinfo`` and ``backup`` only its portion), reads the program LU only, and gets ``403`` for any other LU, for LU creation, growth and
deletion, for scrub and cache hold; listings show it only what it may reach; another group's
clients and copy jobs are invisible to it; a forged or foreign-array group token is ``401``.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable

import pytest
from ctlharness import TOKEN, Controller
from nasblade import grants
from nasblade.controller.apiclient import ControlAPIError, ControlClient
from nasblade.nbd import access

pytestmark = pytest.mark.component


@pytest.fixture
def ctl(controller_factory: Callable[..., Controller], tmp_path_factory: pytest.TempPathFactory) -> Controller:
    path = tmp_path_factory.mktemp("access") / "access.json"
    access.write(path, access.AccessPolicy.of_groups({"g1": ["fs-a"], "g2": ["fs-b"]},
                                                     portions={"g1": (0, 1 << 20), "g2": (1 << 20, 1 << 20)}))
    c = controller_factory(extra=["--nbd-access", str(path)])
    for name, size in (("fs-a", 8 << 20), ("fs-b", 8 << 20), ("program", 8 << 20), ("procinfo", 8 << 20),
                       ("backup", 8 << 20)):
        c.client.create_lu(name, size)
    return c


def _status(call: Callable[[], object]) -> int:
    try:
        call()
    except ControlAPIError as exc:
        return exc.status
    return 200


def _cas(client: ControlClient, lu: str) -> Callable[[], object]:
    empty = hashlib.sha256(bytes(16)).hexdigest()
    return lambda: client.compare_and_write(lu, compare_offset=0, compare_length=16, expect_sha256=empty,
                                            write_offset=0, data=b"x" * 16)


def test_a_group_token_reaches_its_own_lus_and_the_shared_ones_only(ctl: Controller) -> None:
    g1 = ControlClient(ctl.api, grants.group_token(TOKEN, "g1"))
    # its own file system: reservation, compare-and-write, cache records
    assert g1.reserve("fs-a", "g1-0")["holder"] == "g1-0"
    assert _status(_cas(g1, "fs-a")) == 200
    g1.add_cache_records("g1-0", "fs-a", [[0, 4096]])
    assert g1.get_lu("fs-a")["name"] == "fs-a"
    # another group's file system: nothing, not even its description
    for call in (lambda: g1.get_lu("fs-b"), lambda: g1.reserve("fs-b", "g1-0"), lambda: g1.get_reservation("fs-b"),
                 lambda: g1.release("fs-b"), _cas(g1, "fs-b"), lambda: g1.cache_directory("fs-b"),
                 lambda: g1.add_cache_records("g1-0", "fs-b", [[0, 4096]])):
        assert _status(call) == 403
    assert ctl.client.get_reservation("fs-b")["holder"] is None
    # the shared LUs: processor information read and written, the program LU read only
    assert _status(_cas(g1, "procinfo")) == 200
    # ... its own portion of it (the first MiB), not g2's
    empty = hashlib.sha256(bytes(16)).hexdigest()
    assert _status(lambda: g1.compare_and_write("procinfo", compare_offset=1 << 20, compare_length=16,
                                                expect_sha256=empty, write_offset=1 << 20, data=b"x" * 16)) == 403
    assert _status(lambda: g1.compare_and_write("procinfo", compare_offset=0, compare_length=16,
                                                expect_sha256=hashlib.sha256(b"x" * 16).hexdigest(),
                                                write_offset=(1 << 20) - 8, data=b"x" * 16)) == 403
    assert ctl.client.compare_and_write("procinfo", compare_offset=1 << 20, compare_length=16, expect_sha256=empty,
                                        write_offset=1 << 20, data=b"y" * 16)
    assert _status(lambda: g1.get_lu("program")) == 200
    assert _status(_cas(g1, "program")) == 403
    assert _status(lambda: g1.reserve("program", "g1-0")) == 403
    assert {lu["name"] for lu in g1.list_lus()} == {"fs-a", "program", "procinfo", "backup"}
    assert len(ctl.client.list_lus()) == 5


def test_a_group_token_does_not_manage_the_array(ctl: Controller) -> None:
    g1 = ControlClient(ctl.api, grants.group_token(TOKEN, "g1"))
    for call in (lambda: g1.create_lu("mine", 1 << 20), lambda: g1.update_lu("fs-a", size=16 << 20),
                 lambda: g1.delete_lu("fs-a"), lambda: g1.hold_destage(True), lambda: g1.list_faults(),
                 lambda: g1.request("POST", "/v1/array/scrub", {}),
                 lambda: g1.request("POST", "/v1/array/devices/0/fail", {})):
        assert _status(call) == 403
    assert ctl.client.get_lu("fs-a")["size"] == 8 << 20
    assert g1.load() and g1.cache() and g1.array()["luCount"] == 5


def test_clients_and_copy_jobs_of_another_group_are_invisible(ctl: Controller) -> None:
    g1 = ControlClient(ctl.api, grants.group_token(TOKEN, "g1"))
    g2 = ControlClient(ctl.api, grants.group_token(TOKEN, "g2"))
    g1.register_client("g1-0", group="g1", role="blade", attrs={"api": "https://g1-0"})
    g2.register_client("g2-0", group="g2", role="blade")
    assert [c["name"] for c in g1.list_clients()] == ["g1-0"]
    assert _status(lambda: g1.get_client("g2-0")) == 404
    assert _status(lambda: g1.unregister_client("g2-0")) == 404
    # nor can it register itself as another group's, or take over another group's name
    assert _status(lambda: g1.register_client("g1-1", group="g2", role="blade")) == 403
    assert _status(lambda: g1.register_client("g2-0", group="g1", role="blade")) == 403
    assert ctl.client.get_client("g2-0")["group"] == "g2"
    # copy jobs: its own and shared LUs (a backup), never out of another group's LU
    job = g1.create_copy_job("procinfo", "backup", 1 << 20)
    g1.wait_copy_job(job["id"])
    # ... of its own portion: not another group's, not into another group's backup area
    assert _status(lambda: g1.create_copy_job("procinfo", "backup", 1 << 20, source_offset=1 << 20)) == 403
    assert _status(lambda: g1.create_copy_job("procinfo", "backup", 1 << 20, target_offset=1 << 20)) == 403
    assert _status(lambda: g1.create_copy_job("fs-b", "backup", 1 << 20)) == 403
    assert _status(lambda: g1.create_copy_job("fs-a", "fs-b", 1 << 20)) == 403
    assert _status(lambda: g1.create_copy_job("fs-a", "program", 1 << 20)) == 403
    other = ctl.client.create_copy_job("fs-b", "backup", 1 << 20)
    assert _status(lambda: g1.get_copy_job(other["id"])) == 404
    assert [j["id"] for j in g1.list_copy_jobs()] == [job["id"]]
    assert {j["id"] for j in ctl.client.list_copy_jobs()} == {job["id"], other["id"]}


def test_a_blade_releases_the_lu_of_a_file_system_that_left_its_group(ctl: Controller, tmp_path_factory:
                                                                       pytest.TempPathFactory) -> None:
    """A file system leaves g1 (a CSI volume deleted): the access file no longer gives g1 its
    LU, and only then does the blade release it. It may still read and drop the reservation one
    of g1's blades holds -- nothing else of that LU -- or the LU would stay reserved and the
    volume could never be deleted (seen on the real cluster: DeleteVolume FAILED_PRECONDITION
    "still reserved by nas-blade-1" until the test gave up)."""
    g1 = ControlClient(ctl.api, grants.group_token(TOKEN, "g1"))
    g2 = ControlClient(ctl.api, grants.group_token(TOKEN, "g2"))
    g1.register_client("g1-0", group="g1", role="blade")
    g2.register_client("g2-0", group="g2", role="blade")
    g1.reserve("fs-a", "g1-0")
    ctl.client.create_lu("fs-c", 8 << 20)
    ctl.client.reserve("fs-c", "g2-0")
    path = next(p for p in ctl.extra if p.endswith("access.json"))
    access.write(path, access.AccessPolicy.of_groups({"g2": ["fs-b"]}))  # fs-a left g1
    assert _status(lambda: g1.get_lu("fs-a")) == 403
    assert _status(_cas(g1, "fs-a")) == 403
    assert _status(lambda: g1.reserve("fs-a", "g1-0")) == 403
    assert _status(lambda: g2.release("fs-a")) == 403  # not g2's blade's reservation
    assert g1.get_reservation("fs-a")["holder"] == "g1-0"
    g1.release("fs-a")
    assert ctl.client.get_reservation("fs-a")["holder"] is None
    assert _status(lambda: g1.get_reservation("fs-a")) == 403  # nobody of g1 holds it now
    assert _status(lambda: g1.release("fs-c")) == 403  # held by another group's blade
    assert ctl.client.get_reservation("fs-c")["holder"] == "g2-0"


def test_a_forged_group_token_is_refused(ctl: Controller) -> None:
    good = grants.group_token(TOKEN, "g1")
    mac = good.rsplit(".", 1)[1]
    for forged in (f"group.g2.{mac}", good[:-1] + ("0" if good[-1] != "0" else "1"), "group.g1.",
                   grants.group_token("another-array's-token", "g1"), "group..",
                   "group." + base64.b64encode(b"x").decode()):
        assert _status(lambda t=forged: ControlClient(ctl.api, t).list_lus()) == 401
    # the group token is no user token, even on the routes a group may call
    assert grants.group_of(good, TOKEN) == "g1" and grants.group_of(good, "other") is None
