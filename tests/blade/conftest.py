"""Fixtures for the blade tests (processor information, program storage, block processor,
blade API and the standalone array).

- ``device``: a 4 MiB ``FileBlockDevice`` in a temporary directory, for the pure-library tests
  of ``nasblade.procinfo`` and ``nasblade.program`` (no processes, no network).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from nasblade.blockdev import FileBlockDevice


@pytest.fixture
def device(tmp_path: Path) -> Iterator[FileBlockDevice]:
    """A sparse 4 MiB file-backed block device, closed after the test."""
    dev = FileBlockDevice(tmp_path / "lu.img", size=4 << 20)
    yield dev
    dev.close()
