"""Status conditions as the Kubernetes API conventions define them, computed without I/O.

Handlers build the new ``status.conditions`` list with ``set_condition`` from the one they
read in the body, so ``lastTransitionTime`` only moves when ``status`` changes. The condition
types used by both resources are named here; ``Ready`` summarises the others.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Mapping
from typing import Any, Literal, TypedDict

READY = "Ready"
PROGRESSING = "Progressing"
DEGRADED = "Degraded"
BACKED_UP = "BackedUp"

Status = Literal["True", "False", "Unknown"]


class Condition(TypedDict):
    type: str
    status: Status
    reason: str
    message: str
    lastTransitionTime: str
    observedGeneration: int


def now_rfc3339(now: datetime.datetime | None = None) -> str:
    """UTC time as Kubernetes writes it (second precision, ``Z`` suffix)."""
    t = now or datetime.datetime.now(datetime.UTC)
    return t.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str | None) -> datetime.datetime | None:
    """Parse an RFC 3339 time written by ``now_rfc3339`` (or Kubernetes); None if absent."""
    if not text:
        return None
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))


def set_condition(
    existing: Iterable[Mapping[str, Any]],
    *,
    type: str,
    status: Status,
    reason: str,
    message: str,
    generation: int,
    now: datetime.datetime | None = None,
) -> list[Condition]:
    """Return ``existing`` with condition ``type`` set; keeps the others in order.

    ``lastTransitionTime`` is kept when the status does not change.
    """
    out: list[Condition] = []
    found = False
    for c in existing:
        if c.get("type") != type:
            out.append(_normalise(c))
            continue
        found = True
        same = c.get("status") == status
        out.append(
            Condition(
                type=type,
                status=status,
                reason=reason,
                message=message,
                lastTransitionTime=str(c.get("lastTransitionTime")) if same and c.get("lastTransitionTime") else now_rfc3339(now),
                observedGeneration=generation,
            )
        )
    if not found:
        out.append(
            Condition(
                type=type,
                status=status,
                reason=reason,
                message=message,
                lastTransitionTime=now_rfc3339(now),
                observedGeneration=generation,
            )
        )
    return out


def get_condition(existing: Iterable[Mapping[str, Any]], type: str) -> Mapping[str, Any] | None:
    """The condition of ``type`` in ``existing``, or None."""
    for c in existing:
        if c.get("type") == type:
            return c
    return None


def is_true(existing: Iterable[Mapping[str, Any]], type: str) -> bool:
    """Whether condition ``type`` is present with status ``"True"``."""
    c = get_condition(existing, type)
    return c is not None and c.get("status") == "True"


def _normalise(c: Mapping[str, Any]) -> Condition:
    return Condition(
        type=str(c.get("type", "")),
        status=c.get("status", "Unknown"),
        reason=str(c.get("reason", "")),
        message=str(c.get("message", "")),
        lastTransitionTime=str(c.get("lastTransitionTime") or now_rfc3339()),
        observedGeneration=int(c.get("observedGeneration", 0)),
    )
