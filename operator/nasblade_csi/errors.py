"""How the services answer errors: ``CsiError`` carries a gRPC status code; ``guard`` turns it,
and the array's own failures (``ArrayError``, ``CatalogFull``), into ``context.abort`` with the
right code (this module imports no array code, so the node plugin runs without it); ``capability_error``
says why a volume capability is not one this driver serves (or ``""``)."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import grpc
from nasblade.controller.apiclient import ControlAPIError

log = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Any])

_ARRAY_CODES = {
    "nospace": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "busy": grpc.StatusCode.ABORTED,
    "missing": grpc.StatusCode.NOT_FOUND,
    "in-use": grpc.StatusCode.FAILED_PRECONDITION,
    "failed": grpc.StatusCode.INTERNAL,
}


class ArrayError(Exception):
    """An array operation that failed (``nasblade_csi.array``); ``kind`` is one of ``nospace``,
    ``busy``, ``missing``, ``in-use``, ``failed``."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class CatalogFull(Exception):
    """The catalog's JSON no longer fits its record (``nasblade_csi.catalog``)."""


class CsiError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


def guard(method: F) -> F:
    @functools.wraps(method)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return method(self, request, context)
        except CsiError as exc:
            context.abort(exc.code, str(exc))
        except ArrayError as exc:
            log.warning("%s: %s", method.__name__, exc)
            context.abort(_ARRAY_CODES[exc.kind], str(exc))
        except CatalogFull as exc:
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
        except ControlAPIError as exc:
            if exc.no_space:  # the catalog's own LU, say: the array has no room for it
                log.warning("%s: %s", method.__name__, exc)
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, f"the array: {exc}")
            else:
                log.warning("%s: the array did not answer: %s", method.__name__, exc)
                context.abort(grpc.StatusCode.UNAVAILABLE, f"the array: {exc}")
        except OSError as exc:
            log.warning("%s: the array did not answer: %s", method.__name__, exc)
            context.abort(grpc.StatusCode.UNAVAILABLE, f"the array: {exc}")
    return wrapper  # type: ignore[return-value]


def require(request: Any, *fields: str) -> None:
    """INVALID_ARGUMENT naming the first of ``fields`` that ``request`` leaves empty (a message
    field counts as empty when it is not set)."""
    for field in fields:
        try:
            present = request.HasField(field)
        except ValueError:  # a scalar or repeated field: empty is falsy
            present = bool(getattr(request, field))
        if not present:
            raise CsiError(grpc.StatusCode.INVALID_ARGUMENT, f"{field} is required")


def capability_error(cap: Any) -> str:
    """Why this driver cannot serve ``cap`` (a ``VolumeCapability``), or ``""``: file-system
    volumes only (NFS), every access mode (an NFS export is shared by nature)."""
    if cap.HasField("block"):
        return "block volumes are not served: nasblade volumes are NFS file systems"
    if not cap.HasField("mount"):
        return "access_type (mount) is required"
    if cap.mount.fs_type not in ("", "nfs"):
        return f"fs_type {cap.mount.fs_type!r}: nasblade volumes are NFS (fs_type nfs or empty)"
    if not cap.HasField("access_mode") or cap.access_mode.mode == 0:
        return "access_mode is required"
    return ""
