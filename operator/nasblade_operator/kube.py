"""The operator's Kubernetes API calls: a thin async layer over pykube-ng's HTTP client.

Why pykube-ng (see docs/operator.md): the builders produce plain dicts and kopf hands the
handlers plain dicts, and pykube-ng speaks dicts and raw REST paths with the kubeconfig /
in-cluster authentication already solved; the official client would add model classes we
would only convert back and forth, and a much larger memory footprint.

Every call is one HTTP request (``create`` may add one ``get`` on a 409), run in a worker
thread so the kopf event loop never blocks. ``REQUESTS`` counts them per verb for the
metrics endpoint and the benchmark. The operator's one ``Kube`` is made at start-up and kept
in its state (``state.OperatorState.kube``). Handlers never import pykube directly.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import json
import logging
from collections.abc import Mapping
from typing import Any

import pykube


@dataclasses.dataclass(frozen=True)
class Resource:
    api_version: str
    plural: str
    namespaced: bool = True


RESOURCES: dict[str, Resource] = {
    "Secret": Resource("v1", "secrets"),
    "Service": Resource("v1", "services"),
    "Pod": Resource("v1", "pods"),
    "PersistentVolumeClaim": Resource("v1", "persistentvolumeclaims"),
    "Event": Resource("v1", "events"),
    "StatefulSet": Resource("apps/v1", "statefulsets"),
    "Deployment": Resource("apps/v1", "deployments"),
    "ServiceAccount": Resource("v1", "serviceaccounts"),
    "RoleBinding": Resource("rbac.authorization.k8s.io/v1", "rolebindings"),
    "ClusterRoleBinding": Resource("rbac.authorization.k8s.io/v1", "clusterrolebindings", namespaced=False),
    "CSIDriver": Resource("storage.k8s.io/v1", "csidrivers", namespaced=False),
    "VolumeSnapshotClass": Resource("snapshot.storage.k8s.io/v1", "volumesnapshotclasses", namespaced=False),
    "NetworkPolicy": Resource("networking.k8s.io/v1", "networkpolicies"),
    "PodDisruptionBudget": Resource("policy/v1", "poddisruptionbudgets"),
    "DiskArray": Resource("nasblade.io/v1alpha1", "diskarrays"),
    "ClusterGroup": Resource("nasblade.io/v1alpha1", "clustergroups"),
}

log = logging.getLogger(__name__)
REQUESTS: collections.Counter[str] = collections.Counter()
#: Worker threads that run the blocking calls, and connections kept open to the API server.
POOL_SIZE = 32


class KubeError(RuntimeError):
    """A non-2xx answer from the API server (other than the ones a method handles)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


class Kube:
    """Dict-in, dict-out access to the resources in ``RESOURCES``."""

    def __init__(self, http: Any) -> None:
        self._http = http

    @classmethod
    def from_env(cls) -> Kube:
        """In-cluster service account, else $KUBECONFIG or ~/.kube/config.

        The connection pool keeps one connection per worker thread (``POOL_SIZE``, the size of
        the executor ``handlers.configure`` installs): with requests' default of 10, calls
        beyond the tenth concurrent one each paid a new TCP + TLS handshake.
        """
        config = pykube.KubeConfig.from_env()
        adapter = pykube.http.KubernetesHTTPAdapter(config, pool_connections=1, pool_maxsize=POOL_SIZE)
        return cls(pykube.HTTPClient(config, timeout=30, http_adapter=adapter))

    async def get(self, kind: str, name: str, *, namespace: str) -> dict[str, Any] | None:
        """The object, or None when it does not exist."""
        r = await self._call("get", kind, namespace, name)
        if r.status_code == 404:
            return None
        return _ok(r)

    async def list(self, kind: str, *, namespace: str, selector: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
        params = {"labelSelector": ",".join(f"{k}={v}" for k, v in selector.items())} if selector else None
        r = await self._call("list", kind, namespace, "", params=params)
        items: list[dict[str, Any]] = _ok(r).get("items", [])
        return items

    async def create(self, obj: Mapping[str, Any]) -> tuple[dict[str, Any], bool]:
        """Create ``obj``; if it already exists return the existing one. Returns (object, created)."""
        kind = str(obj["kind"])
        ns = str(obj["metadata"].get("namespace", ""))
        r = await self._call("create", kind, ns, "", data=json.dumps(obj))
        if r.status_code == 409:
            existing = await self.get(kind, obj["metadata"]["name"], namespace=ns)
            if existing is not None:
                return existing, False
        return _ok(r), True

    async def patch(
        self, kind: str, name: str, patch: Mapping[str, Any], *, namespace: str, subresource: str = ""
    ) -> dict[str, Any] | None:
        """JSON merge patch; None when the object is gone."""
        path = f"{name}/{subresource}" if subresource else name
        r = await self._call(
            "patch", kind, namespace, path, data=json.dumps(patch),
            headers={"Content-Type": "application/merge-patch+json"},
        )
        if r.status_code == 404:
            return None
        return _ok(r)

    async def delete(self, kind: str, name: str, *, namespace: str, propagation: str = "Background") -> bool:
        """Delete; False when it was already gone."""
        body = json.dumps({"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": propagation})
        r = await self._call("delete", kind, namespace, name, data=body)
        if r.status_code == 404:
            return False
        _ok(r)
        return True

    async def _call(self, verb: str, kind: str, namespace: str, path: str, **kwargs: Any) -> Any:
        res = RESOURCES[kind]
        url = res.plural + (f"/{path}" if path else "")
        method = {"get": "get", "list": "get", "create": "post", "patch": "patch", "delete": "delete"}[verb]
        REQUESTS[verb] += 1
        log.debug("kube %s %s %s/%s", verb, kind, namespace, path)
        fn = getattr(self._http, method)
        return await asyncio.to_thread(
            fn, url=url, version=res.api_version, namespace=namespace if res.namespaced else None, **kwargs
        )


def _ok(r: Any) -> dict[str, Any]:
    if r.status_code >= 400:
        try:
            message = r.json().get("message", r.text)
        except ValueError:
            message = r.text
        raise KubeError(r.status_code, str(message))
    if r.status_code == 204 or not r.content:
        return {}
    body: dict[str, Any] = r.json()
    return body
