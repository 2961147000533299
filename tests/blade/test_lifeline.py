"""``nasblade.bladeapi.lifeline``: the block processor knows whether a file processor holds its
lifeline now (``Lifeline.alive``: a replaced pod's block processor refuses to take a file
system over before its file processor runs), and a lifeline that ends without ``bye`` is a
lost file processor."""

from __future__ import annotations

import asyncio
from pathlib import Path

from nasblade.bladeapi import lifeline


async def _until(cond: object, what: str) -> None:
    for _ in range(200):
        if callable(cond) and cond():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(what)


def test_alive_while_a_file_processor_holds_it(tmp_path: Path) -> None:
    async def main() -> list[int | None]:
        lost: list[int | None] = []

        async def on_lost(pid: int | None) -> None:
            lost.append(pid)

        line = lifeline.Lifeline(on_lost)
        path = str(tmp_path / "l.sock")
        await line.start(path)
        assert not line.alive  # nobody yet
        stop = asyncio.Event()
        holder = asyncio.create_task(lifeline.hold(path, retry=0.05, stop=stop))
        await _until(lambda: line.alive, "the holder's hello")
        stop.set()  # a clean goodbye
        await holder
        await _until(lambda: not line.alive, "alive after bye")
        assert lost == []
        # a holder that vanishes without bye (a killed process): lost, and not alive
        _reader, writer = await asyncio.open_unix_connection(path)
        writer.write(b'{"hello": "file-processor", "pid": 4242}\n')
        await writer.drain()
        await _until(lambda: line.alive, "the second hello")
        writer.close()
        await _until(lambda: lost == [4242], "the loss reported")
        assert not line.alive
        await line.close()
        return lost

    assert asyncio.run(main()) == [4242]
