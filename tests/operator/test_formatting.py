"""Unit tests of diskarray/formatting.py: when a file-system LU may be formatted (no I/O)."""

from __future__ import annotations

import itertools

import pytest
from nasblade.fs import layout
from nasblade_operator.diskarray import formatting
from nasblade_operator.diskarray.formatting import Probe, Step


def test_every_combination_has_a_step() -> None:
    for recorded, probe in itertools.product((True, False), (None, *Probe)):
        assert isinstance(formatting.decide(recorded=recorded, probe=probe), Step)


@pytest.mark.parametrize("probe", [None, *Probe])
def test_a_recorded_lu_is_never_formatted_or_probed(probe: Probe | None) -> None:
    assert formatting.decide(recorded=True, probe=probe) is Step.NOTHING


def test_unrecorded_lu_is_formatted_only_when_blank() -> None:
    assert formatting.decide(recorded=False, probe=None) is Step.PROBE
    assert formatting.decide(recorded=False, probe=Probe.BLANK) is Step.FORMAT
    assert formatting.decide(recorded=False, probe=Probe.FILESYSTEM) is Step.RECORD
    assert formatting.decide(recorded=False, probe=Probe.FOREIGN) is Step.REFUSE


def test_classify() -> None:
    assert formatting.classify(bytes(formatting.PROBE_SIZE)) is Probe.BLANK
    sb = layout.plan(64 << 20).pack()
    assert formatting.classify(sb) is Probe.FILESYSTEM
    torn = bytearray(sb)
    torn[20] ^= 0xFF  # checksum no longer matches: may hold data, never format it
    assert formatting.classify(bytes(torn)) is Probe.FOREIGN
    assert formatting.classify(b"\x01" + bytes(formatting.PROBE_SIZE - 1)) is Probe.FOREIGN
    assert formatting.classify(bytes(100)) is Probe.FOREIGN  # too small to hold a file system


def test_a_record_is_about_one_lu_incarnation() -> None:
    record = {"name": "home", "formatted": True, "luCreated": "2026-11-25T13:00:00.000001Z"}
    assert formatting.is_recorded(record, lu_created="2026-11-25T13:00:00.000001Z")
    assert not formatting.is_recorded(record, lu_created="2026-11-25T14:00:00.000001Z")  # LU deleted and recreated
    assert not formatting.is_recorded({**record, "formatted": False}, lu_created=record["luCreated"])
    assert not formatting.is_recorded(None, lu_created="")
    status = {"fileSystems": [record, {"name": "new", "formatted": False}, {"name": "old", "ready": True}]}
    assert formatting.formatted_names(status) == {"home"}
    assert formatting.formatted_names({}) == frozenset()
