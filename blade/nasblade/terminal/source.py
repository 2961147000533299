"""What a data source offers the commands: the ``Source`` protocol and its small records.

Implemented by ``standalone.StandaloneSource`` (a ``nasblade up`` data directory) and
``kube.KubeSource`` (DiskArray / ClusterGroup resources). ``commands`` only talks to this
protocol, so every command works the same against both.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from nasblade.terminal.model import Backup, Event, Snapshot, VolumeList


@dataclass
class BackupRequest:
    """An on-demand backup that was asked for: which groups, and since when to look."""

    group: str
    groups: list[str]
    since: float
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class BackupProgress:
    done: bool
    succeeded: bool | None
    bytes_done: int
    bytes_total: int
    load: dict[str, Any]
    message: str
    copies: list[Backup] = field(default_factory=list)


class Source(Protocol):
    description: str

    def snapshot(self) -> Snapshot: ...

    def request_backup(self, group: str, *, cross_groups: list[str]) -> BackupRequest: ...

    def backup_progress(self, request: BackupRequest) -> BackupProgress: ...

    def remote_check(self, fs: str, *, to: str) -> dict[str, Any] | None: ...

    def move(self, fs: str, *, to: str, snapshot: Snapshot) -> dict[str, Any]: ...

    def move_refused(self, move: dict[str, Any]) -> str | None: ...

    def rollout(self, version: str, *, array: str | None, force: bool = False) -> dict[str, Any]: ...

    def events(self, snapshot: Snapshot) -> list[Event]: ...

    def volumes(self, snapshot: Snapshot) -> VolumeList: ...
