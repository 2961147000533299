"""Fixtures for the NFS tests (file processor on an LU of a real controller).

- ``controller`` (session): one ``nasblade controller`` with a 6 GiB sparse device.
- ``lu_url``: a fresh 512 MiB LU with an empty file system (``nasblade mkfs`` over NBD).
- ``fp_factory``: starts ``nasblade file-processor`` processes (``nfs_harness.FileProcessor``)
  and stops them at teardown, failing the test if a process logged a traceback.
- ``served`` (module): one file processor on its own LU with the exports most tests use:
  ``/admin`` (no root squash), ``/x`` (root squash, the default), ``/ro`` (read-only) and
  ``/only2`` (only 127.0.0.2/32 may use it). All four export the same file system root.
  Its LU is 1 GiB, or ``SERVED_LU_SIZE`` bytes when the test module sets that (the session's
  controller has 6 GiB for every LU of the run, and LUs are not deleted).

``test_nfs_xdr_rpc.py`` is pure unit tests and uses none of these.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from nfs_harness import Controller, FileProcessor, export


@pytest.fixture(scope="session")
def controller(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Controller]:
    c = Controller(tmp_path_factory.mktemp("controller"))
    c.start()
    yield c
    c.stop()


@pytest.fixture
def lu_url(controller: Controller) -> str:
    return controller.new_lu()


def _check_logs(fps: list[FileProcessor]) -> None:
    for fp in fps:
        if fp.proc is not None and fp.proc.poll() is None:
            fp.stop()
        assert "Traceback" not in fp.log(), fp.log()


@pytest.fixture
def fp_factory(tmp_path: Path) -> Iterator[Callable[..., FileProcessor]]:
    started: list[FileProcessor] = []

    def make(device: str, exports: list[dict[str, Any]], **kw: Any) -> FileProcessor:
        fp = FileProcessor(tmp_path, device, exports, **kw)
        fp.start()
        started.append(fp)
        return fp

    yield make
    _check_logs(started)


STANDARD_EXPORTS = [
    export("/admin", rootSquash=False),
    export("/x"),
    export("/ro", access="ro"),
    export("/only2", ["127.0.0.2/32"]),
]


@pytest.fixture(scope="module")
def served(
    controller: Controller, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[FileProcessor]:
    size = int(getattr(request.module, "SERVED_LU_SIZE", 1 << 30))
    fp = FileProcessor(tmp_path_factory.mktemp("fp"), controller.new_lu(size), STANDARD_EXPORTS)
    fp.start()
    yield fp
    _check_logs([fp])
