"""Which processor-info area each portion of a DiskArray runs from, computed without I/O.

After an area failover (DESIGN.md §5) the blades of a group run from the group's backup area
instead of its portion; the group daemon (``clustergroup/daemon.py``) records what its blades
report as ClusterGroup ``status.activeArea``. ``diskarray/handlers.py`` mirrors that into the
DiskArray: ``status.portions[].activeArea`` per portion, and ``status.areas.activeProcessorInfoArea``
(``backup`` while any portion runs from its backup area; a printer column). This module computes
the new ``status.portions`` from the old one and the groups' areas; the handler patches it only
when it differs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

PORTION = "portion"
BACKUP = "backup"


def mirrored(portions: Sequence[Mapping[str, Any]], active: Mapping[str, str]) -> list[dict[str, Any]]:
    """``portions`` with each entry's ``activeArea`` set from ``active`` (group -> area).

    A portion whose group is not in ``active`` (not seen yet, or being deleted) keeps what it has.
    """
    out: list[dict[str, Any]] = []
    for p in portions:
        entry = dict(p)
        area = active.get(str(p.get("group")))
        if area is not None:
            entry["activeArea"] = BACKUP if area == BACKUP else PORTION
        out.append(entry)
    return out


def summary(portions: Sequence[Mapping[str, Any]]) -> str:
    """The array-wide figure: ``backup`` while any portion runs from its backup area."""
    return BACKUP if any(p.get("activeArea") == BACKUP for p in portions) else PORTION
