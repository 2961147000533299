"""``nasblade operator``: run the kopf operator (the ``operator`` role of the image).

Loads ``nasblade_operator.handlers`` and runs kopf with peering, so that of several replicas
only one is active: each replica starts with its own priority (``--priority``, random by
default) and kopf pauses every replica that sees a peer of higher priority in the
``ClusterKopfPeering`` object named by ``--peering`` (crds/kopf-peering.yaml).
"""

from __future__ import annotations

import argparse
import asyncio
import random

from nasblade_operator import settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-n", "--namespace", action="append", default=[],
                        help="watch only this namespace (repeatable; default: all namespaces)")
    parser.add_argument("--peering", default="nasblade", help="ClusterKopfPeering name for leader election")
    parser.add_argument("--standalone", action="store_true", help="no peering (a single replica, or tests)")
    parser.add_argument("--priority", type=int, default=None, help="peering priority (default: random)")
    parser.add_argument("--liveness", default="http://0.0.0.0:8082/healthz", help="liveness endpoint URL ('' to disable)")
    parser.add_argument("--verbose", action="store_true", help="debug logging")


def run(args: argparse.Namespace) -> int:
    import kopf

    from nasblade_operator import handlers

    settings.configure(settings.OperatorConfig.from_env())
    # kopf's log format for our loggers too (one handler); `nasblade --log-format json operator`
    json_logs = getattr(args, "log_format", "text") == "json"
    kopf.configure(verbose=args.verbose, log_format=kopf.LogFormat.JSON if json_logs else kopf.LogFormat.FULL)
    del handlers  # imported for its registrations
    asyncio.run(
        kopf.operator(
            clusterwide=not args.namespace,
            namespaces=args.namespace,
            standalone=args.standalone,
            peering_name=None if args.standalone else args.peering,
            priority=args.priority if args.priority is not None else random.randint(1, 1_000_000),
            liveness_endpoint=args.liveness or None,
        )
    )
    return 0
