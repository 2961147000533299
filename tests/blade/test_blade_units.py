"""Small pure functions of the blade: range coalescing, slot decoding, size parsing."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from nasblade.blockproc.core import coalesce
from nasblade.cluster.api import _guarded
from nasblade.controller.apiclient import ControlAPIError
from nasblade.procinfo.portion import BladeStatus
from nasblade.standalone.config import ConfigError, parse_duration, parse_size
from nasblade.units import format_size


def test_coalesce_merges_overlapping_and_touching_ranges() -> None:
    assert coalesce([(8192, 4096), (0, 4096), (4096, 4096), (20000, 10), (20005, 100)]) == [
        [0, 12288],
        [20000, 105],
    ]
    assert coalesce([]) == []


def test_the_cluster_api_passes_the_controllers_no_space_on_as_a_409_with_its_reason() -> None:
    """A controller's no space (``409`` ``NoSpace``, or an older controller's ``507``) is the
    caller's to act on: ``409`` with the reason, not the ``503`` of a controller failure."""

    def answer(exc: Exception) -> tuple[int, dict[str, Any]]:
        async def fn(request: Any) -> Any:
            raise exc

        resp: Any = asyncio.run(_guarded(fn)(None))  # type: ignore[arg-type]
        return resp.status, json.loads(resp.body)

    for no_space in (ControlAPIError(409, {"error": "no space: x", "reason": "NoSpace"}),
                     ControlAPIError(507, {"error": "no space: x"})):
        assert answer(no_space) == (409, {"error": "the controller refused: no space: x", "reason": "NoSpace"})
    assert answer(ControlAPIError(409, {"error": "stale epoch"})) == (409, {"error": "the controller refused: stale epoch"})
    assert answer(ControlAPIError(500, {"error": "internal error"}))[0] == 503


def test_blade_status_decoding_is_strict() -> None:
    st = BladeStatus.from_json({"blade": "b0", "heartbeat": {"time": 1, "counter": 2}, "load": {"iops": 3, "mbps": {}}})
    assert st.heartbeat_time == 1.0 and st.heartbeat_counter == 2 and st.load == {"iops": 3.0}
    assert BladeStatus.from_json(st.to_json()) == st
    for bad, field in (({"heartbeat": "x"}, "heartbeat"), ({"clients": "3"}, "clients"),
                       ({"fileSystems": "fs1"}, "fileSystems"), ({"clients": True}, "clients")):
        with pytest.raises(ValueError, match=field):
            BladeStatus.from_json({"blade": "b0", **bad})
    with pytest.raises(ValueError, match="blade is required"):
        BladeStatus.from_json({})


def test_sizes_and_durations() -> None:
    assert parse_size("512M") == 512 << 20 and parse_size("1GiB") == 1 << 30 and parse_size(4096) == 4096
    assert format_size(3 << 30) == "3G" and format_size(1536 << 20) == "1536M"
    assert parse_duration("200ms", "x") == pytest.approx(0.2) and parse_duration("10m", "x") == 600.0
    # one parser for every dialect (nasblade.units): the Kubernetes spelling works here too
    assert parse_size("1Gi") == 1 << 30 and parse_size("1G") == 1 << 30 and parse_duration("1h30m", "x") == 5400
    with pytest.raises(ConfigError, match=r"a\.b: '12 parsecs' is not a size"):
        parse_size("12 parsecs", "a.b")
    with pytest.raises(ConfigError, match="-1 is negative"):
        parse_size(-1, "x")


def test_a_reservation_whose_export_is_refused_is_no_hold_on_the_lu() -> None:
    """The controller reserved the LU, then refused to open it (an NBD access file that does
    not list the group's new LU yet): the block processor must not count the LU as held, or
    its cluster member would take the file system for served and never try again (the e2e
    run of 5 Dec 2026 left a new file system unserved that way)."""
    import asyncio

    from nasblade.blockproc.core import BlockProcessor, Settings
    from nasblade.controller.asyncclient import Reservation

    class Control:
        async def reserve(self, lu: str, holder: str) -> Reservation:
            return Reservation(holder=holder, epoch=7)

    bp = BlockProcessor(Settings(blade="g1-0", group="g1"), control=Control())  # type: ignore[arg-type]

    async def refused(lu: str, *, epoch: int | None = None) -> None:
        raise PermissionError(13, f"controller refused export '{lu};holder=g1-0;epoch={epoch}'")

    bp.add_lu = refused  # type: ignore[method-assign]
    bp.epochs["fs-x"] = 3  # an older hold, fenced by the new reservation
    with pytest.raises(PermissionError):
        asyncio.run(bp.take_over("fs-x"))
    assert "fs-x" not in bp.epochs
