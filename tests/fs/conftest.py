"""Fixtures for the file-system tests (no network, no processes).

- ``device``: a fresh ``FileBlockDevice`` (128 MiB sparse file in ``tmp_path``) with an empty
  nasblade file system on it (``mkfs``).
- ``fsys``: that file system mounted; closed (committed + checkpointed) at teardown and then
  checked with fsck, so every test also asserts the file system it leaves is consistent.
- ``CrashDevice`` (in ``fs_crashdev``): an in-memory device that can lose or tear the writes
  issued since the last flush, to simulate a power cut at any moment.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from nasblade.blockdev import FileBlockDevice
from nasblade.fs import fs as fsmod
from nasblade.fs import fsck


@pytest.fixture
def device(tmp_path: Path) -> Iterator[FileBlockDevice]:
    dev = FileBlockDevice(tmp_path / "lu.img", size=128 << 20)
    fsmod.mkfs(dev)
    yield dev
    dev.close()


@pytest.fixture
def fsys(device: FileBlockDevice) -> Iterator[fsmod.FileSystem]:
    f = fsmod.FileSystem(device)
    yield f
    f.close()
    rep = fsck.check(device)
    assert rep.clean, rep.problems
