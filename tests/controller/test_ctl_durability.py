"""Durability: what FLUSH / FUA acknowledged survives ``kill -9``; state survives restarts."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable

import pytest
from ctlharness import Controller
from nasblade.nbd.client import NBDBlockDevice

pytestmark = pytest.mark.component


def test_flushed_writes_survive_kill_9(controller: Controller) -> None:
    controller.client.create_lu("d", 32 << 20)
    small = os.urandom(4096)
    big = os.urandom(3 << 20)
    with NBDBlockDevice.connect(controller.url("d")) as dev:
        for i in range(64):  # many small cached writes
            dev.pwrite(i * 65536 + 512, small)
        dev.pwrite(8 << 20, big)
        dev.flush()
    assert controller.client.cache()["dirtyBytes"] == 0
    controller.kill()
    controller.restart()
    with NBDBlockDevice.connect(controller.url("d")) as dev:
        for i in range(64):
            assert dev.pread(i * 65536 + 512, 4096) == small
        assert dev.pread(8 << 20, 3 << 20) == big


def test_fua_writes_survive_kill_9(controller_factory: Callable[..., Controller]) -> None:
    c = controller_factory(cache_size="1G")
    c.client.create_lu("f", 16 << 20)
    data = [os.urandom(4096) for _ in range(32)]
    with NBDBlockDevice.connect(c.url("f")) as dev:
        for i, d in enumerate(data):
            dev.pwrite(i * 8192, d, fua=True)
        dev.write_zeroes(1 << 20, 65536, fua=True)
    c.kill()
    c.restart()
    with NBDBlockDevice.connect(c.url("f")) as dev:
        for i, d in enumerate(data):
            assert dev.pread(i * 8192, 4096) == d
        assert dev.pread(1 << 20, 65536) == bytes(65536)


def test_sigterm_destages_and_exits_0(controller: Controller) -> None:
    controller.client.create_lu("t", 8 << 20)
    controller.admin.hold_destage(True)  # the write stays dirty until SIGTERM: shutdown must destage it
    with NBDBlockDevice.connect(controller.url("t")) as dev:
        dev.pwrite(12288, b"q" * 4096)
    assert controller.client.cache()["dirtyBytes"] == 4096
    assert controller.stop() == 0
    controller.restart()
    with NBDBlockDevice.connect(controller.url("t")) as dev:
        assert dev.pread(12288, 4096) == b"q" * 4096


def test_lu_table_and_epochs_survive_restart(controller: Controller) -> None:
    cl = controller.client
    cl.create_lu("a", 8 << 20)
    cl.create_lu("b", 4 << 20, read_only=True)
    cl.update_lu("a", size=20 << 20)
    cl.reserve("a", "blade-1", epoch=5)
    controller.kill()
    controller.restart()
    cl = controller.client
    lus = {lu["name"]: lu for lu in cl.list_lus()}
    assert lus["a"]["size"] == 20 << 20 and lus["b"]["readOnly"] is True
    assert lus["a"]["reservation"] == {"holder": "blade-1", "epoch": 5}
    assert cl.reserve("a", "blade-2")["epoch"] == 6
    with NBDBlockDevice.connect(controller.url("a"), holder="blade-1", epoch=5) as dev:
        with pytest.raises(OSError) as exc:
            dev.pwrite(0, b"x" * 512)
        assert exc.value.errno == errno.EPERM


def test_superblock_on_every_device_one_device_damaged(controller: Controller) -> None:
    controller.client.create_lu("s", 8 << 20)
    controller.stop()
    first = controller.devices[0].split(":")[0]
    with open(first, "r+b") as f:  # destroy both superblock slots of device 0
        f.seek(4096)
        f.write(bytes((8 << 20) - 4096))
    controller.restart()
    assert [lu["name"] for lu in controller.client.list_lus()] == ["s"]


def test_devices_may_be_listed_in_any_order(controller: Controller) -> None:
    controller.client.create_lu("o", 8 << 20)
    with NBDBlockDevice.connect(controller.url("o")) as dev:
        dev.pwrite(0, b"order" * 1000, fua=True)
    controller.stop()
    controller.devices.reverse()
    controller.restart()
    with NBDBlockDevice.connect(controller.url("o")) as dev:
        assert dev.pread(0, 5000) == b"order" * 1000


def test_flush_on_another_connection_covers_all_writes(controller: Controller) -> None:
    """CAN_MULTI_CONN: a FLUSH on connection B makes connection A's completed writes durable."""
    controller.client.create_lu("m", 16 << 20)
    a = NBDBlockDevice.connect(controller.url("m"))
    b = NBDBlockDevice.connect(controller.url("m"))
    blocks = {i * 12288: os.urandom(4096) for i in range(100)}
    for off, data in blocks.items():
        a.pwrite(off, data)
    a.pwrite(4 << 20, b"s" * (63 * 4096))  # < BYPASS: 63 adjacent cached lines
    b.flush()
    controller.kill()
    a.close()
    b.close()
    controller.restart()
    with NBDBlockDevice.connect(controller.url("m")) as dev:
        for off, data in blocks.items():
            assert dev.pread(off, 4096) == data
        assert dev.pread(4 << 20, 63 * 4096) == b"s" * (63 * 4096)
