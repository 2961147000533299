"""Reading JSON request bodies, bounded: the one helper every HTTP app of nasblade uses.

Used by the controller's control API (``nasblade.controller.api``), the blade management and
local APIs (``nasblade.blockproc.api``) and the cluster routes mounted on the blade app
(``nasblade.cluster.api``). Each app's error middleware turns ``BodyError`` into its JSON error
reply ``{"error": message}`` with ``BodyError.status``.

The rule (docs/control-api.md, "Request bodies"):

- at most ``MAX_BYTES`` bytes (whatever the app's ``client_max_size``): ``413``;
- UTF-8 JSON whose object/array nesting is at most ``MAX_DEPTH`` deep, else ``400``; the depth
  is measured on the text before parsing (``depth``), so a deeply nested body never reaches the
  recursive parser (which raised ``RecursionError``, a ``500``);
- a JSON object at the top: ``400`` otherwise. An empty body is ``{}`` where a route allows it
  (``optional=True``), else ``400``.

``parse`` is the sans-I/O core (bytes in, object out) that tests and fuzzers hit directly;
``read`` is the aiohttp shell around it.
"""

from __future__ import annotations

import json
import re
from typing import Any

from aiohttp import web

MAX_BYTES = 1 << 20
"""Largest request body (bytes) any route accepts."""

MAX_DEPTH = 32
"""Deepest nesting of JSON objects and arrays a body may have."""

_STRINGS = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKETS = re.compile(rb"[\[\]{}]")


class BodyError(Exception):
    """A request body that cannot be accepted; ``status`` is 400 or 413."""

    def __init__(self, message: str, *, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def depth(data: bytes) -> int:
    """Deepest bracket nesting of JSON text ``data`` (strings skipped), in O(len(data))."""
    deepest = level = 0
    for m in _BRACKETS.finditer(_STRINGS.sub(b'""', data)):
        if m.group() in b"[{":
            level += 1
            deepest = max(deepest, level)
        else:
            level -= 1
    return deepest


def parse(data: bytes, *, max_bytes: int = MAX_BYTES, max_depth: int = MAX_DEPTH,
          optional: bool = False) -> dict[str, Any]:
    """The JSON object in ``data``; raises ``BodyError`` for anything else."""
    if len(data) > max_bytes:
        raise BodyError(f"request body larger than {max_bytes} bytes", status=413)
    if not data.strip():
        if optional:
            return {}
        raise BodyError("the request body must be a JSON object (it is empty)")
    if depth(data) > max_depth:
        raise BodyError(f"malformed JSON: nested deeper than {max_depth} levels")
    try:
        body = json.loads(data.decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise BodyError(f"malformed JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise BodyError("the request body must be a JSON object")
    return body


async def read(request: web.Request, *, max_bytes: int = MAX_BYTES, max_depth: int = MAX_DEPTH,
               optional: bool = False) -> dict[str, Any]:
    """Read and ``parse`` the body of ``request``, never more than ``max_bytes + 1`` bytes."""
    if request.content_length is not None and request.content_length > max_bytes:
        raise BodyError(f"request body larger than {max_bytes} bytes", status=413)
    if not request.can_read_body:
        return parse(b"", max_bytes=max_bytes, max_depth=max_depth, optional=optional)
    chunks: list[bytes] = []
    size = 0
    while size <= max_bytes and (chunk := await request.content.read(max_bytes + 1 - size)):
        chunks.append(chunk)
        size += len(chunk)
    return parse(b"".join(chunks), max_bytes=max_bytes, max_depth=max_depth, optional=optional)
