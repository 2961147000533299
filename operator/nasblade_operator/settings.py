"""Operator settings, read once from the environment at start-up.

``main.py`` builds an ``OperatorConfig`` and installs it with ``configure``; the handlers, the
ClusterGroup daemon and ``endpoints`` read it through ``current()``. Tests build their own
config and pass the same variables to the operator process.

Variables:
  NASBLADE_IMAGE                 image of every role (default nasblade/nasblade:<package version>)
  NASBLADE_ENDPOINT_OVERRIDES    JSON {"<namespace>/<array>": {"api": URL, "nbd": "host:port"},
                                 "<namespace>/<pod>": {"blade": URL}, "*": {...}} -- where the
                                 operator reaches controllers and blades instead of cluster DNS
                                 (tests run real processes on localhost; no pod really runs).
  NASBLADE_METRICS_PORT          Prometheus endpoint port, 0 to disable (default 8081)
  NASBLADE_STATUS_INTERVAL       seconds between status refreshes (default 10)
  NASBLADE_RETRY_DELAY           seconds before retrying a step that waits on something (default 5)
  NASBLADE_CLUSTER_DOMAIN        cluster DNS suffix (default svc; e.g. svc.cluster.local)
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from importlib import metadata
from typing import Any


def _package_version() -> str:
    try:
        return metadata.version("nasblade")
    except metadata.PackageNotFoundError:
        return "0.0.0"


@dataclasses.dataclass(frozen=True)
class OperatorConfig:
    image: str
    endpoint_overrides: Mapping[str, Mapping[str, str]]
    metrics_port: int = 8081
    status_interval: float = 10.0
    retry_delay: float = 5.0
    cluster_domain: str = "svc"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> OperatorConfig:
        e = os.environ if env is None else env
        raw = e.get("NASBLADE_ENDPOINT_OVERRIDES", "").strip()
        overrides: Any = json.loads(raw) if raw else {}
        if not isinstance(overrides, dict):
            raise ValueError("NASBLADE_ENDPOINT_OVERRIDES must be a JSON object")
        return cls(
            image=e.get("NASBLADE_IMAGE") or f"nasblade/nasblade:{_package_version()}",
            endpoint_overrides=overrides,
            metrics_port=int(e.get("NASBLADE_METRICS_PORT", "8081")),
            status_interval=float(e.get("NASBLADE_STATUS_INTERVAL", "10")),
            retry_delay=float(e.get("NASBLADE_RETRY_DELAY", "5")),
            cluster_domain=e.get("NASBLADE_CLUSTER_DOMAIN", "svc"),
        )


_current: OperatorConfig | None = None


def configure(config: OperatorConfig) -> None:
    """Install ``config`` as the process-wide settings."""
    global _current
    _current = config


def current() -> OperatorConfig:
    """The installed settings; read from the environment on first use."""
    global _current
    if _current is None:
        _current = OperatorConfig.from_env()
    return _current
