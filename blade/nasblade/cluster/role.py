"""``nasblade block-processor``: a blade's block processor, with its cluster member when given
``--cluster-config`` (``nasblade.cli`` runs this module for the role).

The block processor's program (``nasblade.blockproc.main``: its flags, its sockets, its ready
line) knows nothing of cluster groups; this module, which may import both, adds the
``--cluster-config`` flag and hands ``blockproc.main.run`` an ``extend`` hook that builds the
``ClusterMember`` (``nasblade.cluster.member``) on the same event loop and mounts its routes
(``nasblade.cluster.api``) on the management API. Without ``--cluster-config`` (or without
``--api-listen``, which the member needs for peers to reach it) it is the plain block processor.
"""

from __future__ import annotations

import argparse

from aiohttp import web

from nasblade.blockproc import main as blockproc_main
from nasblade.blockproc.core import BlockProcessor
from nasblade.cluster import api as cluster_api
from nasblade.cluster.config import load as load_config
from nasblade.cluster.member import ClusterMember
from nasblade.controller.asyncclient import AsyncControlClient


def add_arguments(parser: argparse.ArgumentParser) -> None:
    blockproc_main.add_arguments(parser)
    parser.add_argument("--cluster-config",
                        help="cluster-group JSON (nasblade.cluster.config): heartbeat watch, takeover, backups")


def run(args: argparse.Namespace) -> int:
    if not args.cluster_config:
        return blockproc_main.run(args)
    path = str(args.cluster_config)

    def member(bp: BlockProcessor, control: AsyncControlClient | None, app: web.Application,
               api_token: str | None) -> ClusterMember:
        if control is None:
            raise ValueError("cluster groups need the processor-information LU and the controller API")
        m = ClusterMember(bp, control, load_config(path), api_token=api_token, config_path=path)
        cluster_api.install(app, m)
        return m

    return blockproc_main.run(args, extend=member)
