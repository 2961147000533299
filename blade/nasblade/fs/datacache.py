"""The file processor's read cache: file data kept in memory, by 64 KiB page of the device.

``nasblade.fs.fs.FileSystem`` looks a READ up here before it asks the device, stores what it
reads from the device, and passes every write to the data region through ``write`` (the only
road by which file data reaches the device). For each page it has, the cache holds one
contiguous range of bytes exactly as the device holds them (or will once write-behind
completes); reads and writes extend that range when they overlap or adjoin it, so sequential
I/O that is not page-aligned still fills whole pages.

Correct across takeover: only the file processor that owns a file system writes its LU
(reservations and fencing at the controller), and the cache belongs to that mount: it is built
empty when a file system is mounted (after a takeover, a giveback or a restart) and dropped with
it. Nothing else writes the data region of a mounted file system.

Bounded per file processor, not per file system: the caches of every file system one file
processor serves share one ``Budget`` (``--read-cache``), and the least recently used page of
any of them goes first when it is full. A blade that serves many file systems (a CSI volume is
a file system of its own; a takeover brings a partner's) keeps at most that many bytes, so its
memory does not grow with the number of volumes. A cache made with a capacity alone has a
budget of its own. Capacity 0 turns caching off. Counters (``hits``, ``misses``) show in the file
processor's status.
"""

from __future__ import annotations

import collections

PAGE = 64 << 10


class Budget:
    """The pages the read caches of one file processor may hold together, in least recently used
    order across all of them. Not thread-safe: one event loop uses every cache of a budget."""

    def __init__(self, capacity: int) -> None:
        self.max_pages = max(0, capacity) // PAGE
        # (cache, page number) in least recently used order
        self._lru: collections.OrderedDict[tuple[DataCache, int], None] = collections.OrderedDict()

    @property
    def capacity_bytes(self) -> int:
        return self.max_pages * PAGE

    @property
    def pages(self) -> int:
        return len(self._lru)

    def touch(self, cache: DataCache, page: int) -> None:
        """``page`` of ``cache`` was just used (or stored): it goes last."""
        key = (cache, page)
        self._lru[key] = None
        self._lru.move_to_end(key)

    def trim(self) -> None:
        """Drop the least recently used pages of any cache until the budget holds."""
        while len(self._lru) > self.max_pages:
            (cache, page), _ = self._lru.popitem(last=False)
            cache._pages.pop(page, None)

    def release(self, cache: DataCache) -> None:
        """Forget every page of ``cache`` (its file system is unmounted)."""
        for page in cache._pages:
            self._lru.pop((cache, page), None)
        cache._pages.clear()


class DataCache:
    """Pages of ``PAGE`` bytes of the device, each holding one contiguous known range of its
    bytes (a read or write that covered only part of the page keeps that part), within a
    ``Budget`` shared with the file processor's other file systems (or one of ``capacity``
    bytes of its own)."""

    def __init__(self, capacity: int = 0, *, budget: Budget | None = None) -> None:
        self.budget = budget if budget is not None else Budget(capacity)
        # page number -> (first byte known within the page, the known bytes)
        self._pages: dict[int, tuple[int, bytearray]] = {}
        self.hits = 0
        self.misses = 0

    __hash__ = object.__hash__  # a budget keys its pages by cache identity

    @property
    def max_pages(self) -> int:
        return self.budget.max_pages

    @property
    def capacity_bytes(self) -> int:
        """The bytes this cache may hold: its budget's, shared with the other file systems."""
        return self.budget.capacity_bytes

    def close(self) -> None:
        """Give every page back to the budget (the file system is unmounted)."""
        self.budget.release(self)

    @property
    def used_bytes(self) -> int:
        return sum(len(data) for _s, data in self._pages.values())

    def read(self, offset: int, length: int) -> bytes | None:
        """The device's bytes at ``[offset, offset + length)`` if all are here, else ``None``."""
        if not self.max_pages or length <= 0:
            return None
        end = offset + length
        pages = self._pages
        parts: list[memoryview] = []
        p = offset // PAGE
        while p * PAGE < end:
            entry = pages.get(p)
            base = p * PAGE
            s, e = max(offset, base) - base, min(end, base + PAGE) - base
            if entry is None or entry[0] > s or entry[0] + len(entry[1]) < e:
                self.misses += 1
                return None
            self.budget.touch(self, p)
            start, data = entry
            parts.append(memoryview(data)[s - start : e - start])
            p += 1
        self.hits += 1
        return b"".join(parts)

    def fill(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        """Bytes just read from the device at ``offset``."""
        self._store(offset, data)

    def write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        """Bytes about to be written to the device at ``offset`` (write-behind included)."""
        self._store(offset, data)

    def _store(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        if not self.max_pages:
            return
        view = memoryview(data).cast("B")
        end = offset + len(view)
        pages = self._pages
        p = offset // PAGE
        while p * PAGE < end:
            base = p * PAGE
            s, e = max(offset, base) - base, min(end, base + PAGE) - base
            new = view[s + base - offset : e + base - offset]
            entry = pages.get(p)
            if entry is not None and entry[0] <= e and s <= entry[0] + len(entry[1]):
                # overlapping or adjoining what is known: one range, the new bytes on top
                start, known = entry
                lo, hi = min(start, s), max(start + len(known), e)
                merged = bytearray(hi - lo)
                merged[start - lo : start - lo + len(known)] = known
                merged[s - lo : e - lo] = new
                pages[p] = (lo, merged)
            else:
                pages[p] = (s, bytearray(new))  # disjoint from what was known: the new range
            self.budget.touch(self, p)
            p += 1
        self.budget.trim()
