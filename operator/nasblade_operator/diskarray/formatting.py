"""When a file-system LU may be formatted: the decision, without I/O.

``diskarray/handlers.py`` feeds this module what it knows about each file-system LU -- the
record in the DiskArray status (``status.fileSystems[].formatted`` with the LU's creation time
``luCreated``, written only after mkfs returned) and, when there is no valid record, the
first ``PROBE_SIZE`` bytes of the LU read over NBD (``arrayapi.read_lu_head``) -- and carries
out the ``Step`` it gets back. ``clustergroup/daemon.py`` asks ``formatted_names`` which
file systems blades may be given.

The rules, so that a crash at any point neither loses data nor strands an LU unformatted:

* ``mkfs`` (nasblade/fs/fs.py) zeroes the superblock first and writes it last, with FUA, after
  a flush of everything else; a new LU reads as zeroes (the controller zeroes new extents). So
  the superblock block of a file-system LU is either all zeroes (new, or mkfs did not finish:
  nothing can have been stored in it) or a valid superblock (mkfs finished).
* An LU recorded as formatted is never probed or formatted again. A record counts only for
  the LU incarnation it was written for (same ``created`` time on the controller): an LU that
  was deleted and created anew is a new, blank LU.
* Without a valid record, the LU's head decides: all zeroes -> format; a valid nasblade
  superblock -> only record it (mkfs finished, the crash came before the record, or the
  DiskArray was recreated over retained devices); anything else -> refuse and tell the user
  (it holds something, and formatting would destroy it).
* Blades are given a file system only once it is recorded as formatted.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any

#: Bytes read from the start of an LU to classify it: the file system's superblock block.
PROBE_SIZE = 4096


class Probe(enum.Enum):
    """What the head of an LU holds."""

    BLANK = "blank"  # all zeroes: never formatted, or mkfs did not get to the superblock
    FILESYSTEM = "filesystem"  # a valid nasblade file-system superblock
    FOREIGN = "foreign"  # anything else: data this operator did not put there


class Step(enum.Enum):
    """What the DiskArray handler does with one file-system LU."""

    NOTHING = "nothing"  # recorded as formatted: leave it alone (no I/O)
    PROBE = "probe"  # no valid record: read its head, then decide again
    FORMAT = "format"  # blank and not recorded: mkfs, then record
    RECORD = "record"  # holds a file system but was not recorded: record only
    REFUSE = "refuse"  # holds foreign data: do not touch, tell the user


#: (recorded as formatted for this LU incarnation, what its head holds) -> step.
#: ``None`` as the probe means "not read yet".
DECISIONS: Mapping[tuple[bool, Probe | None], Step] = {
    (True, None): Step.NOTHING,
    (True, Probe.BLANK): Step.NOTHING,
    (True, Probe.FILESYSTEM): Step.NOTHING,
    (True, Probe.FOREIGN): Step.NOTHING,
    (False, None): Step.PROBE,
    (False, Probe.BLANK): Step.FORMAT,
    (False, Probe.FILESYSTEM): Step.RECORD,
    (False, Probe.FOREIGN): Step.REFUSE,
}


def decide(*, recorded: bool, probe: Probe | None) -> Step:
    """The step for one LU; see the module docstring for why."""
    return DECISIONS[(recorded, probe)]


def classify(head: bytes) -> Probe:
    """Classify the first ``PROBE_SIZE`` bytes of an LU."""
    if len(head) < PROBE_SIZE:
        return Probe.FOREIGN  # too small for a file system: never format it
    if not any(head):
        return Probe.BLANK
    from nasblade.fs import layout

    try:
        layout.Superblock.unpack(head[: layout.SB_SIZE])
    except layout.LayoutError:
        return Probe.FOREIGN
    return Probe.FILESYSTEM


def is_recorded(record: Mapping[str, Any] | None, *, lu_created: str) -> bool:
    """Whether a ``status.fileSystems[]`` entry records this LU incarnation as formatted."""
    return bool(record and record.get("formatted") and record.get("luCreated") == lu_created)


def records_by_name(status: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """``status.fileSystems`` of a DiskArray keyed by file-system name."""
    return {str(f.get("name")): f for f in status.get("fileSystems") or [] if isinstance(f, Mapping)}


def formatted_names(status: Mapping[str, Any]) -> frozenset[str]:
    """File systems of a DiskArray that blades may be given (recorded as formatted)."""
    return frozenset(name for name, f in records_by_name(status).items() if f.get("formatted"))
