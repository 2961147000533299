"""The program LU: a catalog of blade software bundles followed by the bundles themselves.

Layout (the catalog uses the two-copy record framing of ``nasblade.procinfo.record``, so a torn
catalog write leaves the previous catalog readable)::

    offset      size          what
    0           2 x 64 KiB    catalog record (kind CATALOG)
    128 KiB     ...           bundle data, each bundle starting on a 4 KiB boundary

Catalog payload::

    {"format": 1, "current": "1.2.0" | null,
     "bundles": [{"version": "1.2.0", "size": 123456, "sha256": "…", "created": 1764000000.0,
                  "offset": 131072}, …]}

Writers (``nasblade software push``) put the bundle bytes into free space first, flush, and only
then write the catalog that points at them, so a crash never leaves the catalog naming bytes
that are not there. Readers (the block processor at boot) verify the sha256 of what they read
and refuse a bundle that does not match. ``ProgramStore`` works over any ``BlockDevice``:
``nbd://controller/program`` in a running array, a ``FileBlockDevice`` in unit tests.
"""

from __future__ import annotations

import hashlib
import re
import time
from dataclasses import dataclass
from typing import Any

from nasblade.blockdev import BlockDevice
from nasblade.procinfo import record
from nasblade.procinfo.record import Kind

FORMAT_VERSION = 1
CATALOG_COPY = 64 * 1024
DATA_OFFSET = 2 * CATALOG_COPY
VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")
_READ_CHUNK = 4 << 20


class ProgramError(RuntimeError):
    """A catalog or bundle problem, with a message fit for the operator of the system."""


@dataclass(frozen=True)
class BundleEntry:
    version: str
    size: int
    sha256: str
    created: float
    offset: int

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "size": self.size,
            "sha256": self.sha256,
            "created": self.created,
            "offset": self.offset,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> BundleEntry:
        return cls(
            version=str(d["version"]),
            size=int(d["size"]),
            sha256=str(d["sha256"]),
            created=float(d["created"]),
            offset=int(d["offset"]),
        )


@dataclass(frozen=True)
class Catalog:
    bundles: tuple[BundleEntry, ...] = ()
    current: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT_VERSION,
            "current": self.current,
            "bundles": [b.to_json() for b in self.bundles],
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Catalog:
        if d.get("format") != FORMAT_VERSION:
            raise ProgramError(f"program catalog format {d.get('format')!r} is not supported")
        bundles = tuple(BundleEntry.from_json(b) for b in d.get("bundles", []))
        current = d.get("current")
        return cls(bundles=bundles, current=None if current is None else str(current))

    def get(self, version: str) -> BundleEntry | None:
        for b in self.bundles:
            if b.version == version:
                return b
        return None

    def versions(self) -> list[str]:
        return [b.version for b in self.bundles]


_REGION_KIND = Kind.CATALOG


class ProgramStore:
    """Catalog and bundle I/O on a program LU."""

    def __init__(self, device: BlockDevice) -> None:
        if device.size < DATA_OFFSET + record.ALIGN:
            raise ProgramError(f"program LU of {device.size} bytes is too small for a catalog")
        self.device = device

    def _choice(self) -> record.Choice:
        both = self.device.pread(0, 2 * CATALOG_COPY)
        return record.choose(both[:CATALOG_COPY], both[CATALOG_COPY:], kind=_REGION_KIND)

    def is_blank(self) -> bool:
        """True when neither catalog copy has ever been written (all zeroes)."""
        return not any(self.device.pread(0, 2 * CATALOG_COPY))

    def catalog(self) -> Catalog:
        """The current catalog; an empty one on a blank LU; ``ProgramError`` if unreadable."""
        choice = self._choice()
        if choice.current is None:
            if self.is_blank():
                return Catalog()
            raise ProgramError(
                "the program catalog is unreadable: both copies are truncated or corrupted"
            )
        try:
            return Catalog.from_json(choice.current.payload)
        except (KeyError, TypeError, ValueError) as exc:
            raise ProgramError(f"the program catalog is malformed: {exc}") from exc

    def _write_catalog(self, catalog: Catalog) -> None:
        choice = self._choice()
        data = record.encode(
            kind=_REGION_KIND, seq=choice.next_seq, payload=catalog.to_json(), size=CATALOG_COPY
        )
        self.device.pwrite(choice.next_copy * CATALOG_COPY, data, fua=True)

    def _allocate(self, catalog: Catalog, size: int) -> int:
        need = record.align_up(max(size, 1))
        cursor = DATA_OFFSET
        for b in sorted(catalog.bundles, key=lambda b: b.offset):
            if b.offset - cursor >= need:
                return cursor
            cursor = max(cursor, b.offset + record.align_up(max(b.size, 1)))
        if cursor + need > self.device.size:
            free = self.device.size - cursor
            raise ProgramError(
                f"no room on the program LU for a bundle of {size} bytes"
                f" (largest free space at the end: {max(free, 0)} bytes)"
            )
        return cursor

    def push(self, data: bytes, *, version: str, select: bool = False) -> BundleEntry:
        """Store a bundle under ``version`` (new versions only); optionally make it current."""
        if not VERSION_RE.match(version):
            raise ProgramError(f"invalid version {version!r}: use 1-64 of [A-Za-z0-9._+-]")
        catalog = self.catalog()
        if catalog.get(version) is not None:
            raise ProgramError(f"version {version} is already in the program catalog")
        offset = self._allocate(catalog, len(data))
        self.device.pwrite(offset, data)
        self.device.flush()
        entry = BundleEntry(
            version=version,
            size=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
            created=time.time(),
            offset=offset,
        )
        current = version if select or catalog.current is None else catalog.current
        self._write_catalog(Catalog(bundles=(*catalog.bundles, entry), current=current))
        return entry

    def select(self, version: str) -> None:
        catalog = self.catalog()
        if catalog.get(version) is None:
            raise ProgramError(self._missing(version, catalog))
        self._write_catalog(Catalog(bundles=catalog.bundles, current=version))

    def remove(self, version: str) -> None:
        catalog = self.catalog()
        if catalog.get(version) is None:
            raise ProgramError(self._missing(version, catalog))
        if catalog.current == version:
            raise ProgramError(f"version {version} is the selected version; select another first")
        rest = tuple(b for b in catalog.bundles if b.version != version)
        self._write_catalog(Catalog(bundles=rest, current=catalog.current))

    @staticmethod
    def _missing(version: str, catalog: Catalog) -> str:
        have = ", ".join(catalog.versions()) or "none"
        return f"version {version} is not in the program catalog (available: {have})"

    def resolve(self, version: str | None) -> BundleEntry:
        """The entry for ``version``, or for the catalog's current version when ``None``."""
        catalog = self.catalog()
        wanted = version or catalog.current
        if wanted is None:
            raise ProgramError("the program catalog has no selected version and none was asked for")
        entry = catalog.get(wanted)
        if entry is None:
            raise ProgramError(self._missing(wanted, catalog))
        return entry

    def read_bundle(self, entry: BundleEntry) -> bytes:
        """Read a bundle and verify its sha256; ``ProgramError`` on a mismatch."""
        if entry.offset < DATA_OFFSET or entry.offset + entry.size > self.device.size:
            raise ProgramError(
                f"bundle {entry.version} lies outside the program LU"
                f" ({entry.offset}+{entry.size} > {self.device.size})"
            )
        parts = []
        for off in range(entry.offset, entry.offset + entry.size, _READ_CHUNK):
            parts.append(self.device.pread(off, min(_READ_CHUNK, entry.offset + entry.size - off)))
        data = b"".join(parts)
        digest = hashlib.sha256(data).hexdigest()
        if digest != entry.sha256:
            raise ProgramError(
                f"bundle {entry.version} is corrupted: sha256 {digest} does not match the"
                f" catalog's {entry.sha256}"
            )
        return data
