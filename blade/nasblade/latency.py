"""Latency histograms kept by the daemons that serve requests, exported as Prometheus histograms.

One ``Latencies`` per server: the RPC dispatcher of a file system (``nasblade.rpc.dispatch``,
keyed by program and procedure) and the controller's NBD server (``nasblade.controller.engine``,
keyed by LU and command). Each key's ``Figures`` counts requests, sums their time and counts
them in the buckets of ``BUCKETS``; the metrics modules (``nasblade.blockproc.metrics``,
``nasblade.controller.metrics``) turn them into histogram families at scrape time. Adding one
sample is a bisect and three additions, cheap enough for every request on the data path.
"""

from __future__ import annotations

import bisect
import dataclasses
import itertools
from collections.abc import Hashable

BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
"""Upper bounds (seconds) of the histogram's buckets; a last one, +Inf, is implied."""


@dataclasses.dataclass
class Figures:
    """Requests of one key: how many, their total time, and how many fell in each bucket of
    ``BUCKETS`` (``buckets[i]``: at most ``BUCKETS[i]`` and more than the bound before; the last
    entry: above every bound)."""

    count: int = 0
    seconds: float = 0.0
    buckets: list[int] = dataclasses.field(default_factory=lambda: [0] * (len(BUCKETS) + 1))

    def add(self, seconds: float) -> None:
        self.count += 1
        self.seconds += seconds
        self.buckets[bisect.bisect_left(BUCKETS, seconds)] += 1

    def cumulative(self) -> list[int]:
        """The bucket counts as Prometheus wants them: at or below each bound, +Inf last."""
        return list(itertools.accumulate(self.buckets))


class Latencies:
    """``Figures`` per key (a tuple of label values)."""

    def __init__(self) -> None:
        self.calls: dict[tuple[Hashable, ...], Figures] = {}

    def add(self, key: tuple[Hashable, ...], seconds: float) -> None:
        figures = self.calls.get(key)
        if figures is None:
            figures = self.calls[key] = Figures()
        figures.add(seconds)
