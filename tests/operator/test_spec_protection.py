"""DiskArray ``spec.devices.protection``: the device-count rule, capacity after the copies,
the controller flag, and the CRD's schema and CEL rule saying the same."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from nasblade_operator.diskarray import builders
from nasblade_operator.diskarray import spec as da_spec
from nasblade_operator.validation import InvalidSpec

ROOT = Path(__file__).resolve().parents[2]


def array(devices: dict[str, Any], fs_size: str = "256Mi") -> dict[str, Any]:
    return {"devices": devices,
            "fileSystems": [{"name": "home", "size": fs_size, "clusterGroup": "g1",
                             "exports": [{"clients": ["10.0.0.0/8"], "access": "rw", "squash": "root"}]}]}


def test_protection_rules() -> None:
    assert da_spec.parse(array({"count": 2, "size": "1Gi"})).devices.protection == "none"
    assert da_spec.parse(array({"count": 4, "size": "1Gi", "protection": "mirror"})).devices.protection == "mirror-2"
    with pytest.raises(InvalidSpec) as err:
        da_spec.parse(array({"count": 2, "size": "1Gi", "protection": "mirror-3"}))
    assert [e.path for e in err.value.errors] == ["spec.devices.protection"]
    assert "multiple of 3 devices" in str(err.value)
    with pytest.raises(InvalidSpec):
        da_spec.parse(array({"count": 2, "size": "1Gi", "protection": "raid6"}))


@pytest.mark.parametrize(("level", "fewest"), [("parity-1", 3), ("parity-2", 4)])
def test_parity_rules(level: str, fewest: int) -> None:
    assert da_spec.parse(array({"count": fewest, "size": "1Gi", "protection": level})).devices.protection == level
    assert da_spec.parse(array({"count": 7, "size": "1Gi", "protection": level})).devices.protection == level
    with pytest.raises(InvalidSpec) as err:
        da_spec.parse(array({"count": fewest - 1, "size": "1Gi", "protection": level}))
    assert [e.path for e in err.value.errors] == ["spec.devices.protection"]
    assert f"at least {fewest} devices" in str(err.value)
    with pytest.raises(InvalidSpec):
        da_spec.parse(array({"count": 5, "size": "1Gi", "protection": "parity-3"}))


def test_capacity_with_parity_counts_the_data_devices() -> None:
    none = da_spec.parse(array({"count": 4, "size": "1Gi"}))
    p1 = da_spec.parse(array({"count": 4, "size": "1Gi", "protection": "parity-1"}))
    p2 = da_spec.parse(array({"count": 4, "size": "1Gi", "protection": "parity-2"}))
    assert p1.capacity * 4 == none.capacity * 3 and p2.capacity * 2 == none.capacity


def test_capacity_counts_one_copy() -> None:
    none = da_spec.parse(array({"count": 2, "size": "1Gi"}))
    mirror = da_spec.parse(array({"count": 2, "size": "1Gi", "protection": "mirror"}))
    assert mirror.capacity * 2 == none.capacity
    da_spec.parse(array({"count": 2, "size": "1Gi"}, fs_size="1500Mi"))
    with pytest.raises(InvalidSpec, match="protection mirror-2"):
        da_spec.parse(array({"count": 2, "size": "1Gi", "protection": "mirror"}, fs_size="1500Mi"))


def test_controller_gets_the_level() -> None:
    spec = da_spec.parse(array({"count": 2, "size": "1Gi", "protection": "mirror"}))
    sts = builders.controller_statefulset("a", spec, image="img")
    args = sts["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--protection") + 1] == "mirror-2"


def test_crd_schema() -> None:
    for path in (ROOT / "crds/diskarray.yaml", ROOT / "charts/nasblade/files/crds/diskarray.yaml"):
        crd = yaml.safe_load(path.read_text())
        devices = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["devices"]
        assert devices["properties"]["protection"]["enum"] == ["none", "mirror", "mirror-2", "mirror-3",
                                                               "parity-1", "parity-2"]
        rules = [r["rule"] for r in devices["x-kubernetes-validations"]]
        assert any("protection" in r and "mirror-3" in r for r in rules)
        assert any("parity-2" in r and "self.count >= " in r for r in rules)
