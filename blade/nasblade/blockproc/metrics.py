"""The blade's own Prometheus metrics: ``GET /v1/metrics`` of the blade management API.

Served by the block processor (``nasblade.blockproc.api``) with the blade API's token, like
every route but ``/healthz``. The figures are read at scrape time from where they live, as the
controller's (``nasblade.controller.metrics``) are:

- from the ``BlockProcessor`` (``nasblade.blockproc.core``): the file systems this blade serves
  (the file processor's last status) and may serve, the takeovers it performed, the age of the
  last heartbeat it stored, whether it failed, which processor-information area it uses;
- from the file processor, asked over its control socket at each scrape
  (``BlockProcessor.file_processor_calls`` → ``FileProcessor.call_stats``): the RPC calls per
  file system, program and procedure, counted with their latency buckets by the dispatcher
  (``nasblade.latency``), the client connections, and each file system's size, free space and
  files (what NFS FSSTAT answers);
- from what runs beside the block processor (the cluster member): its own collectors, handed in
  as ``extra`` (``nasblade.cluster.metrics``: backup state of the group's portion).

Every family is labelled with the blade's ``group`` and ``blade`` (and ``fs`` where it is about
one file system). ``render`` builds one exposition per scrape on a registry of its own (nothing
global), so no figure is copied or kept twice.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from nasblade.blockproc.core import BlockProcessor

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PREFIX = "nasblade_blade"
BLADE_LABELS = ["group", "blade"]
FAMILIES = {f"{PREFIX}_{name}": kind for name, kind in (
    ("filesystem_served", "gauge"), ("takeovers", "counter"), ("heartbeat_stored_age_seconds", "gauge"),
    ("failed", "gauge"), ("procinfo_area_active", "gauge"), ("file_processor_up", "gauge"),
    ("nfs_clients", "gauge"), ("filesystem_size_bytes", "gauge"), ("filesystem_free_bytes", "gauge"),
    ("filesystem_files", "gauge"), ("nfs_calls", "counter"), ("nfs_call_seconds", "histogram"))}
"""The block processor's own families and their types (``extra`` collectors add theirs; the
chart's alerts may use these; the tests hold ``render`` to it)."""


def gauge(name: str, help_: str, blade: list[str], value: float) -> GaugeMetricFamily:
    """A one-sample gauge labelled with ``blade`` (``[group, blade]``)."""
    family = GaugeMetricFamily(name, help_, labels=BLADE_LABELS)
    family.add_metric(blade, value)
    return family


class _BladeCollector(Collector):
    def __init__(self, bp: BlockProcessor, *, calls: dict[str, Any] | None, now: float) -> None:
        self.bp = bp
        self.calls = calls
        self.now = now

    def collect(self) -> Iterator[Metric]:
        bp, s = self.bp, self.bp.settings
        me = [s.group, s.blade]
        st = bp.last_status
        served = set(st.file_systems) if st is not None else set()
        serving = GaugeMetricFamily(f"{PREFIX}_filesystem_served",
                                    "1 if this blade serves the file system now, 0 if it may serve it",
                                    labels=[*BLADE_LABELS, "fs"])
        takeovers = CounterMetricFamily(f"{PREFIX}_takeovers", "File-system takeovers this blade performed"
                                        " (new epoch) since it started", labels=[*BLADE_LABELS, "fs"])
        for fs in sorted(served | set(s.fs_specs) | set(bp.takeovers)):
            serving.add_metric([*me, fs], 1.0 if fs in served else 0.0)
            takeovers.add_metric([*me, fs], bp.takeovers[fs])
        yield serving
        yield takeovers
        if st is not None:
            yield gauge(f"{PREFIX}_heartbeat_stored_age_seconds", "Seconds since the heartbeat last stored in"
                        " this blade's slot", me, self.now - st.heartbeat_time)
        yield gauge(f"{PREFIX}_failed", "1 if this blade gave itself up (its file processor lost a file"
                    " system)", me, 1.0 if bp.failed is not None else 0.0)
        area = GaugeMetricFamily(f"{PREFIX}_procinfo_area_active", "1 for the processor-information area"
                                 " this blade uses", labels=[*BLADE_LABELS, "area"])
        for name in ("primary", "backup"):
            area.add_metric([*me, name], 1.0 if bp.active_area == name else 0.0)
        yield area
        yield gauge(f"{PREFIX}_file_processor_up", "1 if the file processor answered this scrape", me,
                    0.0 if self.calls is None else 1.0)
        if self.calls is not None:
            yield from _call_families(self.calls, me)


def _call_families(calls: dict[str, Any], me: list[str]) -> Iterator[Metric]:
    """The file processor's ``call_stats`` JSON as Prometheus families."""
    bounds = [str(float(b)) for b in calls["latencyBuckets"]] + ["+Inf"]
    labels = [*BLADE_LABELS, "fs", "program", "procedure"]
    clients = GaugeMetricFamily(f"{PREFIX}_nfs_clients", "Client connections to the file system's"
                                " NFS, MOUNT and portmapper ports", labels=[*BLADE_LABELS, "fs"])
    count = CounterMetricFamily(f"{PREFIX}_nfs_calls", "RPC calls executed (NFS, MOUNT, NLM, NSM,"
                                " portmapper), by procedure", labels=labels)
    latency = HistogramMetricFamily(f"{PREFIX}_nfs_call_seconds", "Time the file processor took to"
                                    " execute a call and encode its reply (a reply held for the group"
                                    " commit waits longer)", labels=labels)
    size = GaugeMetricFamily(f"{PREFIX}_filesystem_size_bytes", "Data capacity of the file system",
                             labels=[*BLADE_LABELS, "fs"])
    free = GaugeMetricFamily(f"{PREFIX}_filesystem_free_bytes", "Free data capacity of the file system",
                             labels=[*BLADE_LABELS, "fs"])
    files = GaugeMetricFamily(f"{PREFIX}_filesystem_files", "Files, directories and links in the file system",
                              labels=[*BLADE_LABELS, "fs"])
    for fs, figures in sorted(calls["fileSystems"].items()):
        clients.add_metric([*me, fs], figures["clients"])
        if "sizeBytes" in figures:
            size.add_metric([*me, fs], figures["sizeBytes"])
            free.add_metric([*me, fs], figures["freeBytes"])
            files.add_metric([*me, fs], figures["files"])
        for c in figures["calls"]:
            key = [*me, fs, c["program"], c["procedure"]]
            count.add_metric(key, c["count"])
            latency.add_metric(key, buckets=list(zip(bounds, c["buckets"], strict=True)), sum_value=c["seconds"])
    yield clients
    yield size
    yield free
    yield files
    yield count
    yield latency


def render(bp: BlockProcessor, *, calls: dict[str, Any] | None, now: float,
           extra: Sequence[Collector] = ()) -> bytes:
    """One Prometheus text exposition of the blade as of ``now`` (wall-clock seconds).

    ``calls``: the file processor's ``call_stats`` (``None``: it did not answer);
    ``extra``: collectors of what runs beside the block processor (the cluster member).
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_BladeCollector(bp, calls=calls, now=now))
    for collector in extra:
        registry.register(collector)
    return generate_latest(registry)
