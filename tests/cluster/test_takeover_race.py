"""A takeover a blade started by itself stops when another blade took the file system over
meanwhile (``Takeovers._taken_meanwhile``).

Seen in the kill soak: a restarted owner's "recorded owner (restart)" takeover was refused once
(its file processor not back yet); meanwhile the chassis's give-back handed the file system to
its home blade; the restarted owner's next attempt then reserved a newer epoch and fenced the
blade that had just taken over, and the file system never went home. The members here are
fakes around the real ``Takeovers``: the group record is what the test says it is.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from nasblade.cluster.takeover import ClusterError, Takeovers
from nasblade.procinfo.portion import GroupRecord, Ownership


class FakeBP:
    """``take_over_fs`` is refused ``refusals`` times; ``on_refusal`` runs at each refusal."""

    def __init__(self, refusals: int, on_refusal: Any) -> None:
        self.settings = SimpleNamespace(fs_specs={"fs1": object()})
        self.released_on_request: list[str] = []
        self.epochs: dict[str, int] = {}
        self.refusals = refusals
        self.on_refusal = on_refusal
        self.calls = 0

    async def take_over_fs(self, fs: str) -> dict[str, Any]:
        self.calls += 1
        if self.calls <= self.refusals:
            self.on_refusal()
            raise OSError("the file processor is not connected yet")
        return {"epoch": 10 + self.calls, "endpoints": {}}


def _takeovers(bp: FakeBP, store_record: GroupRecord, view_record: GroupRecord) -> Takeovers:
    fs = SimpleNamespace(policy=SimpleNamespace(name="fs1", lu="fs-fs1", home="g1-0"))
    cfg = SimpleNamespace(fs=lambda name: fs if name == "fs1" else None, members=["g1-0", "g1-1"],
                          failure_timeout=1.0, chassis=None, group="g1")
    view = SimpleNamespace(me="g1-1", group=view_record, alive=lambda now=None: {"g1-0", "g1-1"})
    areas = SimpleNamespace(store=SimpleNamespace(read_group=lambda: store_record))
    return Takeovers(bp, None, cfg, view, areas, api_token=None)  # type: ignore[arg-type]


def test_an_automatic_takeover_stops_when_a_peer_took_the_file_system_meanwhile() -> None:
    store = GroupRecord(ownership={"fs1": Ownership("g1-1", 5)})

    def give_back() -> None:  # the home blade takes it over while our attempt is refused
        store.ownership["fs1"] = Ownership("g1-0", 6)

    bp = FakeBP(1, give_back)
    t = _takeovers(bp, store, GroupRecord(ownership={"fs1": Ownership("g1-1", 5)}))
    with pytest.raises(ClusterError, match="g1-0 took it over meanwhile"):
        asyncio.run(t.take_over("fs1", reason="recorded owner (restart)", automatic=True))
    assert bp.calls == 1, "a second attempt would have fenced g1-0 with a newer epoch"
    assert "fs1" not in t.serving


def test_an_automatic_takeover_retries_while_nobody_else_took_the_file_system() -> None:
    store = GroupRecord(ownership={"fs1": Ownership("g1-1", 5)})
    bp = FakeBP(2, lambda: None)
    t = _takeovers(bp, store, GroupRecord(ownership={"fs1": Ownership("g1-1", 5)}))
    done = asyncio.run(t.take_over("fs1", reason="recorded owner (restart)", automatic=True))
    assert (bp.calls, done.epoch, t.serving) == (3, 13, {"fs1": 13})


def test_a_requested_takeover_is_not_held_back_by_the_record() -> None:
    store = GroupRecord(ownership={"fs1": Ownership("g1-1", 5)})

    def moved() -> None:
        store.ownership["fs1"] = Ownership("g1-0", 6)

    bp = FakeBP(1, moved)
    t = _takeovers(bp, store, GroupRecord(ownership={"fs1": Ownership("g1-1", 5)}))
    done = asyncio.run(t.take_over("fs1", reason="requested"))
    assert (bp.calls, done.epoch) == (2, 12)
