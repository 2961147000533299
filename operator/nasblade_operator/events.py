"""Kubernetes Events for every significant action, with the reasons in one table.

Handlers call ``normal``/``warning`` with a reason from ``REASONS``; the Event goes to the
object (kopf posts it) and the same line to the operator log. Reasons are CamelCase as
``kubectl describe`` shows them.
"""

from __future__ import annotations

import logging

import kopf

logger = logging.getLogger("nasblade_operator")

REASONS = frozenset(
    {
        "InvalidSpec", "Created", "Updated", "WaitingForController", "LUsCreated", "ProgramSeeded",
        "ControllerUnavailable", "NoSpace", "ForeignData", "Ready", "DiskArrayMissing", "NoFreePortion",
        "BladeCreated", "BladeFailed", "BladeReplaced", "FailedOver", "GaveBack", "NoSurvivor",
        "Upgrading", "Upgraded", "HandedOver", "BackupSucceeded", "BackupFailed", "BackupDeferred",
        "BladeUnavailable", "DeletionBlocked", "Deleting", "DataRetained", "DataDeleted", "ScaledDown",
        "Moved", "MoveRefused", "DeviceFailed", "DeviceRebuilding", "DeviceRebuilt", "DataLost", "ChecksumErrors",
        "DeviceReplaced", "DeviceReplaceRefused", "DeviceReplaceDeferred", "Certificates", "FileSystemsChanged",
        "CsiRefused",
    }
)


def normal(body: kopf.Body, reason: str, message: str) -> None:
    _post(body, "Normal", reason, message)


def warning(body: kopf.Body, reason: str, message: str) -> None:
    _post(body, "Warning", reason, message)


def _post(body: kopf.Body, kind: str, reason: str, message: str) -> None:
    assert reason in REASONS, reason
    meta = body.get("metadata", {})
    logger.info("%s %s/%s %s: %s", kind, meta.get("namespace"), meta.get("name"), reason, message)
    kopf.event(body, type=kind, reason=reason, message=message)
