"""On-device layout of the array: extent allocation, the LU → device map and the superblock.

Pure functions and records, no I/O: ``nasblade.controller.array`` reads and writes the bytes
these functions produce and uses the maps for every I/O.

Device layout (every device)::

    0 .. 4 KiB              unused (leaves room for a partition-table-like label)
    4 KiB .. META_SIZE      two superblock slots (A/B), each SLOT_SIZE bytes
    META_SIZE .. size       data extents

A superblock record is a 64-byte header (``b"NBLDSB01"``, u64 sequence, u64 payload length,
SHA-256 of the payload) followed by a JSON payload holding the array identity, the device
list, the LU table (with reservations) and the copy-job table. Record ``seq`` goes to slot
``seq % 2`` of *every* device, so a torn write leaves the previous record intact in the other
slot, and with N ≥ 2 devices each record exists N times. On start the valid record with the
highest sequence wins.

LU data is striped: an LU is a list of ``Segment`` s, each striping ``unit``-sized chunks
round-robin over its members (one contiguous run per device), so large I/O uses every
device. Segments are appended when an LU grows. In a version-2 array the "devices" the
segments name are *virtual devices* (``vdev``: a mirror set, or one device with protection
none) whose sizes end where each device's checksum/bitmap tail begins (``redundancy``).
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

MiB = 1 << 20
STRIPE_UNIT = MiB
META_SIZE = 8 * MiB
SLOT_OFFSET = 4096
SLOT_SIZE = (META_SIZE - SLOT_OFFSET) // 2
SB_MAGIC = b"NBLDSB01"
_SB_HDR = struct.Struct(">8sQQ32s")
SB_HEADER_SIZE = 64
FORMAT_VERSION = 2
"""Version 2: a protection level, per-device states, and the checksum/bitmap tail on every
device (``redundancy``). Version-1 arrays (no tail) still open, as protection ``none``
without checksums, and keep version 1."""
JOURNAL_VERSION = 3
"""Version 3: version 2 with a stripe journal at the end of every device's tail (parity arrays
formatted since it exists, ``ArrayState.journal``). The journal moves the data area's end,
so a controller that knows only version 2 must refuse such an array (it would look for the
checksums in the wrong place), and it does: the version is not one it knows."""
VERSIONS = (1, 2, 3)


class NoSpace(Exception):
    """Not enough free space on the devices."""


class LayoutError(Exception):
    """The on-device metadata is missing, inconsistent or does not match the devices."""


@dataclass(frozen=True)
class Segment:
    """``len(members)`` runs of ``member_length`` bytes, striped in ``unit`` chunks."""

    members: tuple[tuple[int, int], ...]  # (device index, offset on the device)
    member_length: int
    unit: int = STRIPE_UNIT

    @property
    def length(self) -> int:
        return self.member_length * len(self.members)

    def to_json(self) -> dict[str, Any]:
        return {"members": [list(m) for m in self.members], "memberLength": self.member_length,
                "unit": self.unit}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Segment:
        return cls(tuple((int(a), int(b)) for a, b in d["members"]), int(d["memberLength"]),
                   int(d["unit"]))


@dataclass
class LURecord:
    name: str
    size: int
    segments: list[Segment]
    created: str
    read_only: bool = False
    holder: str | None = None
    epoch: int | None = None
    last_epoch: int = 0

    @property
    def allocated(self) -> int:
        return sum(s.length for s in self.segments)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "size": self.size, "readOnly": self.read_only,
                "created": self.created, "holder": self.holder, "epoch": self.epoch,
                "lastEpoch": self.last_epoch, "segments": [s.to_json() for s in self.segments]}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> LURecord:
        return cls(name=str(d["name"]), size=int(d["size"]), read_only=bool(d["readOnly"]),
                   created=str(d["created"]), holder=d.get("holder"), epoch=d.get("epoch"),
                   last_epoch=int(d.get("lastEpoch", 0)),
                   segments=[Segment.from_json(s) for s in d["segments"]])


@dataclass
class ArrayState:
    """Everything the superblock persists."""

    uuid: str
    device_sizes: list[int]
    lus: dict[str, LURecord] = field(default_factory=dict)
    copy_jobs: list[dict[str, Any]] = field(default_factory=list)
    seq: int = 0
    unit: int = STRIPE_UNIT
    version: int = FORMAT_VERSION
    #: ``redundancy.Protection.to_json()``; ``{}`` is none
    protection: dict[str, Any] = field(default_factory=dict)
    #: per device: ``{"state": ok|rebuilding|failed, "rebuilt": bytes, "reason": str}``
    device_states: list[dict[str, Any]] = field(default_factory=list)
    #: when the last scrub finished, and what it found
    scrub: dict[str, Any] = field(default_factory=dict)
    #: bytes of stripe journal at the end of every device's tail (parity arrays formatted
    #: since it exists; 0 for the others, whose geometry it must not change)
    journal: int = 0

    def payload(self, device_index: int) -> dict[str, Any]:
        out = {"version": self.version, "uuid": self.uuid, "device": device_index,
               "devices": self.device_sizes, "unit": self.unit,
               "lus": [lu.to_json() for lu in self.lus.values()], "copyJobs": self.copy_jobs}
        if self.version >= 2:
            out.update(protection=self.protection, deviceStates=self.device_states, scrub=self.scrub)
            if self.journal:
                out["journal"] = self.journal
        return out

    @classmethod
    def from_payload(cls, seq: int, d: Mapping[str, Any]) -> ArrayState:
        version = d.get("version")
        if version not in VERSIONS:
            raise LayoutError(f"unsupported superblock version {version!r}")
        lus = [LURecord.from_json(x) for x in d["lus"]]
        sizes = [int(x) for x in d["devices"]]
        states = list(d.get("deviceStates") or [{"state": "ok"} for _ in sizes])
        return cls(uuid=str(d["uuid"]), device_sizes=sizes,
                   lus={lu.name: lu for lu in lus}, copy_jobs=list(d.get("copyJobs", [])),
                   seq=seq, unit=int(d["unit"]), version=int(version),
                   protection=dict(d.get("protection") or {}), device_states=states,
                   scrub=dict(d.get("scrub") or {}), journal=int(d.get("journal") or 0))


# --- superblock records ----------------------------------------------------------------------


def encode_record(seq: int, payload: Mapping[str, Any]) -> bytes:
    body = json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()
    if SB_HEADER_SIZE + len(body) > SLOT_SIZE:
        raise NoSpace(f"superblock payload of {len(body)} bytes does not fit a slot")
    hdr = _SB_HDR.pack(SB_MAGIC, seq, len(body), hashlib.sha256(body).digest())
    return hdr.ljust(SB_HEADER_SIZE, b"\0") + body


def decode_record(raw: bytes) -> tuple[int, dict[str, Any]] | None:
    """Return (seq, payload) for a valid record, ``None`` for anything else (torn, blank)."""
    if len(raw) < SB_HEADER_SIZE:
        return None
    magic, seq, length, digest = _SB_HDR.unpack_from(raw)
    if magic != SB_MAGIC or length > len(raw) - SB_HEADER_SIZE:
        return None
    body = raw[SB_HEADER_SIZE : SB_HEADER_SIZE + length]
    if hashlib.sha256(body).digest() != digest:
        return None
    try:
        payload = json.loads(body)
    except ValueError:
        return None
    return (int(seq), payload) if isinstance(payload, dict) else None


def slot_offset(seq: int) -> int:
    return SLOT_OFFSET + (seq % 2) * SLOT_SIZE


# --- allocation ------------------------------------------------------------------------------


def round_up(n: int, unit: int) -> int:
    return -(-n // unit) * unit


def free_runs(device_sizes: Sequence[int], segments: Iterable[Segment]) -> list[list[tuple[int, int]]]:
    """Free ``(start, end)`` runs per device, sorted, given every allocated segment."""
    used: list[list[tuple[int, int]]] = [[] for _ in device_sizes]
    for seg in segments:
        for dev, off in seg.members:
            used[dev].append((off, off + seg.member_length))
    result = []
    for dev, size in enumerate(device_sizes):
        runs = []
        pos = META_SIZE
        for start, end in sorted(used[dev]):
            if start > pos:
                runs.append((pos, start))
            pos = max(pos, end)
        usable_end = size - size % STRIPE_UNIT
        if usable_end > pos:
            runs.append((pos, usable_end))
        result.append(runs)
    return result


def allocate(device_sizes: Sequence[int], existing: Iterable[Segment], nbytes: int, *,
             unit: int = STRIPE_UNIT) -> list[Segment]:
    """New segments totalling at least ``nbytes``, striped over as many devices as possible.

    Each round takes the largest free run of every device and picks the number of devices
    ``k`` that places the most bytes; raises ``NoSpace`` (allocating nothing) if the free
    space cannot hold ``nbytes``.
    """
    taken = list(existing)
    new: list[Segment] = []
    need = round_up(nbytes, unit)
    while need > 0:
        runs = free_runs(device_sizes, taken)
        best = sorted(
            ((max((e - s for s, e in r), default=0) // unit * unit, dev, r) for dev, r in enumerate(runs)),
            key=lambda t: -t[0],
        )
        choice: tuple[int, int, int] | None = None  # (placed bytes, k, member length)
        for k in range(1, len(best) + 1):
            longest_common = best[k - 1][0]
            if longest_common <= 0:
                break
            member = min(longest_common, round_up(-(-need // k), unit))
            if choice is None or member * k >= choice[0]:
                choice = (member * k, k, member)
        if choice is None:
            raise NoSpace(f"{need} more bytes needed, no free extent left")
        _, k, member = choice
        members = []
        for length, dev, r in best[:k]:
            start = next(s for s, e in r if (e - s) // unit * unit == length)
            members.append((dev, start))
        seg = Segment(tuple(sorted(members)), member, unit)
        new.append(seg)
        taken.append(seg)
        need -= seg.length
    return new


# --- address mapping ------------------------------------------------------------------------


@dataclass(frozen=True)
class Piece:
    device: int
    device_offset: int
    length: int
    lu_offset: int


def map_range(segments: Sequence[Segment], offset: int, length: int) -> list[Piece]:
    """Split an LU range into device pieces, in LU order (each within one stripe unit)."""
    pieces: list[Piece] = []
    seg_start = 0
    end = offset + length
    for seg in segments:
        seg_end = seg_start + seg.length
        if end <= seg_start:
            break
        if offset < seg_end:
            pos = max(offset, seg_start)
            stop = min(end, seg_end)
            width = len(seg.members)
            while pos < stop:
                rel = pos - seg_start
                chunk, within = divmod(rel, seg.unit)
                row, col = divmod(chunk, width)
                n = min(seg.unit - within, stop - pos)
                dev, base = seg.members[col]
                pieces.append(Piece(dev, base + row * seg.unit + within, n, pos))
                pos += n
        seg_start = seg_end
    if sum(p.length for p in pieces) != length:
        raise ValueError(f"range {offset}+{length} is outside the allocated extents")
    return pieces
