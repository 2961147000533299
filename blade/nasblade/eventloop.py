"""The event loop the data-path daemons run on: uvloop.

The controller, the block processor and the file processor carry every byte of the data path
through asyncio transports. The stock selector loop of Python 3.11 joins ``writelines`` into a
new buffer and, after every partial send, keeps the rest in a bytearray it memmoves as it
drains: a 1 MiB READ reply is copied several times on its way out. uvloop's transports (libuv)
write header and payload with one writev and keep unsent bytes without copying them again, and
its callbacks are cheaper. Measured in docs/performance.md (bench/stack, bench/nbd). The daemons
start their loop here so the choice has one home.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

import uvloop

T = TypeVar("T")


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run`` on a uvloop loop (the process's loop policy is left alone)."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)
