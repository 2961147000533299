"""``grow``: give a file system the room its (grown) device now has, offline.

The data region is the last region of the layout, so growing is: the new blocks become one
more free extent (merged with a free extent that ends where the old region ended), the
``free_blocks`` counter rises by as much, and the superblock is rewritten with the new block
count. The database change records the target block count in ``meta`` (``grown_blocks``) in
the same transaction, so a crash before the superblock write is finished by running ``grow``
again, never by adding the same blocks twice. The device must not be mounted elsewhere.
"""

from __future__ import annotations

import apsw

from nasblade.blockdev import BlockDevice
from nasblade.fs import layout, vfs
from nasblade.fs.fs import _pragmas


def grow(dev: BlockDevice) -> layout.Superblock:
    """Grow the file system on ``dev`` to the device's size; returns the superblock in force."""
    sb = layout.read_superblock(dev)
    target = (dev.size - sb.data_off) // sb.block
    v = vfs.RegionVFS(dev, sb)
    conn = apsw.Connection(v.db_uri, vfs=v.name)
    try:
        _pragmas(conn, sb)
        with conn:
            row = conn.execute("SELECT value FROM meta WHERE key = 'grown_blocks'").fetchone()
            done = max(int(row[0]) if row else 0, sb.data_blocks)
            if target > done:
                added = target - done
                tail = conn.execute("SELECT start, len FROM free WHERE start + len = ?", (done,)).fetchone()
                if tail is None:
                    conn.execute("INSERT INTO free(start, len) VALUES (?, ?)", (done, added))
                else:
                    conn.execute("UPDATE free SET len = len + ? WHERE start = ?", (added, tail[0]))
                conn.execute("UPDATE meta SET value = value + ? WHERE key = 'free_blocks'", (added,))
                conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('grown_blocks', ?)", (target,))
                done = target
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    if done == sb.data_blocks:
        return sb
    dev.flush()
    grown = layout.Superblock(sb.uuid, sb.block, sb.meta_off, sb.meta_len, sb.wal_off, sb.wal_len,
                              sb.data_off, done)
    dev.pwrite(0, grown.pack(), fua=True)
    return grown
