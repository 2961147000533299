"""Blade health from what the system reports: pure functions, no I/O.

Inputs are the blade's slot (heartbeat age, the state the file processor wrote) and whether
its management API answered; the output is one of ``ok``, ``suspect``, ``dead``, ``stopped``,
``unknown`` with a reason an administrator can act on. ``standalone`` and ``kube`` call it;
``render`` and ``svgmap`` colour by its result (``COLOURS``).
"""

from __future__ import annotations

from nasblade.terminal.model import BladeState

COLOURS: dict[str, str] = {
    "ok": "#2e9d4f",
    "suspect": "#e0a800",
    "dead": "#d64541",
    "stopped": "#8a8f98",
    "unknown": "#8a8f98",
}
RICH_STYLES: dict[str, str] = {
    "ok": "green",
    "suspect": "yellow",
    "dead": "bold red",
    "stopped": "dim",
    "unknown": "dim",
}


def blade_state(
    *, slot_state: str | None, heartbeat_age: float | None, reachable: bool | None, failure_timeout: float
) -> tuple[BladeState, str]:
    """Classify one blade.

    ``reachable`` is None when there is no management endpoint to ask (only the slot is known).
    A blade whose heartbeat is older than ``failure_timeout`` is ``suspect`` while its API still
    answers and ``dead`` when it does not; a fresh heartbeat with a silent API is ``suspect``.
    """
    if slot_state == "stopped":
        return "stopped", "the file processor stopped"
    if heartbeat_age is None:
        if reachable:
            return "unknown", "no heartbeat stored yet"
        if reachable is None:
            return "unknown", "no heartbeat and no management endpoint"
        return "dead", "management API unreachable and no heartbeat"
    fresh = heartbeat_age <= failure_timeout
    if fresh and reachable is not False:
        return "ok", ""
    if fresh:
        return "suspect", "management API unreachable"
    if reachable:
        return "suspect", f"heartbeat {heartbeat_age:.1f}s old (timeout {failure_timeout:g}s)"
    return "dead", f"heartbeat {heartbeat_age:.1f}s old (timeout {failure_timeout:g}s)"
