"""The controller's own Prometheus metrics: ``GET /v1/metrics`` of the control API.

The operator already exports what it polls from controllers (``nasblade_operator.datametrics``:
load, cache, device health per DiskArray); these are the figures only the controller has, read
at scrape time from the engine (``nasblade.controller.engine``) and the array
(``nasblade.controller.array``): per-LU I/O counters since the controller started, the cache,
the queue, and each device's state and error counters. Prometheus scrapes them with the
control API's token (``authorization: {credentials_file: ...}``, docs/control-api.md).

``render`` builds one exposition per scrape through ``prometheus_client``'s collector
interface (one registry per call, nothing global), so the figures are never stale and the
controller keeps no second copy of them.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from nasblade.controller.engine import Engine

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_PREFIX = "nasblade_controller"


class _EngineCollector(Collector):
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def collect(self) -> Iterator[Metric]:
        e = self.engine
        lus = e.array.state.lus
        size = GaugeMetricFamily(f"{_PREFIX}_lu_size_bytes", "Size of the LU", labels=["lu"])
        names = ("reads", "writes", "read_bytes", "written_bytes")
        helps = ("Read requests served", "Write requests served", "Bytes read", "Bytes written")
        counters = [CounterMetricFamily(f"{_PREFIX}_lu_{n}", h, labels=["lu"]) for n, h in zip(names, helps, strict=True)]
        for name, lu in sorted(lus.items()):
            size.add_metric([name], lu.size)
            totals = e.load.totals.get(name, [0, 0, 0, 0])
            for family, value in zip(counters, totals, strict=True):
                family.add_metric([name], value)
        yield size
        yield from counters
        c = e.cache
        for name, help_, value in (
            ("cache_size_bytes", "Capacity of the write-back cache", c.capacity),
            ("cache_used_bytes", "Bytes held in the cache", c.used),
            ("cache_dirty_bytes", "Bytes in the cache not yet on the devices", c.dirty_bytes),
            ("requests_in_flight", "Requests being served now", e.load.inflight),
        ):
            yield GaugeMetricFamily(f"{_PREFIX}_{name}", help_, value=value)
        yield CounterMetricFamily(f"{_PREFIX}_cache_hits", "Reads served from the cache", value=c.stats.hits)
        yield CounterMetricFamily(f"{_PREFIX}_cache_misses", "Reads that went to the devices", value=c.stats.misses)
        state = GaugeMetricFamily(f"{_PREFIX}_device_state", "1 for the device's current state",
                                  labels=["device", "state"])
        errors = CounterMetricFamily(f"{_PREFIX}_device_errors", "I/O and checksum errors of a device",
                                     labels=["device", "kind"])
        for d in e.array.devices:
            for s in ("ok", "rebuilding", "failed"):
                state.add_metric([str(d.index), s], 1.0 if d.state == s else 0.0)
            for kind, value in (("read", d.read_errors), ("write", d.write_errors), ("checksum", d.csum_errors)):
                errors.add_metric([str(d.index), kind], value)
        yield state
        yield errors


def render(engine: Engine) -> bytes:
    """One Prometheus text exposition of ``engine``'s figures, as of now."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_EngineCollector(engine))
    return generate_latest(registry)
