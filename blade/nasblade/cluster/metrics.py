"""The cluster member's part of the blade's Prometheus metrics (``GET /v1/metrics``).

``MemberCollector`` is added by ``nasblade.cluster.api.install`` to the collectors the block
processor renders after its own (``nasblade.blockproc.api.METRICS_EXTRA``,
``nasblade.blockproc.metrics``); it reads, at each scrape, the backup state of the group's
portion that the member already keeps (``nasblade.cluster.backups.Backups`` and the group
record of its ``GroupView``), labelled with the blade's ``group`` and ``blade`` like the rest.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from nasblade.blockproc.metrics import PREFIX, gauge
from nasblade.cluster.member import ClusterMember


class MemberCollector(Collector):
    def __init__(self, member: ClusterMember) -> None:
        self.member = member

    def collect(self) -> Iterator[Metric]:
        m = self.member
        me = [m.cfg.group, m.me]
        now = time.monotonic()
        yield gauge(f"{PREFIX}_backup_running", "1 while this blade copies portions into their backup areas",
                    me, 1.0 if m.backups.running else 0.0)
        last = m.backups.last_success(now)
        if last is not None:
            yield gauge(f"{PREFIX}_group_backup_age_seconds", "Seconds since the group's portion was last"
                        " backed up successfully (by any blade of the group)", me, now - last)
        own = [r for r in m.view.group.backups
               if r.get("kind", "backup") == "backup" and r.get("portion") == m.cfg.group]
        if own:
            yield gauge(f"{PREFIX}_group_backup_last_succeeded", "1 if the last recorded backup of the"
                        " group's portion succeeded, 0 if it failed", me,
                        1.0 if own[-1].get("result") == "succeeded" else 0.0)
