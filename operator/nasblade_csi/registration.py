"""The node plugin's registration with the kubelet: the node-driver-registrar sidecar's job,
done by the driver (``nasblade-csi --role node --registration-dir DIR``), for every CSI driver
name the node plugin serves.

Each CSI-enabled DiskArray has its own driver name (e.g. ``a1.storage.nas.nasblade.io``, one
``CSIDriver`` object each), while one node plugin serves the volumes of every array (its node
service does not depend on the name): so it registers each of those names with the kubelet,
all pointing at the same CSI socket. ``Registrations.sync(names)`` keeps one registration per
wanted name; ``nasblade_csi.main`` gives it the names of ``--register-driver`` and those of the
``CSIDriver`` objects ``--register-drivers-labelled`` selects (or ``--driver-name`` alone).

The kubelet's plugin watcher looks for Unix sockets in ``/var/lib/kubelet/plugins_registry``
(mounted at ``DIR``). On ``DIR/<name>-reg.sock`` (``socket_path``) this module serves the
kubelet's ``pluginregistration.Registration`` API (``proto.load_registration``): ``GetInfo``
answers that this is a ``CSIPlugin`` named ``<name>`` whose CSI endpoint is
``--kubelet-endpoint`` (where the kubelet itself finds the driver's socket, e.g.
``/var/lib/kubelet/plugins/nas.nasblade.io/csi.sock``), speaking CSI 1.x;
``NotifyRegistrationStatus`` is the kubelet's verdict, logged per name (``the kubelet
registered <name>``, or ``refused``). The kubelet then calls ``NodeGetInfo`` on the endpoint and
lists the driver in the node's ``CSINode``, after which it stages and publishes that driver's
volumes on this node. Removing a name's socket (the name is no longer wanted, or the plugin
exits: ``close``) unregisters that driver: the kubelet drops it from the ``CSINode``. With
``--topology-keys`` that ``NodeGetInfo`` reports the node's values of those keys, read from the
Node object's labels (``NodeLabels``): the kubelet lists the keys in the ``CSINode`` too.

A plugin killed with SIGKILL leaves its sockets behind, and the kubelet keeps those drivers
until the sockets go. So the first ``sync`` of a new plugin also removes every socket of a name
in the driver's own domain (``nas.nasblade.io`` and ``*.nas.nasblade.io``) that it does not
register: names of that domain are this driver's alone; other drivers' sockets share the
directory and are never touched.

A name that is not a valid CSI driver name (at most 63 characters, lowercase alphanumerics,
``-`` and ``.``, beginning and ending with an alphanumeric) is logged and skipped.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
from collections.abc import Callable, Iterable
from concurrent import futures
from typing import Any

import grpc

from nasblade_csi import proto
from nasblade_csi.identity import DRIVER_NAME

log = logging.getLogger(__name__)
rpb, rpb_grpc = proto.load_registration()
RegistrationServicer: Any = rpb_grpc.RegistrationServicer

SUPPORTED_VERSIONS = ("1.0.0",)
#: the driver's own domain: every name in it is this driver's (``identity.DRIVER_NAME``)
DOMAIN = DRIVER_NAME
_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?")


def valid_name(name: str) -> bool:
    """A CSI driver name (the CSIDriver object's name and the plugin's ``GetPluginInfo``): at
    most 63 characters, lowercase alphanumerics, ``-`` and ``.``, alphanumeric at both ends."""
    return len(name) <= 63 and _NAME.fullmatch(name) is not None


def socket_path(directory: str, name: str) -> str:
    """The registration socket of the driver ``name`` in the kubelet's plugins_registry
    ``directory``."""
    return os.path.join(directory, f"{name}-reg.sock")


class Registrar(RegistrationServicer):  # type: ignore[misc]
    """The registration service of one driver name."""

    def __init__(self, name: str, endpoint: str) -> None:
        self.name = name
        self.endpoint = endpoint
        self.registered = threading.Event()
        self.error = ""

    def GetInfo(self, request: Any, context: grpc.ServicerContext) -> Any:
        return rpb.PluginInfo(type="CSIPlugin", name=self.name, endpoint=self.endpoint,
                              supported_versions=list(SUPPORTED_VERSIONS))

    def NotifyRegistrationStatus(self, request: Any, context: grpc.ServicerContext) -> Any:
        if request.plugin_registered:
            self.error = ""
            self.registered.set()
            log.info("the kubelet registered %s (endpoint %s)", self.name, self.endpoint)
        else:
            self.error = request.error
            self.registered.clear()
            log.error("the kubelet refused to register %s: %s", self.name, request.error)
        return rpb.RegistrationStatusResponse()


class Registrations:
    """One registration socket per wanted driver name in ``directory`` (the kubelet's
    plugins_registry), each naming the CSI socket the kubelet reaches at ``endpoint`` (a path,
    or ``unix://PATH``)."""

    def __init__(self, directory: str, endpoint: str, *, domain: str = DOMAIN) -> None:
        self.directory = directory
        self.domain = domain
        self._swept = False
        self.endpoint = endpoint[len("unix://"):] if endpoint.startswith("unix://") else endpoint
        self._served: dict[str, tuple[grpc.Server, Registrar]] = {}
        self._invalid: set[str] = set()  # logged once each
        self._lock = threading.Lock()

    @property
    def names(self) -> frozenset[str]:
        """The names registered (served) now."""
        with self._lock:
            return frozenset(self._served)

    def registrar(self, name: str) -> Registrar:
        with self._lock:
            return self._served[name][1]

    def sync(self, names: Iterable[str]) -> None:
        """Serve a registration socket for each valid name of ``names`` not served yet, and stop
        and remove the socket of each served name not in ``names`` (which unregisters it)."""
        wanted: set[str] = set()
        for name in names:
            if valid_name(name):
                wanted.add(name)
            elif name not in self._invalid:
                self._invalid.add(name)
                log.error("%r is not a CSI driver name (at most 63 characters, lowercase alphanumerics, "
                          "'-' and '.', alphanumeric at both ends): not registered", name)
        with self._lock:
            if not self._swept:
                self._sweep(wanted)
            for name in sorted(set(self._served) - wanted):
                self._stop(name)
            for name in sorted(wanted - set(self._served)):
                self._start(name)

    def _sweep(self, wanted: set[str]) -> None:
        """Remove the sockets a killed run of this plugin left for names of its domain that are
        no longer wanted (the kubelet then unregisters them)."""
        self._swept = True
        try:
            entries = os.listdir(self.directory)
        except FileNotFoundError:
            return
        for entry in sorted(entries):
            name = entry.removesuffix("-reg.sock")
            if name == entry or name in wanted or not (name == self.domain or name.endswith("." + self.domain)):
                continue
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(self.directory, entry))
                log.info("removed %s, left by an earlier run for %s, no longer a driver here", entry, name)

    def close(self) -> None:
        """Stop every registration and remove its socket (the kubelet unregisters them all)."""
        with self._lock:
            for name in sorted(self._served):
                self._stop(name)

    def _start(self, name: str) -> None:
        registrar = Registrar(name, self.endpoint)
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        rpb_grpc.add_RegistrationServicer_to_server(registrar, server)
        sock = socket_path(self.directory, name)
        try:
            os.makedirs(self.directory, exist_ok=True)
            if os.path.exists(sock):
                os.unlink(sock)  # left by a previous run
            server.add_insecure_port(f"unix://{sock}")
            server.start()
        except (OSError, RuntimeError) as exc:  # tried again on the next sync
            log.error("cannot serve the registration socket %s of %s: %s", sock, name, exc)
            server.stop(None)
            return
        self._served[name] = (server, registrar)
        log.info("registering %s with the kubelet (%s)", name, sock)

    def _stop(self, name: str) -> None:
        server, _ = self._served.pop(name)
        server.stop(5).wait()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(socket_path(self.directory, name))
        log.info("unregistered %s (removed %s)", name, socket_path(self.directory, name))


class LabelledDrivers:
    """The names of the ``storage.k8s.io/v1`` CSIDriver objects that the label ``selector``
    selects (``--register-drivers-labelled``; the operator labels each array's driver
    ``nasblade.io/csi-driver: "true"``), listed through the API server. Calling it lists them
    again; a listing that fails (the API server, the client's configuration, RBAC) is logged
    once per distinct error and the last names listed are kept."""

    def __init__(self, selector: str, client: Callable[[], Any] | None = None) -> None:
        self.selector = selector
        self._client = client or _in_cluster_client
        self._api: Any = None
        self.names: frozenset[str] = frozenset()
        self._error = ""

    def __call__(self) -> frozenset[str]:
        try:
            if self._api is None:
                self._api = self._client()
            r = self._api.get(version="storage.k8s.io/v1", url="csidrivers", params={"labelSelector": self.selector})
            self._api.raise_for_status(r)
            names = frozenset(item["metadata"]["name"] for item in r.json().get("items") or [])
        except Exception as exc:  # any failure keeps the previous names
            error = f"{type(exc).__name__}: {exc}"
            if error != self._error:
                self._error = error
                log.error("cannot list the CSIDriver objects labelled %s (keeping %s): %s", self.selector,
                          ", ".join(sorted(self.names)) or "none", error)
            return self.names
        if self._error:
            self._error = ""
            log.info("listing the CSIDriver objects labelled %s again", self.selector)
        self.names = names
        return names


class NodeLabels:
    """The labels of the Node object ``name`` (``GET /api/v1/nodes/<name>``), read through the
    API server at each call: the values of the node plugin's topology keys, which ``NodeGetInfo``
    reports when the kubelet registers a driver (``nasblade_csi.node``, ``--topology-keys``).
    A read that fails (the API server, the client's configuration, RBAC: the plugin's role
    needs ``get`` on ``nodes``) raises; the kubelet then tries the registration again."""

    def __init__(self, name: str, client: Callable[[], Any] | None = None) -> None:
        self.name = name
        self._client = client or _in_cluster_client
        self._api: Any = None

    def __call__(self) -> dict[str, str]:
        if self._api is None:
            self._api = self._client()
        r = self._api.get(version="v1", url=f"nodes/{self.name}")
        self._api.raise_for_status(r)
        labels = r.json().get("metadata", {}).get("labels") or {}
        return {str(k): str(v) for k, v in labels.items()}


def _in_cluster_client() -> Any:
    """pykube's client: the pod's ServiceAccount, else ``KUBECONFIG`` or ``~/.kube/config``."""
    import pykube

    return pykube.HTTPClient(pykube.KubeConfig.from_env())
