"""The controller's own Prometheus metrics: ``GET /v1/metrics`` of the control API.

The operator already exports what it polls from controllers (``nasblade_operator.datametrics``:
load, cache, device health per DiskArray); these are the figures only the controller has, read
at scrape time from the engine (``nasblade.controller.engine``) and the array
(``nasblade.controller.array``): per-LU I/O counters since the controller started, the cache,
the queue, how long NBD requests took per LU and command (a histogram, ``nasblade.latency``),
each device's size, state and error counters, the array's capacity for LUs after its
protection overhead and what of it is still free, and the copy jobs (running, finished, failed;
bytes done and to do of those running). Prometheus scrapes them with the
control API's token (``authorization: {credentials_file: ...}``, docs/control-api.md).

``render`` builds one exposition per scrape through ``prometheus_client``'s collector
interface (one registry per call, nothing global), so the figures are never stale and the
controller keeps no second copy of them.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from nasblade import latency
from nasblade.controller.engine import Engine

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_PREFIX = "nasblade_controller"
FAMILIES = {f"{_PREFIX}_{name}": kind for name, kind in (
    ("lu_size_bytes", "gauge"), ("lu_reads", "counter"), ("lu_writes", "counter"), ("lu_read_bytes", "counter"),
    ("lu_written_bytes", "counter"), ("request_seconds", "histogram"), ("array_capacity_bytes", "gauge"),
    ("array_free_bytes", "gauge"), ("copy_jobs", "gauge"), ("copy_job_done_bytes", "gauge"),
    ("copy_job_total_bytes", "gauge"), ("cache_size_bytes", "gauge"), ("cache_used_bytes", "gauge"),
    ("cache_dirty_bytes", "gauge"), ("requests_in_flight", "gauge"), ("cache_hits", "counter"),
    ("cache_misses", "counter"), ("device_size_bytes", "gauge"), ("device_state", "gauge"),
    ("device_errors", "counter"))}
"""Every family a scrape carries and its type (what the chart's alerts may use; the tests hold
``render`` to it)."""


class _EngineCollector(Collector):
    def __init__(self, engine: Engine, jobs: Sequence[Mapping[str, Any]]) -> None:
        self.engine = engine
        self.jobs = jobs

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
        seconds = HistogramMetricFamily(f"{_PREFIX}_request_seconds", "Time from an NBD request's arrival to"
                                        " its reply, by LU and command", labels=["lu", "op"])
        bounds = [str(float(b)) for b in latency.BUCKETS] + ["+Inf"]
        for (lu_name, op), f in sorted(e.load.latency.calls.items(), key=lambda kv: str(kv[0])):
            if lu_name in lus:
                seconds.add_metric([str(lu_name), str(op)], buckets=list(zip(bounds, f.cumulative(), strict=True)),
                                   sum_value=f.seconds)
        yield seconds
        yield GaugeMetricFamily(f"{_PREFIX}_array_capacity_bytes", "What LUs can be given in all, after the"
                                " protection overhead", value=sum(e.array.usable_bytes()))
        yield GaugeMetricFamily(f"{_PREFIX}_array_free_bytes", "What new or grown LUs can still be given",
                                value=sum(e.array.free_bytes()))
        jobs = GaugeMetricFamily(f"{_PREFIX}_copy_jobs", "Copy jobs the controller knows, by state",
                                 labels=["state"])
        job_done = GaugeMetricFamily(f"{_PREFIX}_copy_job_done_bytes", "Bytes a running copy job has copied",
                                     labels=["job", "source", "target"])
        job_total = GaugeMetricFamily(f"{_PREFIX}_copy_job_total_bytes", "Bytes a running copy job copies in all",
                                      labels=["job", "source", "target"])
        by_state = {"running": 0, "succeeded": 0, "failed": 0, "cancelled": 0}
        for j in self.jobs:
            by_state[str(j["state"])] = by_state.get(str(j["state"]), 0) + 1
            if j["state"] == "running":
                key = [str(j["id"]), str(j["source"]), str(j["target"])]
                job_done.add_metric(key, j["bytesDone"])
                job_total.add_metric(key, j["bytesTotal"])
        for st, n in sorted(by_state.items()):
            jobs.add_metric([st], n)
        yield jobs
        yield job_done
        yield job_total
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
        dev_size = GaugeMetricFamily(f"{_PREFIX}_device_size_bytes", "Size of the device", labels=["device"])
        errors = CounterMetricFamily(f"{_PREFIX}_device_errors", "I/O and checksum errors of a device",
                                     labels=["device", "kind"])
        for d in e.array.devices:
            dev_size.add_metric([str(d.index)], d.size)
            for s in ("ok", "rebuilding", "failed"):
                state.add_metric([str(d.index), s], 1.0 if d.state == s else 0.0)
            for kind, value in (("read", d.read_errors), ("write", d.write_errors), ("checksum", d.csum_errors)):
                errors.add_metric([str(d.index), kind], value)
        yield dev_size
        yield state
        yield errors


def render(engine: Engine, jobs: Sequence[Mapping[str, Any]] = ()) -> bytes:
    """One Prometheus text exposition of ``engine``'s figures, as of now; ``jobs``: the copy
    engine's jobs (``Job.to_json``)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_EngineCollector(engine, jobs))
    return generate_latest(registry)
