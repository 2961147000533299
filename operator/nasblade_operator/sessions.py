"""The operator's one HTTP session holder, for every call to a controller or a blade.

``state.OperatorState.http`` holds one ``Sessions``; ``arrayapi`` (controllers' control APIs)
and ``bladeapi`` (blades' management APIs) are handed it and take the session from it, each
call with its own timeout. The aiohttp session is opened on first use, inside the running
loop, and closed by ``handlers.shutdown`` (through ``OperatorState.close``).
"""

from __future__ import annotations

import aiohttp


class Sessions:
    """One aiohttp session, opened lazily, reopened if it was closed."""

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None

    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
