"""The operator's one HTTP session holder, for every call to a controller or a blade.

``state.OperatorState.http`` holds one ``Sessions``; ``arrayapi`` (controllers' control APIs)
and ``bladeapi`` (blades' management APIs) are handed it and take the session from it, each
call with its own timeout. The aiohttp session is opened on first use, inside the running
loop, and closed by ``handlers.shutdown`` (through ``OperatorState.close``).

HTTPS: the session's TLS context trusts exactly the CAs of the arrays the operator manages
(``trust``, fed by ``OperatorState.trust`` from each array's CA Secret; never the system's
CAs) and checks host names: a controller by its Service name, a blade by its pod name
(``bladeapi`` passes it, the blade is dialled by pod IP). No client certificate: the APIs
authenticate the bearer token.
"""

from __future__ import annotations

import ssl

import aiohttp


def _context() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED, check_hostname, no CA yet
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


class Sessions:
    """One aiohttp session, opened lazily, reopened if it was closed."""

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None
        self.ssl = _context()
        self._trusted: set[bytes] = set()

    def trust(self, bundle: bytes) -> None:
        """Trust the CA certificates of a PEM bundle from now on (an array's, a new one after
        a rotation); the same bundle twice is loaded once."""
        if bundle and bundle not in self._trusted:
            self.ssl.load_verify_locations(cadata=bundle.decode())
            self._trusted.add(bundle)

    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=self.ssl))
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
