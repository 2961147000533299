"""The names of the LUs the product makes itself, defined once for the blade and the operator.

Every array has the ``program`` LU (the catalog of blade software, ``nasblade.program``), the
``procinfo`` LU (one processor-information portion per cluster group, ``nasblade.procinfo``)
and the ``backup`` LU (one backup area per portion), and one LU per file system, named
``fs-NAME`` (``fs_lu``). The standalone array, the terminal, the block processor's and the
cluster configuration's defaults, the NBD access rule and the operator all take them from here.
They follow the LU name rule (``nasblade.controller.luname``) by construction.
"""

from __future__ import annotations

PROGRAM = "program"
PROCINFO = "procinfo"
BACKUP = "backup"
FS_PREFIX = "fs-"
SHARED = (PROGRAM, PROCINFO, BACKUP)
"""The LUs every blade of the array opens, whatever its group."""


def fs_lu(fs: str) -> str:
    """The LU of file system ``fs``."""
    return f"{FS_PREFIX}{fs}"
