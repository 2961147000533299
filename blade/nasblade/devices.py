"""Opening a block device by URL: the one place that knows every ``BlockDevice`` implementation.

``open_device(url)`` takes a plain path or ``file:///path`` (``blockdev.FileBlockDevice``),
``nbd://host:port/LU`` or ``nbd+unix:///LU?socket=/path`` (``nbd.client.NBDBlockDevice``). The
interface (``nasblade.blockdev``) stays free of implementations, so the NBD client can import it
without a cycle; tools, the file processor and the program store open their devices here.
"""

from __future__ import annotations

from urllib.parse import urlparse

from nasblade.blockdev import BlockDevice, FileBlockDevice
from nasblade.nbd import client


def open_device(url: str) -> BlockDevice:
    """Open a block device from a path or URL (see the module docstring)."""
    parsed = urlparse(url)
    if parsed.scheme in ("", "file"):
        return FileBlockDevice(parsed.path if parsed.scheme else url)
    if parsed.scheme in ("nbd", "nbds", "nbd+unix"):
        return client.NBDBlockDevice.connect(url)
    raise ValueError(f"unsupported block device URL {url!r}")
