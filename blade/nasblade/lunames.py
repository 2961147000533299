"""The names of the LUs the product makes itself, defined once for the blade and the operator.

Every array has the ``program`` LU (the catalog of blade software, ``nasblade.program``), the
``procinfo`` LU (one processor-information portion per cluster group, ``nasblade.procinfo``)
and the ``backup`` LU (one backup area per portion), and one LU per file system, named
``fs-NAME`` (``fs_lu``). The standalone array, the terminal, the block processor's and the
cluster configuration's defaults, the NBD access rule and the operator all take them from here.
They follow the LU name rule (``nasblade.controller.luname``) by construction.

The CSI driver makes LUs too: one per volume (``pv-<24 hex>``; on Kubernetes the volume is a
file system, so its LU is ``fs-pv-<24 hex>``), one per snapshot (``sn-<24 hex>``) and its
catalog (``csi-catalog``). ``is_csi_lu`` names these LUs of the CSI driver's volumes,
snapshots and catalog: the only LUs its credentials (``nasblade.grants.csi_token``, the ``csi``
certificate) reach. ``csi_volume_id`` and ``csi_snapshot_id`` recognise the driver's ids
themselves (a prefix and 24 lowercase hex digits), so the terminal lists a directory or a file
system as a volume only when the driver named it.
"""

from __future__ import annotations

PROGRAM = "program"
PROCINFO = "procinfo"
BACKUP = "backup"
FS_PREFIX = "fs-"
SHARED = (PROGRAM, PROCINFO, BACKUP)
"""The LUs every blade of the array opens, whatever its group."""
CSI_CATALOG = "csi-catalog"
"""The CSI driver's records of its volumes and snapshots."""
CSI_VOLUME_PREFIX = "pv-"
CSI_SNAPSHOT_PREFIX = "sn-"
CSI_ID_DIGITS = 24
"""Hex digits of the SHA-256 of the CSI name after the prefix (``nasblade_csi.controller``)."""


def fs_lu(fs: str) -> str:
    """The LU of file system ``fs``."""
    return f"{FS_PREFIX}{fs}"


def is_csi_lu(name: str) -> bool:
    """Whether ``name`` is an LU of the CSI driver's volumes, snapshots and catalog:
    ``csi-catalog``, ``pv-…``, ``fs-pv-…`` (a volume's file-system LU) or ``sn-…``."""
    return name == CSI_CATALOG or name.startswith(
        (CSI_VOLUME_PREFIX, CSI_SNAPSHOT_PREFIX, fs_lu(CSI_VOLUME_PREFIX)))


def _csi_id(name: str, prefix: str) -> bool:
    digits = name[len(prefix):]
    return (name.startswith(prefix) and len(digits) == CSI_ID_DIGITS
            and all(c in "0123456789abcdef" for c in digits))


def csi_volume_id(name: str) -> bool:
    """Whether ``name`` is a volume id of the CSI driver (``pv-`` and 24 hex digits): the LU of
    a file-system volume on a standalone array, the file system of one on Kubernetes (its LU
    ``fs-<id>``), the directory of a directory volume."""
    return _csi_id(name, CSI_VOLUME_PREFIX)


def csi_snapshot_id(name: str) -> bool:
    """Whether ``name`` is a snapshot id of the CSI driver (``sn-`` and 24 hex digits): the LU
    of a file-system volume's snapshot, the directory of a directory volume's one."""
    return _csi_id(name, CSI_SNAPSHOT_PREFIX)
