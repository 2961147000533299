"""The CSI driver's catalog record on the array: its layout, and reading it back.

The driver (``nasblade_csi.catalog``) keeps its records of volumes and snapshots in the LU
``csi-catalog`` (``nasblade.lunames.CSI_CATALOG``): at offset 0 an 8-byte big-endian length
(``HEADER``) and that many bytes of JSON, ``{"volumes": {CSI name: record}, "snapshots": {…}}``,
in a record of ``RECORD`` bytes (the controller's compare-and-write limit). The driver writes
it (and imports the layout from here); the management terminal only reads it
(``nasblade.terminal.standalone``, ``nasblade volumes``), so the layout is declared once for both.
"""

from __future__ import annotations

import json
import struct
from typing import Any

RECORD = 256 << 10
HEADER = struct.Struct(">Q")


def empty() -> dict[str, Any]:
    """The records of a catalog with no volume and no snapshot."""
    return {"volumes": {}, "snapshots": {}}


def decode(raw: bytes) -> dict[str, Any]:
    """The records held in ``raw``, the first bytes (up to ``RECORD``) of the catalog LU."""
    (n,) = HEADER.unpack_from(raw, 0)
    if n == 0:
        return empty()
    doc: dict[str, Any] = json.loads(raw[HEADER.size:HEADER.size + n])
    return doc
