"""Fixtures for the storage controller tests.

- ``controller_factory``: starts real ``nasblade controller`` processes on temporary device
  files (``python -m nasblade controller``), waits for their ready line and stops them
  (SIGTERM, or SIGKILL for crash tests through ``Controller.kill``). Each ``Controller`` has
  ``nbd`` ("HOST:PORT"), ``api`` (URL), ``client`` (user-token ``ControlClient``) and
  ``admin`` (admin-token ``ControlClient``), and ``restart()`` re-opens the same devices.
- ``controller``: one running controller with two 256 MiB devices.
- ``lu``: a fresh 64 MiB LU on ``controller``; returns its name.

Unit tests (``test_proto.py``, ``test_layout.py``, ``test_cache.py``) use none of these.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from ctlharness import Controller


@pytest.fixture
def controller_factory(tmp_path: Path) -> Iterator[Callable[..., Controller]]:
    started: list[Controller] = []
    counter = itertools.count()

    def make(*, devices: int = 2, size: str = "256M", cache_size: str = "64M",
             extra: list[str] | None = None, faults: bool = True) -> Controller:
        work = tmp_path / f"ctl{next(counter)}"
        work.mkdir()
        devs = [f"{work / f'dev{i}'}:{size}" for i in range(devices)]
        c = Controller(work, devs, cache_size, extra=extra or [], faults=faults)
        c.start()
        started.append(c)
        return c

    yield make
    for c in started:
        if c.proc is not None and c.proc.poll() is None:
            c.stop()
        log = c.log()
        assert "Traceback" not in log, log


@pytest.fixture
def controller(controller_factory: Callable[..., Controller]) -> Controller:
    return controller_factory()


@pytest.fixture
def lu(controller: Controller) -> str:
    name = f"lu{os.getpid()}"
    controller.client.create_lu(name, 64 << 20)
    return name


def module_controller(tmp_path_factory: pytest.TempPathFactory, name: str, *, faults: bool = True
                      ) -> Iterator[Controller]:
    """The body of a module-scoped controller fixture: two 256M devices, a 64M cache, an LU
    ``shared``; on teardown its log must hold no traceback."""
    work = tmp_path_factory.mktemp(name)
    c = Controller(work, [f"{work / f'dev{i}'}:256M" for i in range(2)], "64M", faults=faults)
    c.start()
    c.client.create_lu("shared", 64 << 20)
    yield c
    c.stop()
    log = c.log()
    assert "Traceback" not in log, log


@pytest.fixture(scope="module")
def shared_controller(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Controller]:
    """One controller for a whole module of table-driven tests that do not change its state
    in ways other rows could see (malformed input, error replies). Saves start-ups."""
    yield from module_controller(tmp_path_factory, "shared")
