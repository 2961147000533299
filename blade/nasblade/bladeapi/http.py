"""``JSONClient``: the one synchronous HTTP/JSON client base of the blade side.

Every client of a nasblade HTTP API is a subclass with one method per route: the controller's
control API (``nasblade.controller.apiclient.ControlClient``), the blade management and local
APIs and the file processor's control socket (``nasblade.bladeapi.client``), the chassis of
``nasblade up`` (``nasblade.bladeapi.chassis``). The base owns the transport -- TCP for an
``http://HOST:PORT`` URL, a Unix socket (``UnixHTTPConnection``) for a path -- a bearer token
when there is one, the JSON request and reply bodies and the error rule: a reply outside 2xx
becomes the exception the subclass builds in ``error(status, body)`` (``body`` is the decoded
JSON object, or ``{"error": text}`` when the reply was not a JSON object). Standard library
only; one connection per call (``Connection: close``).
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
from typing import Any
from urllib.parse import urlencode, urlparse

from nasblade import tls


class HTTPAPIError(RuntimeError):
    """A non-2xx reply of a nasblade API: ``status`` and the server's ``message``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message


class UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP over a Unix socket (the local APIs: block processor, file processor, chassis)."""

    def __init__(self, path: str, *, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._path)
        self.sock = sock


class _NamedHTTPSConnection(http.client.HTTPSConnection):
    """HTTPS to an address whose certificate is checked against another name."""

    def __init__(self, host: str, port: int, *, timeout: float, context: ssl.SSLContext,
                 server_hostname: str) -> None:
        super().__init__(host, port, timeout=timeout, context=context)
        self._ctx = context
        self._name = server_hostname

    def connect(self) -> None:
        sock = socket.create_connection((self.host, self.port), self.timeout)
        self.sock = self._ctx.wrap_socket(sock, server_hostname=self._name)


class JSONClient:
    """Base of the API clients: ``JSONClient(url="http://h:p", token=...)`` or ``JSONClient(unix=PATH)``."""

    def __init__(self, *, url: str | None = None, unix: str | None = None, token: str | None = None,
                 timeout: float = 30.0, ssl_context: ssl.SSLContext | None = None,
                 server_hostname: str | None = None) -> None:
        if (url is None) == (unix is None):
            raise ValueError("give the API's url or its unix socket path")
        self.unix = unix
        self.host, self.port = "localhost", 0
        self.https = False
        if url is not None:
            parsed = urlparse(url if "://" in url else f"http://{url}")
            if parsed.scheme not in ("http", "https") or not parsed.hostname:
                raise ValueError(f"expected http://HOST:PORT or https://HOST:PORT, got {url!r}")
            self.https = parsed.scheme == "https"
            self.host, self.port = parsed.hostname, parsed.port or (443 if self.https else 80)
        self.token = token
        self.timeout = timeout
        self.ssl_context = ssl_context
        #: the name the server's certificate must carry when it is not the host dialled (a blade
        #: pod reached by its IP presents a certificate for its pod name)
        self.server_hostname = server_hostname

    def error(self, status: int, body: dict[str, Any]) -> Exception:
        """The exception a non-2xx reply raises (subclasses return their own kind)."""
        return HTTPAPIError(status, str(body.get("error", "")))

    def _connection(self) -> http.client.HTTPConnection:
        if self.unix is not None:
            return UnixHTTPConnection(self.unix, timeout=self.timeout)
        if self.https:
            # the credentials as they are now (renewed files are read at the next call);
            # without any, the system's CAs -- which never sign an array's certificates
            context = self.ssl_context or tls.default_client_context() or ssl.create_default_context()
            if self.server_hostname is not None:
                return _NamedHTTPSConnection(self.host, self.port, timeout=self.timeout, context=context,
                                             server_hostname=self.server_hostname)
            return http.client.HTTPSConnection(self.host, self.port, timeout=self.timeout, context=context)
        return http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)

    def request(self, method: str, path: str, body: Any = None, *, query: dict[str, str] | None = None) -> Any:
        """One call: ``body`` sent as JSON (when not ``None``); the decoded reply (``None`` when empty)."""
        if query:
            path = f"{path}?{urlencode(query)}"
        headers = {"Accept": "application/json"}
        if self.token is not None:
            headers["Authorization"] = f"Bearer {self.token}"
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        conn = self._connection()
        try:
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
            raw = resp.read()
        finally:
            conn.close()
        decoded: Any = None
        if raw:
            try:
                decoded = json.loads(raw)
            except ValueError:
                decoded = {"error": raw.decode(errors="replace")}
        if not 200 <= resp.status < 300:
            raise self.error(resp.status, decoded if isinstance(decoded, dict) else {"error": raw.decode(errors="replace")})
        return decoded
