"""Where a volume is served: the NFS export that the controller service names in a volume's
context, and what makes a cluster group serve it.

Two ways, chosen by ``nasblade-csi`` flags (``main.py``):

- ``Static``: every volume's context is the same set of ``--volume-context`` pairs (a fixed
  export). Nothing serves the volume's own LU; this is what the node tests and csi-sanity use.
- ``DiskArrayExports`` (``--diskarray NAMESPACE/NAME``, on Kubernetes): a volume is a file
  system of the DiskArray, ``spec.fileSystems[]`` named after the volume id, served by a
  ClusterGroup (StorageClass parameter ``clusterGroup``, else ``--cluster-group``) to the
  clients the StorageClass names (``clients``, comma-separated CIDRs, else ``--export-clients``;
  ``squash``: root, all or none). The operator then records the LU (formatted here, or filled
  by a copy: it finds the superblock and only records it), writes it into the group's NBD
  access file and hands it to the group's blades while they run (no blade restarts,
  ``nasblade_operator.clustergroup.reconfig``); its NFS Service ``<array>-<volume>-nfs`` is
  what the volume's context names, and a takeover keeps that address. Unpublishing removes
  the entry, the blade serving it releases it (its reservation dropped), and the LU can be
  deleted.

A StorageClass with ``layout: directory`` makes *directory volumes* instead (like Trident's
nas-economy): each is a top-level directory, with a tree quota of the volume's size, of the
shared file system the class names (``fileSystem``: a DiskArray file system a group serves).
The driver asks the blade that serves it (its pod's IP, ClusterGroup status) through the blade
API, ``PUT``/``DELETE /v1/filesystems/{fs}/directories/{volume}``, with the CSI token it holds
on Kubernetes (``nasblade.grants.csi_token``; the blades check its SHA-256), or with the
group's token derived from the array's token (a standalone array); either opens those routes
alone. The volume's context names the shared file system's Service and the export
path ``/<fs>/<volume>`` (a MOUNT below an export mounts that directory, under the export's
clients and squash). Expansion raises the quota online; deletion deletes the directory with
its data. The quota lives in the file system, so a takeover keeps it.

A class with ``exportPolicy: nodes`` exports each file-system volume to the nodes that mount
it and nobody else, like Trident's automatic export policy: the provisioner
(``nasblade_csi.provisioner``) works out on every pass which nodes run pods that use the
volume and calls ``set_clients`` with their InternalIP addresses (``/32``), or with
``NOBODY`` while no pod uses it.

Edits of the DiskArray are read-modify-write with its ``resourceVersion`` (a JSON merge patch
that fails on a conflict and is retried), so two controller replicas, the operator's status
writes and a user's ``kubectl apply`` never lose each other's change.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol, TypeVar

import grpc
import pykube
from nasblade import grants, lunames
from nasblade.bladeapi.client import BladeAPIError, BladeClient
from nasblade.fs import dirvolumes

from nasblade_csi.errors import CsiError

log = logging.getLogger(__name__)
T = TypeVar("T")

GROUP_VERSION = "nasblade.io/v1alpha1"
EXPORT_POLICIES = ("cidrs", "nodes")
"""StorageClass ``exportPolicy``: the class's ``clients`` CIDRs, or the nodes that mount the volume."""
NOBODY = "0.0.0.0/32"
"""The clients of an export no node mounts (``exportPolicy: nodes``): no client has that address."""
BLADE_API_PORT = 8090
"""The blade management API's port in a blade pod (the operator's ``naming.BLADE_API_PORT``)."""


class Exports(Protocol):
    def lu(self, volume: str) -> str:
        """The LU that holds ``volume``'s file system."""

    def publish(self, volume: str, size: int, parameters: Mapping[str, str]) -> dict[str, str]:
        """Have the volume served; its volume context (idempotent)."""

    def unpublish(self, volume: str) -> None:
        """Stop serving the volume, so that its LU may be deleted or changed (idempotent)."""

    @property
    def served(self) -> bool:
        """Whether published volumes are held by a blade (expansion must unpublish first)."""

    def publish_directory(self, volume: str, size: int, parameters: Mapping[str, str], *,
                          source: Mapping[str, str] | None = None) -> tuple[str, dict[str, str]]:
        """Have the volume made as a directory volume of the shared file system the parameters
        name, holding at most ``size`` bytes: ``(file system, volume context)`` (idempotent).
        ``source`` (``{"snapshot": S}`` or ``{"directory": D}``) fills a new one with a copy."""

    def snapshot_directory(self, volume: str, file_system: str, snapshot: str) -> None:
        """Snapshot directory volume ``volume`` of ``file_system`` as ``snapshot`` (idempotent)."""

    def unsnapshot_directory(self, file_system: str, snapshot: str) -> None:
        """Delete snapshot ``snapshot`` of ``file_system`` (idempotent)."""

    def resize_directory(self, volume: str, file_system: str, size: int) -> None:
        """Change a directory volume's quota to ``size`` (online)."""

    def unpublish_directory(self, volume: str, file_system: str) -> None:
        """Delete a directory volume with its data (idempotent)."""

    def directory_space(self, parameters: Mapping[str, str]) -> int:
        """The bytes a new directory volume of the class ``parameters`` could hold: the free
        space of the shared file system they name (GetCapacity)."""

    def set_clients(self, clients: Mapping[str, list[str]]) -> list[str]:
        """Export each volume of ``clients`` to those CIDRs alone; the volumes changed."""


def _no_directories() -> CsiError:
    return CsiError(grpc.StatusCode.INVALID_ARGUMENT,
                    "layout directory needs the driver on Kubernetes (--diskarray): a shared file system of a "
                    "DiskArray, served by a blade, holds the volume")


class Static:
    def __init__(self, context: Mapping[str, str]) -> None:
        self.context = dict(context)

    def lu(self, volume: str) -> str:
        return volume

    def publish(self, volume: str, size: int, parameters: Mapping[str, str]) -> dict[str, str]:
        return dict(self.context)

    def unpublish(self, volume: str) -> None:
        return None

    @property
    def served(self) -> bool:
        return False

    def publish_directory(self, volume: str, size: int, parameters: Mapping[str, str], *,
                          source: Mapping[str, str] | None = None) -> tuple[str, dict[str, str]]:
        raise _no_directories()

    def snapshot_directory(self, volume: str, file_system: str, snapshot: str) -> None:
        raise _no_directories()

    def unsnapshot_directory(self, file_system: str, snapshot: str) -> None:
        raise _no_directories()

    def resize_directory(self, volume: str, file_system: str, size: int) -> None:
        raise _no_directories()

    def unpublish_directory(self, volume: str, file_system: str) -> None:
        raise _no_directories()

    def directory_space(self, parameters: Mapping[str, str]) -> int:
        return 0  # no shared file system to make a directory volume in

    def set_clients(self, clients: Mapping[str, list[str]]) -> list[str]:
        return []  # one fixed export: nothing to narrow


class DiskArrayExports:
    def __init__(self, api: pykube.HTTPClient, *, namespace: str, array: str, group: str = "",
                 clients: tuple[str, ...] = (), timeout: float = 120.0, poll: float = 1.0,
                 control_token: str = "", blade_url: Callable[[str, str], str] | None = None) -> None:
        self.api = api
        self.control_token = control_token  # the CSI token, or the array's (a group's is derived from it)
        # where a blade's API is, from its pod name and IP (tests point it elsewhere)
        self.blade_url = blade_url or (lambda pod, ip: f"https://{ip}:{BLADE_API_PORT}")
        self.namespace = namespace
        self.array = array
        self.group = group
        self.clients = clients
        self.timeout = timeout
        self.poll = poll

    @property
    def served(self) -> bool:
        return True

    @property
    def ref(self) -> str:
        """``NAMESPACE/NAME`` of the DiskArray: what a StorageClass's ``diskArray`` parameter names."""
        return f"{self.namespace}/{self.array}"

    def lu(self, volume: str) -> str:
        return lunames.fs_lu(volume)

    # -- the API server ------------------------------------------------------------------------

    def _url(self, plural: str, name: str) -> str:
        return f"/apis/{GROUP_VERSION}/namespaces/{self.namespace}/{plural}/{name}"

    def _get(self, plural: str, name: str) -> dict[str, Any] | None:
        r = self.api.session.get(url=self.api.url + self._url(plural, name))
        if r.status_code == 404:
            return None
        if r.status_code >= 400:
            raise CsiError(grpc.StatusCode.UNAVAILABLE, f"reading {plural}/{name}: HTTP {r.status_code} {r.text[:200]}")
        obj: dict[str, Any] = r.json()
        return obj

    def _service_exists(self, name: str) -> bool:
        r = self.api.session.get(url=f"{self.api.url}/api/v1/namespaces/{self.namespace}/services/{name}")
        return bool(r.status_code == 200)

    def _edit(self, change: Callable[[list[dict[str, Any]]], list[dict[str, Any]]]) -> None:
        """Apply ``change`` to the DiskArray's ``spec.fileSystems``, retried on a conflict."""
        for _ in range(20):
            da = self._get("diskarrays", self.array)
            if da is None:
                raise CsiError(grpc.StatusCode.FAILED_PRECONDITION,
                               f"DiskArray {self.namespace}/{self.array} does not exist")
            current = list(da.get("spec", {}).get("fileSystems") or [])
            wanted = change([dict(f) for f in current])
            if wanted == current:
                return
            body = {"metadata": {"resourceVersion": da["metadata"]["resourceVersion"]},
                    "spec": {"fileSystems": wanted}}
            r = self.api.session.patch(url=self.api.url + self._url("diskarrays", self.array), data=json.dumps(body),
                                       headers={"Content-Type": "application/merge-patch+json"})
            if r.status_code == 409:
                continue  # someone else wrote it in between: read again
            if r.status_code >= 400:
                raise CsiError(grpc.StatusCode.INVALID_ARGUMENT if r.status_code == 422 else grpc.StatusCode.UNAVAILABLE,
                               f"DiskArray {self.array}: {r.json().get('message', r.text[:300])}")
            return
        raise CsiError(grpc.StatusCode.ABORTED, f"DiskArray {self.array} kept changing under the edit")

    def _wait(self, what: str, done: Callable[[], bool]) -> None:
        deadline = time.monotonic() + self.timeout
        while not done():
            if time.monotonic() > deadline:
                raise CsiError(grpc.StatusCode.DEADLINE_EXCEEDED, f"still waiting for {what}; call again")
            time.sleep(self.poll)

    # -- publish / unpublish -------------------------------------------------------------------

    def _this_array(self, parameters: Mapping[str, str]) -> None:
        """A StorageClass may name its DiskArray (``diskArray``); it must be this driver's: each
        array has a driver name of its own, so a class of this driver that names another array
        is a mistake to report, not a volume to make here."""
        named = parameters.get("diskArray", "")
        if named and named != self.ref:
            raise CsiError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"the StorageClass names DiskArray {named}, but this driver serves DiskArray {self.ref}: "
                           f"use the provisioner in DiskArray {named}'s status.csi.driver, or drop the parameter")

    def entry(self, volume: str, size: int, parameters: Mapping[str, str]) -> dict[str, Any]:
        """The DiskArray ``spec.fileSystems[]`` entry of ``volume``."""
        self._this_array(parameters)
        group = parameters.get("clusterGroup") or self.group
        if not group:
            raise CsiError(grpc.StatusCode.INVALID_ARGUMENT,
                           "the StorageClass names no clusterGroup (parameter clusterGroup) and the driver has no default")
        policy = parameters.get("exportPolicy", "cidrs")
        if policy not in EXPORT_POLICIES:
            raise CsiError(grpc.StatusCode.INVALID_ARGUMENT, f"exportPolicy {policy!r}: one of {', '.join(EXPORT_POLICIES)}")
        clients = [c.strip() for c in parameters["clients"].split(",") if c.strip()] if parameters.get("clients") \
            else list(self.clients)
        if policy == "nodes":
            clients = [NOBODY]  # until a pod that uses it runs on a node (the provisioner's pass)
        if not clients:
            raise CsiError(grpc.StatusCode.INVALID_ARGUMENT,
                           "no NFS clients: set the StorageClass parameter clients (CIDRs) or --export-clients")
        squash = parameters.get("squash", "root")
        if squash not in ("root", "all", "none"):
            raise CsiError(grpc.StatusCode.INVALID_ARGUMENT, f"squash {squash!r}: root, all or none")
        return {"name": volume, "size": str(size), "clusterGroup": group,
                "exports": [{"clients": clients, "access": "rw", "squash": squash}]}

    def publish(self, volume: str, size: int, parameters: Mapping[str, str]) -> dict[str, str]:
        entry = self.entry(volume, size, parameters)

        def add(fss: list[dict[str, Any]]) -> list[dict[str, Any]]:
            for i, f in enumerate(fss):
                if f.get("name") == volume:
                    fss[i] = {**f, **entry, "size": f["size"] if f.get("size") == entry["size"] else entry["size"]}
                    return fss
            return [*fss, entry]

        self._edit(add)
        group, service = entry["clusterGroup"], f"{self.array}-{volume}-nfs"

        def served() -> bool:
            da = self._get("diskarrays", self.array) or {}
            formatted = any(f.get("name") == volume and f.get("formatted")
                            for f in da.get("status", {}).get("fileSystems", []) or [])
            cg = self._get("clustergroups", group) or {}
            # a blade owns it and, once it has reported, serves it (the new LU's access may
            # reach the controller a while after the blade was told)
            owned = any(f.get("name") == volume and f.get("blade") and f.get("served") is not False
                        for f in cg.get("status", {}).get("fileSystems", []) or [])
            return formatted and owned and self._service_exists(service)

        self._wait(f"cluster group {group} to serve {volume} (Service {service})", served)
        return {"server": f"{service}.{self.namespace}.svc", "export": f"/{volume}", "diskArray": self.ref}

    def unpublish(self, volume: str) -> None:
        groups: list[str] = []

        def remove(fss: list[dict[str, Any]]) -> list[dict[str, Any]]:
            groups.extend(str(f.get("clusterGroup")) for f in fss if f.get("name") == volume)
            return [f for f in fss if f.get("name") != volume]

        self._edit(remove)

        def released() -> bool:
            for g in groups:
                cg = self._get("clustergroups", g) or {}
                if any(f.get("name") == volume for f in cg.get("status", {}).get("fileSystems", []) or []):
                    return False
            return not self._service_exists(f"{self.array}-{volume}-nfs")

        self._wait(f"the cluster group to release {volume}", released)

    # -- exports narrowed to the nodes that mount (StorageClass parameter exportPolicy: nodes) --

    def set_clients(self, clients: Mapping[str, list[str]]) -> list[str]:
        """Export each file-system volume of ``clients`` to its CIDRs alone (one edit of the
        DiskArray for all of them; the blades apply new exports in place). The volumes changed."""
        changed: list[str] = []

        def narrow(fss: list[dict[str, Any]]) -> list[dict[str, Any]]:
            changed.clear()
            for i, f in enumerate(fss):
                want = clients.get(str(f.get("name")))
                if want is None:
                    continue
                exports = [{**e, "clients": list(want)} for e in f.get("exports") or []]
                if exports != f.get("exports"):
                    fss[i] = {**f, "exports": exports}
                    changed.append(str(f["name"]))
            return fss

        self._edit(narrow)
        return changed

    # -- directory volumes (StorageClass parameter layout: directory) -----------------------

    def _serving_blade(self, file_system: str, da: dict[str, Any] | None = None) -> tuple[str, BladeClient]:
        """The group of shared file system ``file_system`` and a client of the blade API of the
        blade serving it, with the CSI token the driver holds, or the group's token derived from
        the array's token (``nasblade.grants``); either opens the directory-volume routes alone. ``UNAVAILABLE`` while no blade serves it. ``da``: the
        DiskArray when the caller has just read it."""
        da = da or self._get("diskarrays", self.array)
        if da is None:
            raise CsiError(grpc.StatusCode.FAILED_PRECONDITION, f"DiskArray {self.ref} does not exist")
        entry = next((f for f in da.get("spec", {}).get("fileSystems") or [] if f.get("name") == file_system), None)
        if entry is None or not entry.get("clusterGroup"):
            raise CsiError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"DiskArray {self.ref} has no file system {file_system!r} served by a cluster group "
                           "(StorageClass parameter fileSystem)")
        group = str(entry["clusterGroup"])
        cg = self._get("clustergroups", group) or {}
        owner = next((f.get("blade") for f in cg.get("status", {}).get("fileSystems", []) or []
                      if f.get("name") == file_system and f.get("served") is not False), None)
        if not owner:
            raise CsiError(grpc.StatusCode.UNAVAILABLE, f"no blade of {group} serves {file_system} now; call again")
        r = self.api.session.get(url=f"{self.api.url}/api/v1/namespaces/{self.namespace}/pods/{owner}")
        ip = r.json().get("status", {}).get("podIP") if r.status_code == 200 else None
        if not ip:
            raise CsiError(grpc.StatusCode.UNAVAILABLE, f"blade {owner} has no address (HTTP {r.status_code}); call again")
        if not self.control_token:
            raise CsiError(grpc.StatusCode.FAILED_PRECONDITION, "the driver holds no array token to reach the blades with")
        # the CSI token (on Kubernetes) is what the blades take on these routes; with the array's
        # own token (a standalone array) the group's is derived from it
        token = self.control_token if grants.is_csi_token(self.control_token) else \
            grants.group_token(self.control_token, group)
        return group, BladeClient(self.blade_url(owner, ip), token, timeout=self.timeout, server_hostname=owner)

    def _blade_call(self, file_system: str, call: Callable[[BladeClient], T], da: dict[str, Any] | None = None) -> T:
        """``call`` on the blade serving ``file_system``; its refusals as CSI errors (a blade
        that lost the file system meanwhile: ``UNAVAILABLE``, the sidecar calls again)."""
        _, blade = self._serving_blade(file_system, da)
        try:
            return call(blade)
        except BladeAPIError as exc:
            code = {400: grpc.StatusCode.INVALID_ARGUMENT, 409: grpc.StatusCode.FAILED_PRECONDITION}.get(
                exc.status, grpc.StatusCode.UNAVAILABLE)
            raise CsiError(code, f"blade serving {file_system}: {exc.message}") from exc
        except OSError as exc:
            raise CsiError(grpc.StatusCode.UNAVAILABLE, f"blade serving {file_system}: {exc}") from exc

    @staticmethod
    def _shared_file_system(parameters: Mapping[str, str]) -> str:
        file_system = parameters.get("fileSystem", "")
        if not file_system:
            raise CsiError(grpc.StatusCode.INVALID_ARGUMENT,
                           "layout directory needs the StorageClass parameter fileSystem (a shared file system of the DiskArray)")
        return file_system

    def publish_directory(self, volume: str, size: int, parameters: Mapping[str, str], *,
                          source: Mapping[str, str] | None = None) -> tuple[str, dict[str, str]]:
        self._this_array(parameters)
        if parameters.get("exportPolicy", "cidrs") != "cidrs":
            raise CsiError(grpc.StatusCode.INVALID_ARGUMENT,
                           "a directory volume is exported with its shared file system: exportPolicy cidrs only")
        file_system = self._shared_file_system(parameters)
        dirvolumes.check_name(volume)
        copy_of = dict(source) if source else None
        self._blade_call(file_system, lambda b: b.set_directory(file_system, volume, size, source=copy_of))
        context = {"server": f"{self.array}-{file_system}-nfs.{self.namespace}.svc",
                   "export": f"/{file_system}/{volume}", "diskArray": self.ref, "fileSystem": file_system}
        return file_system, context

    def resize_directory(self, volume: str, file_system: str, size: int) -> None:
        self._blade_call(file_system, lambda b: b.set_directory(file_system, volume, size))

    def unpublish_directory(self, volume: str, file_system: str) -> None:
        da = self._get("diskarrays", self.array) or {}
        if not any(f.get("name") == file_system for f in da.get("spec", {}).get("fileSystems") or []):
            log.warning("directory volume %s: its file system %s is gone from %s; nothing to delete",
                        volume, file_system, self.ref)
            return
        self._blade_call(file_system, lambda b: b.remove_directory(file_system, volume), da)

    def snapshot_directory(self, volume: str, file_system: str, snapshot: str) -> None:
        self._blade_call(file_system, lambda b: b.snapshot_directory(file_system, volume, snapshot))

    def unsnapshot_directory(self, file_system: str, snapshot: str) -> None:
        da = self._get("diskarrays", self.array) or {}
        if not any(f.get("name") == file_system for f in da.get("spec", {}).get("fileSystems") or []):
            log.warning("snapshot %s: its file system %s is gone from %s; nothing to delete", snapshot, file_system,
                        self.ref)
            return
        self._blade_call(file_system, lambda b: b.remove_snapshot(file_system, snapshot), da)

    def directory_space(self, parameters: Mapping[str, str]) -> int:
        file_system = self._shared_file_system(parameters)
        listing = self._blade_call(file_system, lambda b: b.directories(file_system))
        return int(listing.get("space", {}).get("freeBytes", 0))
