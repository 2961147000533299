"""Compare-and-write (``POST /v1/lus/{name}/compare-and-write``) and the group record built on it.

The endpoint writes only when the compared range still hashes to what the caller read, and
answers a conflict with the current bytes; bad input is refused with the field named. Two
writers updating one portion's group record at once through ``PortionStore.update_group``
(each with its own NBD connection, the controller's compare-and-write as the ``cas``, as two
blades do) lose no update: every entry of both is there and the generation counts them all.
"""

from __future__ import annotations

import base64
import hashlib
import threading

import pytest
from ctlharness import Controller
from nasblade.controller.apiclient import ControlAPIError
from nasblade.controller.asyncclient import controller_cas
from nasblade.nbd.client import NBDBlockDevice
from nasblade.procinfo.portion import GroupRecord, Ownership, PortionStore

pytestmark = pytest.mark.component

PORTION = 1 << 20


def test_compare_and_write_writes_only_an_unchanged_range(controller: Controller) -> None:
    c = controller.client
    c.create_lu("cas", 4 << 20)
    with NBDBlockDevice.connect(controller.url("cas")) as dev:
        before = dev.pread(0, 8192)
        ok = c.compare_and_write("cas", compare_offset=0, compare_length=8192,
                                 expect_sha256=hashlib.sha256(before).hexdigest(), write_offset=4096, data=b"A" * 4096)
        assert ok["written"] == 4096
        assert dev.pread(4096, 4096) == b"A" * 4096
        # the same expectation again is stale now: nothing is written, the current bytes come back
        with pytest.raises(ControlAPIError) as conflict:
            c.compare_and_write("cas", compare_offset=0, compare_length=8192,
                                expect_sha256=hashlib.sha256(before).hexdigest(), write_offset=4096, data=b"B" * 4096)
        assert conflict.value.status == 409
        assert base64.b64decode(conflict.value.body["current"]) == dev.pread(0, 8192)
        assert dev.pread(4096, 4096) == b"A" * 4096


@pytest.mark.parametrize(("field", "body"), [
    ("compareLength", {"compareLength": 1 << 30}),
    ("data", {"data": "not base64!"}),
    ("expectSha256", {"expectSha256": None}),
    ("compareOffset", {"compareOffset": -1}),
])
def test_compare_and_write_refuses_bad_input(controller: Controller, field: str, body: dict[str, object]) -> None:
    controller.client.create_lu("casbad", 1 << 20)
    good = {"compareOffset": 0, "compareLength": 4096, "expectSha256": "0" * 64, "writeOffset": 0,
            "data": base64.b64encode(b"x" * 4096).decode()}
    with pytest.raises(ControlAPIError) as bad:
        controller.client.request("POST", "/v1/lus/casbad/compare-and-write", {**good, **body})
    assert bad.value.status == 400 and bad.value.body.get("field") == field, bad.value.body
    with pytest.raises(ControlAPIError) as past_end:
        controller.client.request("POST", "/v1/lus/casbad/compare-and-write", {**good, "writeOffset": 1 << 20})
    assert past_end.value.status == 400


def test_two_writers_of_the_group_record_lose_no_update(controller: Controller) -> None:
    c = controller.client
    c.create_lu("procinfo", 2 * PORTION)
    with NBDBlockDevice.connect(controller.url("procinfo")) as dev:
        PortionStore(dev, offset=PORTION, size=PORTION).format(group="g2", index=1)
    per_writer = 30
    errors: list[BaseException] = []

    def writer(name: str) -> None:
        try:
            with NBDBlockDevice.connect(controller.url("procinfo")) as dev:
                store = PortionStore(dev, offset=PORTION, size=PORTION, cas=controller_cas(c, "procinfo"))
                for i in range(per_writer):
                    store.update_group(lambda g, i=i: g.ownership.update({f"{name}-{i}": Ownership(name, i + 1)}))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert errors == []
    with NBDBlockDevice.connect(controller.url("procinfo")) as dev:
        group: GroupRecord = PortionStore(dev, offset=PORTION, size=PORTION).read_group()
    assert sorted(group.ownership) == sorted(f"{n}-{i}" for n in ("a", "b") for i in range(per_writer))
    assert group.generation == 2 * per_writer
