"""Reservations and fencing: a newer epoch cuts off the older holder's writes at once."""

from __future__ import annotations

import errno

import pytest
from ctlharness import Controller
from nasblade.controller.apiclient import ControlAPIError
from nasblade.nbd.client import NBDBlockDevice

pytestmark = pytest.mark.component


def test_epoch_2_fences_epoch_1(controller: Controller, lu: str) -> None:
    cl = controller.client
    assert cl.reserve(lu, "blade-a", epoch=1) == {"holder": "blade-a", "epoch": 1}
    old = NBDBlockDevice.connect(controller.url(lu), holder="blade-a", epoch=1)
    old.pwrite(0, b"a" * 4096)
    assert cl.reserve(lu, "blade-b", epoch=2) == {"holder": "blade-b", "epoch": 2}
    # the very next write of the old holder, on its already-open connection, is refused
    for off in (0, 4096, 1 << 20):
        with pytest.raises(OSError) as exc:
            old.pwrite(off, b"z" * 4096)
        assert exc.value.errno == errno.EPERM
    with pytest.raises(OSError) as exc:
        old.write_zeroes(0, 4096)
    assert exc.value.errno == errno.EPERM
    assert old.pread(0, 4096) == b"a" * 4096  # reads still work
    new = NBDBlockDevice.connect(controller.url(lu), holder="blade-b", epoch=2)
    new.pwrite(0, b"b" * 4096, fua=True)
    assert old.pread(0, 4096) == b"b" * 4096
    # a stale holder reconnecting with its old epoch is refused too
    with NBDBlockDevice.connect(controller.url(lu), holder="blade-a", epoch=1) as again:
        with pytest.raises(OSError) as exc:
            again.pwrite(0, b"z")
        assert exc.value.errno == errno.EPERM
    old.close()
    new.close()


def test_unreserved_access(controller: Controller, lu: str) -> None:
    cl = controller.client
    with NBDBlockDevice.connect(controller.url(lu)) as plain:
        plain.pwrite(0, b"p" * 512)  # no reservation: plain writes allowed
        cl.reserve(lu, "owner")
        with pytest.raises(OSError) as exc:
            plain.pwrite(0, b"p" * 512)
        assert exc.value.errno == errno.EPERM
        assert plain.pread(0, 512) == b"p" * 512
        cl.release(lu)
        plain.pwrite(0, b"r" * 512)
    assert cl.get_reservation(lu) == {"holder": None, "epoch": None, "lastEpoch": 1}


def test_epochs_only_increase(controller: Controller, lu: str) -> None:
    cl = controller.client
    cl.reserve(lu, "a", epoch=4)
    assert cl.reserve(lu, "a", epoch=4)["epoch"] == 4  # idempotent re-post
    for bad in (4, 3):
        with pytest.raises(ControlAPIError) as exc:
            cl.reserve(lu, "b", epoch=bad)
        assert exc.value.status == 409 and exc.value.body["lastEpoch"] == 4
    cl.release(lu)
    assert cl.reserve(lu, "c")["epoch"] == 5


def test_deleting_an_lu_drops_its_connections(controller: Controller, lu: str) -> None:
    dev = NBDBlockDevice.connect(controller.url(lu))
    controller.client.delete_lu(lu)
    with pytest.raises(OSError):
        dev.pread(0, 512)
    dev.close()
