"""Protection levels and the per-device redundancy format: pure rules, no I/O.

A protection level says how many copies of every block the array keeps:

- ``none``: one copy; a lost device loses the LUs striped over it. Checksums still detect
  corruption (the read fails with ``EIO`` instead of returning wrong data).
- ``mirror`` with 2 or 3 copies: the devices form *mirror sets* of ``copies`` consecutive
  devices (``0,1 | 2,3 | ...``; the device count must be a multiple of ``copies``); each
  set is one virtual device the LU striping (``layout``) allocates on. A set survives the
  loss of ``copies - 1`` of its devices.
- ``parity`` with 1 or 2 parity shares (``parity-1``, ``parity-2``: RAID 5 / RAID 6 style):
  all devices form one *parity set*; each stripe keeps ``count - parity`` data units and
  ``parity`` Reed-Solomon parity units (PyPI ``zfec``), rotating over the devices
  (``parity.ParityVDev`` has the stripe format). A set survives the loss of ``parity`` of its
  devices; it needs at least ``parity + 2`` devices (3 for parity-1, 4 for parity-2).

Every device of a version-2 array ends in a *tail* (after its data area, so data offsets
are the same on every copy and equal to the offsets in the LU extents)::

    META_SIZE .. vsize          data (the virtual device's offsets, identical on each copy)
    csum_offset ..              one 8-byte checksum per 4 KiB block of the device
    bitmap_offset ..            the write-intent bitmap: one byte per ``REGION`` of data
    journal_offset ..           a parity array's stripe journal (``journal``), if it has one

A stored checksum is ``xxh3_64(block) ^ ZERO_SUM`` so an all-zero block (a punched hole, a
never-written extent) has the stored value 0 and zeroing a range costs no hashing.
``choose`` is the repair rule used by reads, scrub, rebuild and crash resync.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import xxhash

BLOCK = 4096
CSUM_SIZE = 8
REGION = 4 << 20
MiB = 1 << 20
ZERO_SUM = xxhash.xxh3_64_intdigest(bytes(BLOCK))
LEVELS = ("none", "mirror", "parity")


class ProtectionError(ValueError):
    """A protection level that is unknown or does not fit the device count."""


@dataclass(frozen=True)
class Protection:
    level: str = "none"
    copies: int = 1
    #: parity shares per stripe (``parity`` level only)
    parity: int = 0

    @property
    def name(self) -> str:
        if self.level == "parity":
            return f"parity-{self.parity}"
        return "none" if self.level == "none" else f"mirror-{self.copies}"

    @property
    def survives(self) -> int:
        """Devices per mirror or parity set that may be lost without losing data."""
        return self.parity if self.level == "parity" else self.copies - 1

    def data_devices(self, device_count: int) -> int:
        """How many devices' worth of data ``device_count`` devices hold (capacity)."""
        if self.level == "parity":
            return device_count - self.parity
        return device_count // self.copies

    def to_json(self) -> dict[str, Any]:
        if self.level == "parity":  # none and mirror keep their version-2 record unchanged
            return {"level": self.level, "copies": 1, "parity": self.parity}
        return {"level": self.level, "copies": self.copies}

    @classmethod
    def from_json(cls, d: Mapping[str, Any] | None) -> Protection:
        if not d:
            return cls()
        return parse(d)

    def check(self, device_count: int) -> None:
        """Raise ``ProtectionError`` unless ``device_count`` devices can hold this level."""
        if self.level == "none":
            if device_count < 1:
                raise ProtectionError("at least one device is needed")
            return
        if self.level == "parity":
            if device_count < self.parity + 2:
                raise ProtectionError(
                    f"{self.name} needs at least {self.parity + 2} devices (two data units and "
                    f"{self.parity} parity unit(s) per stripe); got {device_count}")
            return
        if device_count < self.copies or device_count % self.copies:
            raise ProtectionError(
                f"{self.name} needs a multiple of {self.copies} devices (mirror sets of "
                f"{self.copies}); got {device_count}")

    def sets(self, device_count: int) -> list[tuple[int, ...]]:
        """Device indexes of each virtual device (mirror set, or the one parity set), in order."""
        self.check(device_count)
        if self.level == "parity":
            return [tuple(range(device_count))]
        c = self.copies
        return [tuple(range(i, i + c)) for i in range(0, device_count, c)]


def parse(value: Any) -> Protection:
    """``none``, ``mirror`` (2 copies), ``mirror-2``, ``mirror-3``, ``parity`` (1 parity
    share), ``parity-1``, ``parity-2``, or ``{level, copies, parity}``."""
    if isinstance(value, Protection):
        return value
    if isinstance(value, Mapping):
        level = value.get("level", "none")
        copies = value.get("copies")
        shares = value.get("parity")
    elif isinstance(value, str):
        level, _, n = value.strip().lower().partition("-")
        copies = int(n) if n.isascii() and n.isdigit() else (n or None)
        shares = copies
    else:
        raise ProtectionError(f"protection must be a string or a mapping, got {value!r}")
    if level not in LEVELS:
        raise ProtectionError(f"unknown protection level {level!r} (one of: none, mirror, "
                              "mirror-2, mirror-3, parity, parity-1, parity-2)")
    if level == "none":
        if copies not in (None, 1):
            raise ProtectionError("protection none keeps exactly one copy")
        return Protection("none", 1)
    if level == "parity":
        if shares is None:
            shares = 1
        if not isinstance(shares, int) or isinstance(shares, bool) or shares not in (1, 2):
            raise ProtectionError(f"parity keeps 1 or 2 parity shares per stripe, got {shares!r}")
        return Protection("parity", 1, shares)
    if copies is None:
        copies = 2
    if not isinstance(copies, int) or isinstance(copies, bool) or copies not in (2, 3):
        raise ProtectionError(f"mirror keeps 2 or 3 copies, got {copies!r}")
    return Protection("mirror", copies)


# --- the per-device tail -----------------------------------------------------------------------


def _round_up(n: int, unit: int) -> int:
    return -(-n // unit) * unit


@dataclass(frozen=True)
class Geometry:
    """Where a device of ``size`` bytes keeps data, checksums and its write-intent bitmap."""

    size: int
    vsize: int  # end of the data area (a multiple of the stripe unit)
    csum_offset: int
    bitmap_offset: int
    regions: int
    journal_offset: int = 0
    #: bytes of stripe journal (0: none; arrays formatted before it have none)
    journal_size: int = 0

    @classmethod
    def for_size(cls, size: int, *, unit: int = MiB, meta: int = 8 * MiB, journal: int = 0) -> Geometry:
        usable = size - size % unit
        blocks = usable // BLOCK
        csum_bytes = _round_up(blocks * CSUM_SIZE, BLOCK)
        regions = -(-usable // REGION)
        bitmap_bytes = _round_up(regions, BLOCK)
        tail = _round_up(csum_bytes + bitmap_bytes + journal, unit)
        vsize = usable - tail
        if vsize < meta + unit:
            raise ProtectionError(f"a device of {size} bytes is too small for checksums")
        return cls(size, vsize, vsize, vsize + csum_bytes, -(-vsize // REGION),
                   vsize + csum_bytes + bitmap_bytes if journal else 0, journal)

    @property
    def blocks(self) -> int:
        """Data blocks with a checksum (``[0, vsize)`` in 4 KiB blocks)."""
        return self.vsize // BLOCK

    @property
    def overhead(self) -> int:
        return self.size - self.vsize


def checksum(block: bytes | bytearray | memoryview) -> int:
    """The stored checksum of one 4 KiB block (0 for an all-zero block)."""
    return xxhash.xxh3_64_intdigest(block) ^ ZERO_SUM


def checksums(data: bytes | bytearray | memoryview) -> list[int]:
    """Stored checksums of each 4 KiB block of ``data`` (``len(data)`` a multiple of BLOCK)."""
    view = memoryview(data)
    return [xxhash.xxh3_64_intdigest(view[i : i + BLOCK]) ^ ZERO_SUM
            for i in range(0, len(view), BLOCK)]


def choose(candidates: Sequence[tuple[bytes | None, int]], *, trust_unverified: bool) -> int | None:
    """Which copy of a block is the good one: the first whose data matches its own stored
    checksum. ``candidates`` are ``(data or None for an I/O error, stored checksum)`` in
    member order. With ``trust_unverified`` (a region the write-intent bitmap marks as being
    written when the controller stopped: the checksum may lag the data) and no verified copy,
    the first readable copy wins; otherwise ``None``: the block is lost."""
    for i, (data, stored) in enumerate(candidates):
        if data is not None and checksum(data) == stored:
            return i
    if trust_unverified:
        for i, (data, _) in enumerate(candidates):
            if data is not None:
                return i
    return None


def regions_of(offset: int, length: int) -> range:
    """Bitmap regions touched by ``[offset, offset + length)``."""
    if length <= 0:
        return range(0)
    return range(offset // REGION, (offset + length - 1) // REGION + 1)


def align(offset: int, length: int) -> tuple[int, int]:
    """The smallest block-aligned range covering ``[offset, offset + length)``."""
    start = offset - offset % BLOCK
    end = _round_up(offset + length, BLOCK)
    return start, end - start
