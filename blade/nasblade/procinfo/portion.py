"""One cluster group's portion of the processor-information LU, as a library over a BlockDevice.

The processor-information LU is cut into fixed-size portions, one per cluster group (portion
``i`` starts at ``i * portion_size``); the backup LU has one backup area of the same size per
portion. A ``PortionStore`` is pointed at ``(device, offset, size)`` and does not care which of
the two it is looking at, so a blade can switch from the portion to its backup area (claims 5,
11, 20) by building a second store over the backup LU.

Layout of a portion (format version 1; every record uses the two-copy framing of
``nasblade.procinfo.record``; every copy starts on a 4 KiB boundary)::

    offset                     size          what
    0                          2 x 4 KiB     portion header   (kind PORTION_HEADER)
    8 KiB                      2 x 64 KiB    group record     (kind GROUP)
    136 KiB + i * 16 KiB       2 x 8 KiB     blade slot i     (kind BLADE_SLOT), i < slot count

The slot count is ``min(64, (size - 136 KiB) // 16 KiB)`` and is stored in the header, as are
the group name, the portion index, the portion size and the record sizes, so a reader checks it
is looking at the portion it expects. The block processor writes a slot on behalf of its file
processor (claim 2); the group record (ownership map, backup history and a ``generation``
that every update increments) is changed with ``update_group``: read both copies, apply the
change, write the next copy only if both copies are still what was read, through the
controller's atomic compare-and-write (``POST /v1/lus/{lu}/compare-and-write``, a ``cas``
callable given to the store), retrying on a conflict with the bytes the controller returned.
So two blades changing the record at once never lose each other's update. A store without
``cas`` (tests, tools on a plain device) read-modify-writes.

All writes are FUA: when ``write_slot`` returns, the record is on stable storage.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from nasblade.blockdev import BlockDevice
from nasblade.procinfo import record
from nasblade.procinfo.record import Kind

FORMAT_VERSION = 1
HEADER_COPY = 4096
GROUP_COPY = 64 * 1024
SLOT_COPY = 8 * 1024
GROUP_OFFSET = 2 * HEADER_COPY
SLOTS_OFFSET = GROUP_OFFSET + 2 * GROUP_COPY
MAX_SLOTS = 64
MIN_PORTION_SIZE = SLOTS_OFFSET + 2 * 2 * SLOT_COPY  # room for two blades


class PortionError(RuntimeError):
    """The portion cannot be used: unformatted, both header copies bad, or not the expected one."""


def slot_count_for(size: int) -> int:
    return min(MAX_SLOTS, (size - SLOTS_OFFSET) // (2 * SLOT_COPY))


def portion_offset(index: int, portion_size: int) -> int:
    """Byte offset of portion ``index`` (and of its backup area in the backup LU)."""
    return index * portion_size


@dataclass(frozen=True)
class PortionHeader:
    group: str
    index: int
    portion_size: int
    slot_count: int
    format: int = FORMAT_VERSION
    created: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "group": self.group,
            "index": self.index,
            "portionSize": self.portion_size,
            "slotCount": self.slot_count,
            "groupRecordSize": GROUP_COPY,
            "slotRecordSize": SLOT_COPY,
            "created": self.created,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> PortionHeader:
        return cls(
            group=str(d["group"]),
            index=int(d["index"]),
            portion_size=int(d["portionSize"]),
            slot_count=int(d["slotCount"]),
            format=int(d["format"]),
            created=float(d.get("created", 0.0)),
        )


@dataclass
class BladeStatus:
    """What a file processor asks its block processor to record in its slot (claim 2)."""

    blade: str
    heartbeat_time: float = 0.0
    heartbeat_counter: int = 0
    state: str = "running"
    file_systems: list[str] = field(default_factory=list)
    exports: list[dict[str, Any]] = field(default_factory=list)
    write_verifier: str = ""
    software_version: str = ""
    active_area: str = "primary"
    load: dict[str, float] = field(default_factory=dict)
    clients: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "blade": self.blade,
            "heartbeat": {"time": self.heartbeat_time, "counter": self.heartbeat_counter},
            "state": self.state,
            "fileSystems": list(self.file_systems),
            "exports": list(self.exports),
            "writeVerifier": self.write_verifier,
            "softwareVersion": self.software_version,
            "activeArea": self.active_area,
            "load": dict(self.load),
            "clients": self.clients,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> BladeStatus:
        """Decode and type-check a slot payload; ``ValueError`` names the bad field."""
        hb = _typed(d, "heartbeat", dict, {})
        load = _typed(d, "load", dict, {})
        return cls(
            blade=_typed(d, "blade", str, None),
            heartbeat_time=float(_typed(hb, "time", (int, float), 0.0)),
            heartbeat_counter=_typed(hb, "counter", int, 0),
            state=_typed(d, "state", str, "running"),
            file_systems=[str(x) for x in _typed(d, "fileSystems", list, [])],
            exports=list(_typed(d, "exports", list, [])),
            write_verifier=_typed(d, "writeVerifier", str, ""),
            software_version=_typed(d, "softwareVersion", str, ""),
            active_area=_typed(d, "activeArea", str, "primary"),
            load={str(k): float(v) for k, v in load.items() if isinstance(v, int | float)},
            clients=_typed(d, "clients", int, 0),
        )


def _typed(d: dict[str, Any], key: str, kind: type | tuple[type, ...], default: Any) -> Any:
    if key not in d:
        if default is None:
            raise ValueError(f"{key} is required")
        return default
    value = d[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise ValueError(f"{key}: {value!r} has the wrong type")
    return value


@dataclass
class Ownership:
    blade: str
    epoch: int


@dataclass
class GroupRecord:
    """The group-wide record: who owns which file system (with its fencing epoch), backups."""

    ownership: dict[str, Ownership] = field(default_factory=dict)
    backups: list[dict[str, Any]] = field(default_factory=list)
    generation: int = 0
    """Incremented by every ``PortionStore.update_group``."""

    def to_json(self) -> dict[str, Any]:
        return {
            "ownership": {fs: asdict(o) for fs, o in sorted(self.ownership.items())},
            "backups": list(self.backups),
            "generation": self.generation,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> GroupRecord:
        own = {
            str(fs): Ownership(blade=str(o["blade"]), epoch=int(o["epoch"]))
            for fs, o in (d.get("ownership") or {}).items()
        }
        return cls(ownership=own, backups=list(d.get("backups", [])), generation=int(d.get("generation", 0)))


CompareAndWrite = Callable[[int, int, str, int, bytes], "bytes | None"]
"""``cas(compare_offset, compare_length, expect_sha256, write_offset, data)`` on the store's
device (device offsets): ``None`` when written, else the compared range as it is now."""

CAS_ATTEMPTS = 64


@dataclass(frozen=True)
class Region:
    """Where the two copies of one record live, relative to the portion."""

    offset: int
    copy_size: int
    kind: Kind


HEADER_REGION = Region(0, HEADER_COPY, Kind.PORTION_HEADER)
GROUP_REGION = Region(GROUP_OFFSET, GROUP_COPY, Kind.GROUP)


def slot_region(index: int) -> Region:
    return Region(SLOTS_OFFSET + index * 2 * SLOT_COPY, SLOT_COPY, Kind.BLADE_SLOT)


class PortionStore:
    """Reads and writes the records of one portion (or backup area) at ``offset`` on ``device``."""

    def __init__(self, device: BlockDevice, *, offset: int, size: int, cas: CompareAndWrite | None = None) -> None:
        if size < MIN_PORTION_SIZE:
            raise ValueError(f"portion size {size} is below the minimum {MIN_PORTION_SIZE}")
        if offset % record.ALIGN or size % record.ALIGN:
            raise ValueError("portion offset and size must be multiples of 4 KiB")
        if offset + size > device.size:
            raise ValueError(f"portion {offset}+{size} is past the end of the device ({device.size})")
        self.device = device
        self.cas = cas
        self.offset = offset
        self.size = size
        self.slot_count = slot_count_for(size)

    # -- the two-copy primitive -------------------------------------------------------------

    def read_region(self, region: Region) -> record.Choice:
        base = self.offset + region.offset
        both = self.device.pread(base, 2 * region.copy_size)
        return record.choose(both[: region.copy_size], both[region.copy_size :], kind=region.kind)

    def write_region(self, region: Region, payload: dict[str, Any]) -> int:
        """Write ``payload`` into the copy not holding the current record; return its sequence."""
        choice = self.read_region(region)
        data = record.encode(
            kind=region.kind, seq=choice.next_seq, payload=payload, size=region.copy_size
        )
        copy_offset = self.offset + region.offset + choice.next_copy * region.copy_size
        self.device.pwrite(copy_offset, data, fua=True)
        return choice.next_seq

    # -- header -----------------------------------------------------------------------------

    def format(self, *, group: str, index: int) -> PortionHeader:
        """Initialise an empty portion: zeroes, a header and an empty group record."""
        self.device.write_zeroes(self.offset, self.size)
        header = PortionHeader(
            group=group,
            index=index,
            portion_size=self.size,
            slot_count=self.slot_count,
            created=time.time(),
        )
        self.write_region(HEADER_REGION, header.to_json())
        self.write_region(GROUP_REGION, GroupRecord().to_json())
        self.device.flush()
        return header

    def header(self) -> PortionHeader:
        choice = self.read_region(HEADER_REGION)
        if choice.current is None:
            raise PortionError(f"no valid portion header at offset {self.offset}")
        try:
            header = PortionHeader.from_json(choice.current.payload)
        except (KeyError, TypeError, ValueError) as exc:
            raise PortionError(f"malformed portion header at offset {self.offset}: {exc}") from exc
        if header.format != FORMAT_VERSION:
            raise PortionError(f"portion format {header.format} is not supported ({FORMAT_VERSION})")
        if header.portion_size != self.size:
            raise PortionError(
                f"portion at offset {self.offset} was formatted with size {header.portion_size},"
                f" not {self.size}"
            )
        return header

    def is_formatted(self) -> bool:
        try:
            self.header()
        except PortionError:
            return False
        return True

    def open(self, *, group: str, index: int) -> PortionHeader:
        """Check the header names ``group`` at ``index``; format the portion if it is blank."""
        if not self.is_formatted():
            return self.format(group=group, index=index)
        header = self.header()
        if header.group != group or header.index != index:
            raise PortionError(
                f"portion at offset {self.offset} belongs to group {header.group!r}"
                f" (index {header.index}), not {group!r} (index {index})"
            )
        return header

    # -- slots ------------------------------------------------------------------------------

    def _check_slot(self, index: int) -> None:
        if not 0 <= index < self.slot_count:
            raise IndexError(f"slot {index} is outside 0..{self.slot_count - 1}")

    def read_slot(self, index: int) -> BladeStatus | None:
        self._check_slot(index)
        current = self.read_region(slot_region(index)).current
        return None if current is None else BladeStatus.from_json(current.payload)

    def write_slot(self, index: int, status: BladeStatus) -> int:
        self._check_slot(index)
        return self.write_region(slot_region(index), status.to_json())

    def slot_copies(self, index: int) -> record.Choice:
        """Both copies of a slot, for diagnostics and tests."""
        self._check_slot(index)
        return self.read_region(slot_region(index))

    def slots(self) -> list[BladeStatus | None]:
        return [self.read_slot(i) for i in range(self.slot_count)]

    def find_slot(self, blade: str) -> int | None:
        for i, status in enumerate(self.slots()):
            if status is not None and status.blade == blade:
                return i
        return None

    # -- group record -----------------------------------------------------------------------

    def read_group(self) -> GroupRecord:
        current = self.read_region(GROUP_REGION).current
        return GroupRecord() if current is None else GroupRecord.from_json(current.payload)

    def write_group(self, group: GroupRecord) -> int:
        return self.write_region(GROUP_REGION, group.to_json())

    def update_group(self, change: Callable[[GroupRecord], None]) -> GroupRecord:
        """Apply ``change`` to the group record atomically (module doc); return the record written.

        ``change`` may run more than once (once per conflict), each time on the latest record.
        """
        if self.cas is None:
            group = self.read_group()
            change(group)
            group.generation += 1
            self.write_group(group)
            return group
        base = self.offset + GROUP_REGION.offset
        length = 2 * GROUP_REGION.copy_size
        both = self.device.pread(base, length)
        for _attempt in range(CAS_ATTEMPTS):
            choice = record.choose(both[:GROUP_COPY], both[GROUP_COPY:], kind=Kind.GROUP)
            group = GroupRecord() if choice.current is None else GroupRecord.from_json(choice.current.payload)
            change(group)
            group.generation += 1
            data = record.encode(kind=Kind.GROUP, seq=choice.next_seq, payload=group.to_json(), size=GROUP_COPY)
            current = self.cas(base, length, hashlib.sha256(both).hexdigest(),
                               base + choice.next_copy * GROUP_COPY, data)
            if current is None:
                return group
            both = current
        raise PortionError(f"the group record kept changing: {CAS_ATTEMPTS} compare-and-write conflicts")
