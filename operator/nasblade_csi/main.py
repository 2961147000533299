"""``nasblade-csi``: serve the CSI driver's gRPC services on a Unix socket.

    nasblade-csi --endpoint unix:///csi/csi.sock --role controller \
        --array-api http://CTRL:8080 --array-nbd nbd://CTRL:10809 --token-file /secrets/token
    nasblade-csi --endpoint unix:///csi/csi.sock --role node --node-id "$NODE_NAME"

On Kubernetes the controller role takes ``--diskarray NAMESPACE/NAME`` (and
``--cluster-group``, ``--export-clients`` as defaults for StorageClasses that name none): each
volume is then a file system of that DiskArray with its own NFS Service
(``nasblade_csi.exports``).
``--role controller`` serves Identity + Controller, ``node`` Identity + Node, ``all`` the three
(csi-sanity, a single-host run). The token is the controller's user token (``--token-file`` or
``NASBLADE_TOKEN``). Prints a ready line ``{"event": "ready", "role": "csi", "endpoint": …}``;
SIGTERM/SIGINT stop it (calls in flight get 10 s).

``--driver-name`` is the CSI driver name the plugin reports (``GetPluginInfo``; the
provisioner's StorageClasses and volumes): one per DiskArray, e.g.
``a1.storage.nas.nasblade.io``. The node plugin serves the volumes of every array, so with
``--registration-dir`` it registers with the kubelet each name of ``--register-driver``
(repeatable) and of the CSIDriver objects ``--register-drivers-labelled SELECTOR`` selects
(listed every ``--register-poll`` seconds; a name that goes is unregistered), or
``--driver-name`` alone when neither is given (``nasblade_csi.registration``). With
``--topology-keys KEY,...`` its NodeGetInfo reports the node's values of those keys, read from
the labels of its Node object (``--node-id``; ``nasblade_csi.node``); without, no topology and
no Kubernetes client.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable
from concurrent import futures
from typing import Any

import grpc
from nasblade import logformat
from nasblade.controller.apiclient import ControlClient


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="nasblade-csi", description=__doc__.split("\n")[0])
    p.add_argument("--endpoint", default=os.environ.get("CSI_ENDPOINT", "unix:///csi/csi.sock"),
                   help="unix:///PATH the sidecars and kubelet connect to (env CSI_ENDPOINT); "
                        "tcp://HOST:PORT for tests")
    p.add_argument("--role", choices=("controller", "node", "all"), default="all")
    p.add_argument("--driver-name", metavar="NAME",
                   help="the CSI driver name this plugin reports in GetPluginInfo and provisions for "
                        "(one per DiskArray, e.g. a1.storage.nas.nasblade.io; default nas.nasblade.io, "
                        "nasblade_csi.identity.DRIVER_NAME)")
    p.add_argument("--array-api", help="the controller's control API, http://HOST:PORT")
    p.add_argument("--array-nbd", help="the controller's NBD endpoint, nbd://HOST:PORT")
    p.add_argument("--token-file", help="the controller's user token (else NASBLADE_TOKEN)")
    p.add_argument("--node-id", default=os.environ.get("NODE_NAME") or socket.gethostname())
    p.add_argument("--volume-context", action="append", default=[], metavar="KEY=VALUE",
                   help="added to every volume's context (e.g. server=, export=, nfsPort=)")
    p.add_argument("--snapshot-wait", type=float, default=10.0,
                   help="seconds CreateSnapshot waits for the copy before answering ready_to_use=false "
                        "(the snapshotter calls again)")
    p.add_argument("--copy-rate-limit", type=int, default=0, metavar="BYTES_PER_S",
                   help="bandwidth of each snapshot or clone copy on the array (0: unlimited)")
    p.add_argument("--diskarray", metavar="NAMESPACE/NAME",
                   help="Kubernetes: each volume becomes a file system of this DiskArray, served by a "
                        "ClusterGroup through its own NFS Service (nasblade_csi.exports); else every "
                        "volume's context is --volume-context")
    p.add_argument("--cluster-group", default="",
                   help="the ClusterGroup that serves volumes whose StorageClass names none (parameter clusterGroup)")
    p.add_argument("--export-clients", default="",
                   help="comma-separated CIDRs a volume is exported to when its StorageClass names none "
                        "(parameter clients)")
    p.add_argument("--topology", default="", metavar="JSON",
                   help="the topology segments the array is reachable from, a JSON list of "
                        "{key: value} maps (e.g. [{\"topology.kubernetes.io/zone\": \"a\"}]): volumes are "
                        "accessible from nodes in any of them (PersistentVolume node affinity); empty: from every node")
    p.add_argument("--publish-timeout", type=float, default=120.0,
                   help="seconds CreateVolume waits for the group to serve a new volume before answering "
                        "DEADLINE_EXCEEDED (the provisioner calls again)")
    p.add_argument("--provision", action="store_true",
                   help="Kubernetes: also do the provisioner's and resizer's jobs (claims of this driver's "
                        "StorageClasses become volumes; nasblade_csi.provisioner); one replica only")
    p.add_argument("--provision-jobs", default="", metavar="JOB,...",
                   help="with --provision, the jobs it does, of provision, delete, resize and exports "
                        "(nasblade_csi.provisioner.JOBS; default all); the upstream external-provisioner "
                        "does provision and delete, external-resizer resize")
    p.add_argument("--provision-interval", type=float, default=2.0, help="seconds between provisioner passes")
    p.add_argument("--registration-dir", metavar="DIR",
                   help="node role, Kubernetes: register the node plugin with the kubelet through a socket in "
                        "DIR (the kubelet's plugins_registry; nasblade_csi.registration)")
    p.add_argument("--kubelet-endpoint", metavar="PATH",
                   help="where the kubelet finds this driver's socket (default: the --endpoint path)")
    p.add_argument("--register-driver", action="append", default=[], metavar="NAME",
                   help="node role, with --registration-dir: register this driver name with the kubelet "
                        "(repeatable; with neither this nor --register-drivers-labelled: --driver-name)")
    p.add_argument("--register-drivers-labelled", metavar="SELECTOR",
                   help="node role, with --registration-dir: also register the name of every CSIDriver "
                        "object this label selector selects (e.g. nasblade.io/csi-driver=true), listed "
                        "through the API server every --register-poll seconds")
    p.add_argument("--register-poll", type=float, default=5.0, metavar="SECONDS",
                   help="seconds between listings of --register-drivers-labelled")
    p.add_argument("--topology-keys", default="", metavar="KEY,...",
                   help="node role: the topology keys NodeGetInfo reports, with the values of the node's "
                        "labels of those keys (read from its Node object, --node-id, through the API server; "
                        "e.g. topology.kubernetes.io/region,topology.kubernetes.io/zone); default none: "
                        "no topology, the API server is not asked")
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--log-level", default="INFO")
    p.add_argument("--log-format", choices=logformat.FORMATS, default=logformat.default(),
                   help="text, or json: one JSON object per line (default: NASBLADE_LOG_FORMAT, else text)")
    args = p.parse_args(argv)
    if args.role != "node" and not (args.array_api and args.array_nbd):
        p.error("--array-api and --array-nbd are required for the controller role")
    if args.diskarray and args.diskarray.count("/") != 1:
        p.error("--diskarray is NAMESPACE/NAME")
    if (args.register_driver or args.register_drivers_labelled) and not args.registration_dir:
        p.error("--register-driver and --register-drivers-labelled need --registration-dir")
    if args.provision:  # (the node plugin, which imports no Kubernetes client, never gets here)
        from nasblade_csi.provisioner import JOBS

        args.provision_jobs = tuple(j.strip() for j in args.provision_jobs.split(",") if j.strip()) or JOBS
        if set(args.provision_jobs) - set(JOBS):
            p.error(f"--provision-jobs: each of {', '.join(JOBS)}")
    try:
        from nasblade.csitopology import parse_segments

        args.topology = parse_segments(args.topology)
    except ValueError as exc:
        p.error(f"--topology: {exc}")
    if args.register_poll <= 0:
        p.error("--register-poll must be positive")
    args.topology_keys = topology_keys(args.topology_keys, p)
    if args.topology_keys and args.role == "controller":
        p.error("--topology-keys is the node role's (the controller's segments are --topology)")
    if not args.driver_name:
        from nasblade_csi.identity import DRIVER_NAME

        args.driver_name = DRIVER_NAME
    return args


def topology_keys(value: str, p: argparse.ArgumentParser) -> tuple[str, ...]:
    """``--topology-keys``: the comma-separated label keys, each once, in order."""
    keys = tuple(dict.fromkeys(k.strip() for k in value.split(",") if k.strip()))
    if keys:
        from nasblade.csitopology import check_key

        try:
            for key in keys:
                check_key(key, "--topology-keys")
        except ValueError as exc:
            p.error(str(exc))
    return keys


def exports(args: argparse.Namespace, context: dict[str, str]) -> Any:
    """Where volumes are served (``nasblade_csi.exports``): the DiskArray's file systems, or
    the fixed ``--volume-context``."""
    from nasblade_csi.exports import DiskArrayExports, Static

    if not args.diskarray:
        return Static(context)
    import pykube

    namespace, name = args.diskarray.split("/")
    return DiskArrayExports(pykube.HTTPClient(pykube.KubeConfig.from_env()), namespace=namespace, array=name,
                            group=args.cluster_group,
                            clients=tuple(c.strip() for c in args.export_clients.split(",") if c.strip()),
                            timeout=args.publish_timeout, control_token=_token(args))


def _token(args: argparse.Namespace) -> str:
    if args.token_file:
        with open(args.token_file) as f:
            return f.read().strip()
    return os.environ.get("NASBLADE_TOKEN", "")


STOP = threading.Event()
"""Set on SIGTERM/SIGINT: the provisioner's loop ends with the server."""


def serve(args: argparse.Namespace) -> grpc.Server:
    from nasblade_csi import proto

    _, pb_grpc = proto.load()
    from nasblade_csi.identity import Identity

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=args.workers))
    ready = lambda: True  # noqa: E731
    if args.role in ("controller", "all"):
        from nasblade_csi.array import Array
        from nasblade_csi.catalog import Catalog
        from nasblade_csi.controller import Controller

        control = ControlClient(args.array_api, _token(args))
        ctx = dict(kv.split("=", 1) for kv in args.volume_context)
        controller = Controller(Array(control, args.array_nbd, rate_limit=args.copy_rate_limit),
                                Catalog(control, args.array_nbd), context=ctx, snapshot_wait=args.snapshot_wait,
                                exports=exports(args, ctx), topology=args.topology)
        pb_grpc.add_ControllerServicer_to_server(controller, server)
        if args.provision:
            import pykube

            from nasblade_csi.provisioner import Provisioner

            provisioner = Provisioner(pykube.HTTPClient(pykube.KubeConfig.from_env()), controller,
                                      array=args.diskarray or "", interval=args.provision_interval,
                                      driver_name=args.driver_name, jobs=args.provision_jobs)
            threading.Thread(target=provisioner.run, args=(STOP,), name="provisioner", daemon=True).start()

        def ready() -> bool:
            control.array()
            return True
    if args.role in ("node", "all"):
        from nasblade_csi.node import Node

        node_labels = None
        if args.topology_keys:  # (else no Kubernetes client: the UML guest's node plugin has none)
            from nasblade_csi.registration import NodeLabels

            node_labels = NodeLabels(args.node_id)
        pb_grpc.add_NodeServicer_to_server(
            Node(args.node_id, topology_keys=args.topology_keys, node_labels=node_labels), server)
    pb_grpc.add_IdentityServicer_to_server(
        Identity(ready=ready, driver_name=args.driver_name, topology=bool(args.topology or args.topology_keys)),
        server)
    if args.endpoint.startswith("tcp://"):  # a test's guest reaches the controller plugin so
        server.add_insecure_port(args.endpoint[len("tcp://"):])
    elif args.endpoint.startswith("unix://"):
        path = args.endpoint[len("unix://"):]
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        if os.path.exists(path):
            os.unlink(path)  # left by a previous run: the kubelet and the sidecars expect this path
        server.add_insecure_port(f"unix://{path}")
    else:
        raise SystemExit(f"--endpoint must be unix:///PATH or tcp://HOST:PORT, got {args.endpoint!r}")
    server.start()
    return server


def setup_logging(args: argparse.Namespace) -> None:
    """``--log-format`` (``nasblade.logformat``, as every nasblade role) at ``--log-level``."""
    os.environ.setdefault("NASBLADE_LOG_LEVEL", args.log_level)
    logformat.configure(args.log_format, role=f"csi-{args.role}")  # json: basicConfig is then a no-op
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    setup_logging(args)
    server = serve(args)
    stop = STOP
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    registrations = None
    try:
        if args.registration_dir and args.role in ("node", "all"):
            from nasblade_csi.registration import Registrations

            registrations = Registrations(args.registration_dir, args.kubelet_endpoint or args.endpoint)
            wanted = registration_names(args)
            registrations.sync(wanted())
        print(json.dumps({"event": "ready", "role": "csi", "csiRole": args.role, "endpoint": args.endpoint,
                          "pid": os.getpid()}), flush=True)
        if registrations is not None and args.register_drivers_labelled:
            while not stop.wait(args.register_poll):  # the labelled CSIDriver objects, listed again
                registrations.sync(wanted())
        stop.wait()
    finally:
        if registrations is not None:
            registrations.close()  # the kubelet unregisters every driver
    server.stop(10).wait()
    return 0


def registration_names(args: argparse.Namespace) -> Callable[[], list[str]]:
    """The driver names the node plugin registers with the kubelet, listed again at each call:
    ``--register-driver`` and the CSIDriver objects ``--register-drivers-labelled`` selects, or
    ``--driver-name`` alone when neither is given."""
    static = list(args.register_driver)
    if not args.register_drivers_labelled:
        names = static or [args.driver_name]
        return lambda: names
    from nasblade_csi.registration import LabelledDrivers

    labelled = LabelledDrivers(args.register_drivers_labelled)
    return lambda: static + sorted(labelled() - set(static))


if __name__ == "__main__":
    sys.exit(main())
