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

Edits of the DiskArray are read-modify-write with its ``resourceVersion`` (a JSON merge patch
that fails on a conflict and is retried), so two controller replicas, the operator's status
writes and a user's ``kubectl apply`` never lose each other's change.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import grpc
import pykube
from nasblade import lunames

from nasblade_csi.errors import CsiError

log = logging.getLogger(__name__)

GROUP_VERSION = "nasblade.io/v1alpha1"


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


class DiskArrayExports:
    def __init__(self, api: pykube.HTTPClient, *, namespace: str, array: str, group: str = "",
                 clients: tuple[str, ...] = (), timeout: float = 120.0, poll: float = 1.0) -> None:
        self.api = api
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

    def entry(self, volume: str, size: int, parameters: Mapping[str, str]) -> dict[str, Any]:
        """The DiskArray ``spec.fileSystems[]`` entry of ``volume``."""
        group = parameters.get("clusterGroup") or self.group
        if not group:
            raise CsiError(grpc.StatusCode.INVALID_ARGUMENT,
                           "the StorageClass names no clusterGroup (parameter clusterGroup) and the driver has no default")
        clients = [c.strip() for c in parameters["clients"].split(",") if c.strip()] if parameters.get("clients") \
            else list(self.clients)
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
