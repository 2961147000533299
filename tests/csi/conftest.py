"""Fixtures for the CSI driver's tests (helpers in ``csiharness``):

- ``array``: a real storage controller on two 1 GiB sparse device files, stopped at teardown
  (and its log checked for tracebacks).
- ``driver``: ``nasblade-csi --role all`` in front of ``array``; stopped at teardown.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from csiharness import Array, Driver


@pytest.fixture
def array(tmp_path: Path) -> Iterator[Array]:
    work = tmp_path / "array"
    work.mkdir()
    a = Array(work)
    a.start()
    yield a
    assert a.proc is not None
    a.proc.stop()
    log = a.proc.log.read_text()
    assert "Traceback" not in log, log


@pytest.fixture
def driver(tmp_path: Path, array: Array) -> Iterator[Driver]:
    work = tmp_path / "csi"
    work.mkdir()
    d = Driver(work, array)
    d.start()
    yield d
    d.stop()
    assert d.proc is not None
    log = d.proc.log.read_text()
    assert "Traceback" not in log, log
