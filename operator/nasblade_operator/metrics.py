"""Prometheus metrics of the operator, served by ``start`` on ``NASBLADE_METRICS_PORT``.

Handlers increment these; ``kube.REQUESTS`` (API requests per verb) is exported through a
collector so the benchmark and dashboards see the same numbers.
"""

from __future__ import annotations

from collections.abc import Iterator

import prometheus_client as prom
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from nasblade_operator import kube

REGISTRY = prom.CollectorRegistry(auto_describe=True)

RECONCILES = prom.Counter(
    "nasblade_operator_reconciles", "Reconciles run, by resource kind", ["kind"], registry=REGISTRY
)
RECONCILE_ERRORS = prom.Counter(
    "nasblade_operator_reconcile_errors", "Reconciles that failed, by kind and reason", ["kind", "reason"], registry=REGISTRY
)
FAILOVERS = prom.Counter(
    "nasblade_operator_failovers", "File systems moved between blades, by reason", ["reason"], registry=REGISTRY
)
FAILOVER_SECONDS = prom.Histogram(
    "nasblade_operator_failover_seconds",
    "From the blade failure being noticed to the NFS Service selecting the survivor",
    buckets=(0.25, 0.5, 1, 2, 5, 10, 30, 60),
    registry=REGISTRY,
)
BACKUPS = prom.Counter(
    "nasblade_operator_backups", "Backups requested, by trigger and result", ["trigger", "result"], registry=REGISTRY
)
BACKUP_SECONDS = prom.Histogram(
    "nasblade_operator_backup_seconds", "Duration of backups", buckets=(0.5, 1, 5, 15, 60, 300), registry=REGISTRY
)
BLADES = prom.Gauge(
    "nasblade_operator_blades", "Blades per state, per ClusterGroup", ["namespace", "group", "state"], registry=REGISTRY
)


class _ApiRequests(Collector):
    def collect(self) -> Iterator[CounterMetricFamily]:
        c = CounterMetricFamily("nasblade_operator_api_requests", "Kubernetes API requests made, by verb", labels=["verb"])
        for verb, n in sorted(kube.REQUESTS.items()):
            c.add_metric([verb], n)
        yield c


REGISTRY.register(_ApiRequests())


#: Ports served by this process: prometheus_client's server thread outlives an operator run
#: (the tests start several in one process), so this is per process, not in ``state``.
_serving: set[int] = set()


def start(port: int, *, addr: str = "0.0.0.0") -> None:
    """Serve ``/metrics`` on ``addr:port`` in a background thread (0 disables; idempotent)."""
    if port and port not in _serving:
        prom.start_http_server(port, addr=addr, registry=REGISTRY)
        _serving.add(port)
