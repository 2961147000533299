"""Names and labels of every object the operator owns, in one place.

Builders (``diskarray/builders.py``, ``clustergroup/builders.py``) use these to name child
objects; handlers use the same functions to find them again; tests and the CLI use them to
look objects up. Nothing here does I/O.
"""

from __future__ import annotations

import hashlib

from nasblade import lunames

GROUP = "nasblade.io"
VERSION = "v1alpha1"

# Labels (selectors must keep working across operator versions: never rename these).
L_NAME = "app.kubernetes.io/name"
L_COMPONENT = "app.kubernetes.io/component"
L_INSTANCE = "app.kubernetes.io/instance"
L_MANAGED_BY = "app.kubernetes.io/managed-by"
L_ARRAY = "nasblade.io/disk-array"
L_GROUP = "nasblade.io/cluster-group"
L_BLADE = "nasblade.io/blade"
L_BLADE_INDEX = "nasblade.io/blade-index"
L_VERSION = "nasblade.io/software-version"
L_FILESYSTEM = "nasblade.io/file-system"
L_NAMESPACE = "nasblade.io/namespace"  # the owner's namespace, on cluster-wide objects

# Annotations users set on a ClusterGroup.
A_BACKUP_NOW = "nasblade.io/backup-now"
#: ``{"fileSystem": FS, "to": BLADE, "id": ID}``: a planned move (``nasblade takeover``/``giveback``).
A_MOVE_REQUEST = "nasblade.io/move-request"
A_CLUSTER_CONFIG = "nasblade.io/cluster-config"  # a blade pod's cluster configuration (JSON)
#: on the controller pod: digest of the NBD access file the operator last wrote (an update of
#: the pod makes the kubelet bring the changed Secret into its volume now, not at its next sync)
A_NBD_ACCESS = "nasblade.io/nbd-access"
#: On a DiskArray: replace failed device N by a new, empty one that the controller rebuilds
#: online (``POST /v1/array/devices/N/replace`` with the admin token); removed once handled.
A_REPLACE_DEVICE = "nasblade.io/replace-device"

CONTROL_PORT = 8080
NBD_PORT = 10809
BLADE_API_PORT = 8090
#: (name, Service port, container port): the blade runs as non-root, so the portmapper listens
#: on an unprivileged port and the Service maps 111 to it.
NFS_PORTS = (("nfs", 2049, 2049), ("mountd", 20048, 20048), ("portmapper", 111, 10111))
#: The same ports over UDP, where the file processor serves the portmapper, MOUNT, NLM and NSM
#: (NFS itself is TCP-only): a client's ``sm-notify`` after a reboot asks the portmapper over
#: UDP where the status monitor is and sends SM_NOTIFY over UDP, so the blade drops the locks
#: the rebooted client held. NLM and NSM answer on the NFS port.
NFS_UDP_PORTS = (("nlm-udp", 2049, 2049), ("mountd-udp", 20048, 20048), ("portmapper-udp", 111, 10111))
#: NFS slots of a DiskArray: each of its file systems has one (``status.fileSystems[].nfsSlot``,
#: given by ``diskarray.formatting.assign_slots``), so as many as ``spec.fileSystems`` may hold.
NFS_SLOTS = 64
_NFS_SLOT_BASE = 21000


def nfs_container_ports(slot: int) -> tuple[int, int, int]:
    """The container ports (NFS, MOUNT, portmapper; the same numbers over UDP) on which the file
    system in NFS slot ``slot`` is served, on whichever blade serves it. Each file system has
    its own, so one blade pod can serve several (its own and those it took over); its Service
    maps the standard ports (``NFS_PORTS``) onto them. Slot 0 has the standard ones; the others
    lie below the kernel's ephemeral range (32768 on), where no outgoing connection of the pod
    can hold them."""
    if not 0 <= slot < NFS_SLOTS:
        raise ValueError(f"NFS slot {slot} is not in [0, {NFS_SLOTS})")
    if slot == 0:
        nfs, mnt, pm = (container for _, _, container in NFS_PORTS)
        return nfs, mnt, pm
    base = _NFS_SLOT_BASE + 3 * slot
    return base, base + 1, base + 2

# LU names of the array-wide areas (claims: program storage, processor information, backup),
# defined once for the blade and the operator in nasblade.lunames.
LU_PROGRAM = lunames.PROGRAM
LU_PROCESSOR_INFO = lunames.PROCINFO
LU_BACKUP = lunames.BACKUP


def controller_name(array: str) -> str:
    """StatefulSet and Service name of an array's controller."""
    return f"{array}-controller"


def token_secret_name(array: str) -> str:
    """Secret holding the array's control-API token (key ``token``)."""
    return f"{array}-control-token"


def nbd_ca_secret_name(array: str) -> str:
    """Secret with an array's NBD CA (``ca-cert.pem``, ``ca-key.pem``); the operator's only."""
    return f"{array}-nbd-ca"


def nbd_server_secret_name(array: str) -> str:
    """Secret with the controller's NBD server certificate (mounted into the controller)."""
    return f"{array}-nbd-controller"


def nbd_admin_secret_name(array: str) -> str:
    """Secret with the operator's NBD client certificate (identity ``admin``: every LU)."""
    return f"{array}-nbd-admin"


def nbd_csi_secret_name(array: str) -> str:
    """Secret with the CSI controller plugin's NBD client certificate (identity ``csi``: the
    LUs of the driver's volumes, snapshots and catalog, ``nasblade.lunames.is_csi_lu``)."""
    return f"{array}-nbd-csi"


def group_token_secret_name(group: str) -> str:
    """Secret with a cluster group's control-API credential (key ``token``: a group token,
    ``nasblade.grants``), owned by the ClusterGroup; its blade pods mount it instead of the
    array's control token."""
    return f"{group}-group-token"


def nbd_blade_secret_name(array: str, blade: str) -> str:
    """Secret with one blade's certificate (NBD client as its group, server of its HTTPS API)."""
    return f"{array}-nbd-{blade}"


def tls_trust_secret_name(array: str) -> str:
    """Secret with only an array's CA bundle (``ca-cert.pem``): what a scraper trusts."""
    return f"{array}-tls-trust"


def blades_server_name(array: str) -> str:
    """The DNS name every blade certificate of an array carries besides its pod name (the
    PodMonitor checks blades by it; it resolves nowhere)."""
    return f"{array}-blades"


def nbd_access_secret_name(array: str) -> str:
    """Secret with the controller's NBD access file (``access.json``: LUs per group)."""
    return f"{array}-nbd-access"


def filesystem_lu(fs: str) -> str:
    """LU name of a declared file system."""
    return lunames.fs_lu(fs)


def blade_pod_name(group: str, index: int) -> str:
    """Pod name of blade ``index`` of a ClusterGroup (stable across replacements)."""
    return f"{group}-blade-{index}"


def nfs_service_name(array: str, fs: str) -> str:
    """The NFS Service of a file system; it selects the owning blade."""
    return f"{array}-{fs}-nfs"


#: the ``app.kubernetes.io/component`` of a DiskArray's CSI controller plugin (``diskarray.csi``)
CSI_COMPONENT = "csi-controller"
#: the domain every array's CSI driver name ends in
CSI_DRIVER_DOMAIN = "nas.nasblade.io"
#: the label of the CSIDriver objects the operator makes; the node plugin registers each
L_CSI_DRIVER = "nasblade.io/csi-driver"
CSI_DRIVER_MAX = 63


def csi_driver_name(namespace: str, array: str) -> str:
    """An array's CSI driver name, ``<array>.<namespace>.nas.nasblade.io``: one per array, because
    the upstream sidecars (csi-snapshotter, external-provisioner and -resizer) pick their work
    by driver name alone. A CSI driver name has at most 63 characters; a longer one keeps as
    much of the array's name as fits and a hash of ``namespace/array`` that keeps it unique."""
    full = f"{array}.{namespace}.{CSI_DRIVER_DOMAIN}"
    if len(full) <= CSI_DRIVER_MAX:
        return full
    digest = hashlib.sha256(f"{namespace}/{array}".encode()).hexdigest()[:10]
    room = CSI_DRIVER_MAX - len(CSI_DRIVER_DOMAIN) - len(digest) - 2
    head = array[:room].rstrip("-.")
    return f"{head}-{digest}.{CSI_DRIVER_DOMAIN}" if head else f"{digest}.{CSI_DRIVER_DOMAIN}"


def common_labels(*, component: str, instance: str) -> dict[str, str]:
    """The ``app.kubernetes.io/*`` labels every child object carries."""
    return {
        L_NAME: "nasblade",
        L_COMPONENT: component,
        L_INSTANCE: instance,
        L_MANAGED_BY: "nasblade-operator",
    }
