"""The node plugin's registration with the kubelet: the node-driver-registrar sidecar's job,
done by the driver (``nasblade-csi --role node --registration-dir DIR``).

The kubelet's plugin watcher looks for Unix sockets in ``/var/lib/kubelet/plugins_registry``
(mounted at ``DIR``). On ``DIR/nas.nasblade.io-reg.sock`` this module serves the kubelet's
``pluginregistration.Registration`` API (``proto.load_registration``): ``GetInfo`` answers that
this is a ``CSIPlugin`` named ``nas.nasblade.io`` whose CSI endpoint is ``--kubelet-endpoint``
(where the kubelet itself finds the driver's socket, e.g.
``/var/lib/kubelet/plugins/nas.nasblade.io/csi.sock``), speaking CSI 1.x;
``NotifyRegistrationStatus`` is the kubelet's verdict, logged (``registered`` says it). The
kubelet then calls ``NodeGetInfo`` on the endpoint and lists the driver in the node's
``CSINode``, after which it stages and publishes the driver's volumes on this node. The
socket is removed on exit, which unregisters the plugin.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from concurrent import futures
from typing import Any

import grpc

from nasblade_csi import proto
from nasblade_csi.identity import DRIVER_NAME

log = logging.getLogger(__name__)
rpb, rpb_grpc = proto.load_registration()
RegistrationServicer: Any = rpb_grpc.RegistrationServicer

SUPPORTED_VERSIONS = ("1.0.0",)


def socket_path(directory: str) -> str:
    return os.path.join(directory, f"{DRIVER_NAME}-reg.sock")


class Registrar(RegistrationServicer):  # type: ignore[misc]
    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.registered = threading.Event()
        self.error = ""

    def GetInfo(self, request: Any, context: grpc.ServicerContext) -> Any:
        return rpb.PluginInfo(type="CSIPlugin", name=DRIVER_NAME, endpoint=self.endpoint,
                              supported_versions=list(SUPPORTED_VERSIONS))

    def NotifyRegistrationStatus(self, request: Any, context: grpc.ServicerContext) -> Any:
        if request.plugin_registered:
            self.error = ""
            self.registered.set()
            log.info("the kubelet registered %s (endpoint %s)", DRIVER_NAME, self.endpoint)
        else:
            self.error = request.error
            self.registered.clear()
            log.error("the kubelet refused to register %s: %s", DRIVER_NAME, request.error)
        return rpb.RegistrationStatusResponse()


def serve(directory: str, endpoint: str) -> tuple[grpc.Server, Registrar]:
    """Serve the registration socket in ``directory`` for the CSI socket the kubelet reaches at
    ``endpoint`` (a path, or ``unix://PATH``)."""
    path = endpoint[len("unix://"):] if endpoint.startswith("unix://") else endpoint
    registrar = Registrar(path)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    rpb_grpc.add_RegistrationServicer_to_server(registrar, server)
    sock = socket_path(directory)
    os.makedirs(directory, exist_ok=True)
    if os.path.exists(sock):
        os.unlink(sock)  # left by a previous run
    server.add_insecure_port(f"unix://{sock}")
    server.start()
    return server, registrar


def stop(server: grpc.Server, directory: str) -> None:
    server.stop(5).wait()
    with contextlib.suppress(FileNotFoundError):
        os.unlink(socket_path(directory))
