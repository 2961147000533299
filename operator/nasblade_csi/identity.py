"""The CSI Identity service: the driver's name and version, its plugin capabilities (it has a
controller service, as the CO must know even when it asks a node plugin; the controller plugin
of an array reachable only from some nodes also has accessibility constraints), and a probe that is ready only while the array's controller
answers (the controller plugin) or always (a node plugin, which needs nothing but its mounts)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc

from nasblade_csi import proto
from nasblade_csi.errors import guard

pb, pb_grpc = proto.load()
IdentityServicer: Any = pb_grpc.IdentityServicer

#: the default driver name (``--driver-name``): a standalone array, csi-sanity. On Kubernetes each
#: DiskArray's plugin runs under a name of the array's own (``nasblade_operator.naming.csi_driver_name``)
DRIVER_NAME = "nas.nasblade.io"
VERSION = "0.1.0"


class Identity(IdentityServicer):  # type: ignore[misc]
    def __init__(self, *, ready: Callable[[], bool] = lambda: True, driver_name: str = DRIVER_NAME,
                 topology: bool = False) -> None:
        self.ready = ready
        self.driver_name = driver_name
        #: the array is reachable only from some nodes (``--topology``): the CO must pass, and
        #: honour, accessibility constraints
        self.topology = topology

    @guard
    def GetPluginInfo(self, request: Any, context: grpc.ServicerContext) -> Any:
        return pb.GetPluginInfoResponse(name=self.driver_name, vendor_version=VERSION)

    @guard
    def GetPluginCapabilities(self, request: Any, context: grpc.ServicerContext) -> Any:
        cap = pb.PluginCapability
        caps = [cap(service=cap.Service(type=cap.Service.CONTROLLER_SERVICE)),
                cap(volume_expansion=cap.VolumeExpansion(type=cap.VolumeExpansion.OFFLINE))]
        if self.topology:
            caps.append(cap(service=cap.Service(type=cap.Service.VOLUME_ACCESSIBILITY_CONSTRAINTS)))
        return pb.GetPluginCapabilitiesResponse(capabilities=caps)

    @guard
    def Probe(self, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            ok = self.ready()
        except Exception:  # the array is not reachable: not ready, not an error of the call
            ok = False
        return pb.ProbeResponse(ready={"value": ok})
