"""Spec parsing and validation of both resources (no API server)."""

from __future__ import annotations

from typing import Any

import pytest
from nasblade import units
from nasblade_operator.clustergroup import spec as cg_spec
from nasblade_operator.diskarray import spec as da_spec
from nasblade_operator.validation import InvalidSpec


def array(**over: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "devices": {"count": 2, "size": "1Gi"},
        "fileSystems": [
            {"name": "home", "size": "256Mi", "clusterGroup": "g1",
             "exports": [{"clients": ["10.0.0.0/8"], "access": "rw", "squash": "root"}]},
        ],
    }
    spec.update(over)
    return spec


def paths(exc: pytest.ExceptionInfo[InvalidSpec]) -> list[str]:
    return [e.path for e in exc.value.errors]


def test_quantities_and_durations() -> None:
    assert units.parse_size("1Gi", kubernetes=True) == 2**30
    assert units.parse_size("500M", kubernetes=True) == 500_000_000
    assert units.parse_size("1.5Ki", kubernetes=True) == 1536
    assert units.parse_size("100m", kubernetes=True) == 1
    assert units.parse_duration("200ms") == pytest.approx(0.2)
    assert units.parse_duration("1h30m") == 5400
    with pytest.raises(units.UnitError):
        units.parse_size("ten gigs", kubernetes=True)
    with pytest.raises(units.UnitError):
        units.parse_duration("5 minutes")


def test_diskarray_defaults() -> None:
    s = da_spec.parse(array())
    assert s.devices.count == 2 and s.devices.size == 2**30
    assert s.areas.portions == 8 and s.areas.portion_size == 8 * 2**20
    assert s.deletion_policy == "Retain" and s.software_version == "0.1.0"
    assert s.file_systems[0].exports[0].squash == "root"
    assert s.file_systems_of("g1")[0].name == "home" and s.file_systems_of("g2") == ()


def test_diskarray_errors_name_the_field() -> None:
    bad = array(
        devices={"count": 0, "size": "lots"},
        deletionPolicy="Shred",
        fileSystems=[
            {"name": "Home", "size": "0", "clusterGroup": "",
             "exports": [{"clients": ["10.0.0.0/33"], "access": "rwx"}]},
        ],
    )
    with pytest.raises(InvalidSpec) as exc:
        da_spec.parse(bad)
    got = paths(exc)
    for p in ("spec.devices.count", "spec.devices.size", "spec.deletionPolicy", "spec.fileSystems[0].name",
              "spec.fileSystems[0].size", "spec.fileSystems[0].clusterGroup",
              "spec.fileSystems[0].exports[0].clients[0]", "spec.fileSystems[0].exports[0].access"):
        assert p in got, (p, got)
    assert "10.0.0.0/33" in str(exc.value)


def test_diskarray_refuses_what_does_not_fit() -> None:
    with pytest.raises(InvalidSpec) as exc:
        da_spec.parse(array(fileSystems=[{"name": "big", "size": "3Gi", "clusterGroup": "g1"}]))
    assert paths(exc) == ["spec.fileSystems"]
    assert "add devices" in str(exc.value)


def test_diskarray_duplicate_file_system_and_small_portions() -> None:
    fs = {"name": "a", "size": "64Mi", "clusterGroup": "g"}
    with pytest.raises(InvalidSpec) as exc:
        da_spec.parse(array(fileSystems=[fs, fs], areas={"processorInfoSize": "4Mi", "portions": 8, "backupSize": "2Mi"}))
    assert set(paths(exc)) == {"spec.fileSystems[1].name", "spec.areas.processorInfoSize", "spec.areas.backupSize"}


def test_diskarray_refuses_a_file_system_too_small_to_format() -> None:
    with pytest.raises(InvalidSpec) as exc:
        da_spec.parse(array(fileSystems=[{"name": "tiny", "size": "32Mi", "clusterGroup": "g1"}]))
    assert paths(exc) == ["spec.fileSystems[0].size"]
    assert "at least 48Mi" in str(exc.value)


def test_clustergroup_defaults_and_errors() -> None:
    s = cg_spec.parse({"diskArrayRef": {"name": "a1"}}, name="g1")
    assert s.blades.count == 2 and s.heartbeat.failure_timeout == 3.0
    assert s.failover.policy == "Automatic" and s.backup.interval == 3600 and s.backup.targets == ()
    with pytest.raises(InvalidSpec) as exc:
        cg_spec.parse(
            {"diskArrayRef": {}, "heartbeat": {"interval": "1s", "failureTimeout": "2s"},
             "failover": {"policy": "Sometimes"},
             "backup": {"interval": "5s", "maxAge": "1s", "targets": ["g1", "g2", "g2"], "loadThreshold": 101}},
            name="g1",
        )
    assert set(paths(exc)) == {
        "spec.diskArrayRef.name", "spec.heartbeat.failureTimeout", "spec.failover.policy", "spec.backup.interval",
        "spec.backup.maxAge", "spec.backup.targets[0]", "spec.backup.targets[2]", "spec.backup.loadThreshold",
    }
