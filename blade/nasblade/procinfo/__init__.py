"""Processor-information formats: the checksummed two-copy record framing (``record``) and the
per-cluster-group portion of the processor-information LU (``portion``).

Public names: ``PortionStore``, ``BladeStatus``, ``GroupRecord``, ``Ownership``,
``PortionHeader``, ``PortionError``, ``portion_offset``.
"""

from nasblade.procinfo.portion import (
    BladeStatus,
    GroupRecord,
    Ownership,
    PortionError,
    PortionHeader,
    PortionStore,
    portion_offset,
)

__all__ = [
    "BladeStatus",
    "GroupRecord",
    "Ownership",
    "PortionError",
    "PortionHeader",
    "PortionStore",
    "portion_offset",
]
