"""One CSI driver name per DiskArray (``naming.csi_driver_name``, ``diskarray.csi``): the names,
their validation in the spec, and the objects the operator makes under them (no API server;
tests/operator/test_tier1_csi.py makes them on a real one)."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from nasblade_operator import naming
from nasblade_operator.diskarray import csi
from nasblade_operator.diskarray import spec as da_spec
from nasblade_operator.validation import InvalidSpec

NAME = re.compile(r"[a-z0-9]([a-z0-9.-]*[a-z0-9])?")


def raw(**csi_spec: Any) -> dict[str, Any]:
    return {"devices": {"count": 2, "size": "1Gi"}, "fileSystems": [],
            "csi": {"enabled": True, "clusterGroup": "g1", **csi_spec}}


def test_each_array_has_a_driver_name_of_its_own() -> None:
    assert naming.csi_driver_name("storage", "a1") == "a1.storage.nas.nasblade.io"
    names = {naming.csi_driver_name(ns, a) for ns in ("storage", "apps") for a in ("a1", "a2")}
    assert len(names) == 4
    # past 63 characters: as much of the array's name as fits, and a hash of namespace/array
    long_ns, long_array = "n" * 40, "a" * 40
    one, two = naming.csi_driver_name(long_ns, long_array), naming.csi_driver_name(long_ns + "x", long_array)
    assert len(one) == len(two) == 63 and one != two
    assert one.startswith("a" * 20) and one.endswith(".nas.nasblade.io") and NAME.fullmatch(one)
    assert naming.csi_driver_name("ns", "a" * 60).endswith(".nas.nasblade.io")
    assert naming.csi_driver_name("ns", "a" * 60) == naming.csi_driver_name("ns", "a" * 60)  # stable


def test_the_spec_may_name_the_driver_and_the_snapshot_deletion_policy() -> None:
    parsed = da_spec.parse(raw())
    assert csi.driver_name("storage", "a1", parsed) == "a1.storage.nas.nasblade.io"
    assert parsed.csi.snapshot_deletion_policy == "Delete"
    legacy = da_spec.parse(raw(driverName="nas.nasblade.io", snapshotDeletionPolicy="Retain"))
    assert csi.driver_name("storage", "a1", legacy) == "nas.nasblade.io"
    assert legacy.csi.snapshot_deletion_policy == "Retain"
    for bad in ("Nas.io", "-nas.io", "nas.io.", "x" * 64, "nas_io"):
        with pytest.raises(InvalidSpec) as exc:
            da_spec.parse(raw(driverName=bad))
        assert "spec.csi.driverName" in str(exc.value)
    with pytest.raises(InvalidSpec) as exc:
        da_spec.parse(raw(snapshotDeletionPolicy="Keep"))
    assert "spec.csi.snapshotDeletionPolicy" in str(exc.value)


def test_the_plugin_csidriver_and_snapshot_class_carry_the_arrays_name() -> None:
    parsed = da_spec.parse(raw(snapshotDeletionPolicy="Retain"))
    driver = csi.driver_name("storage", "a1", parsed)
    dep = csi.deployment("storage", "a1", parsed, image="nasblade:test", snapshotter="snap:test")
    args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--driver-name") + 1] == driver
    obj = csi.csi_driver("storage", "a1", driver)
    assert obj["metadata"]["name"] == driver
    labels = obj["metadata"]["labels"]
    assert labels[naming.L_CSI_DRIVER] == "true"  # what the node plugin registers
    assert labels[naming.L_ARRAY] == "a1" and labels["nasblade.io/namespace"] == "storage"
    assert obj["spec"] == {"attachRequired": False, "podInfoOnMount": False, "fsGroupPolicy": "None",
                           "volumeLifecycleModes": ["Persistent"]}
    vsc = csi.snapshot_class("storage", "a1", driver, deletion_policy=parsed.csi.snapshot_deletion_policy)
    assert (vsc["metadata"]["name"], vsc["driver"], vsc["deletionPolicy"]) == (driver, driver, "Retain")
    assert vsc["metadata"]["annotations"] == {"snapshot.storage.kubernetes.io/is-default-class": "true"}
    assert naming.L_CSI_DRIVER not in vsc["metadata"]["labels"]


def test_the_plugin_keeps_the_jobs_no_upstream_sidecar_does() -> None:
    assert csi.jobs() == ["provision", "delete", "resize", "exports"]
    assert csi.jobs(provisioner="p") == ["resize", "exports"]
    assert csi.jobs(resizer="r") == ["provision", "delete", "exports"]
    assert csi.jobs(provisioner="p", resizer="r") == ["exports"]
    parsed = da_spec.parse(raw())
    dep = csi.deployment("storage", "a1", parsed, image="nasblade:test", provisioner="prov:1", resizer="res:1")
    containers = dep["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["csi-controller", "csi-provisioner", "csi-resizer"]
    args = containers[0]["args"]
    assert args[args.index("--provision-jobs") + 1] == "exports"
    # the sidecars wait at least as long as the driver waits for a volume to be served
    assert "--timeout=150s" in containers[1]["args"] and "--timeout=150s" in containers[2]["args"]


def test_the_array_topology_is_checked_and_reaches_the_plugin() -> None:
    """``spec.csi.topology``: the segments the array is reachable from, checked by the driver's
    own rule (``nasblade.csitopology``) and passed to the plugin as ``--topology``."""
    zone = "topology.kubernetes.io/zone"
    parsed = da_spec.parse(raw(topology=[{zone: "a"}, {zone: "b", "example.com/rack": "r1"}]))
    assert parsed.csi.topology == ({zone: "a"}, {zone: "b", "example.com/rack": "r1"})
    args = csi.deployment("storage", "a1", parsed, image="nasblade:test")["spec"]["template"]["spec"][
        "containers"][0]["args"]
    assert json.loads(args[args.index("--topology") + 1]) == [{zone: "a"}, {"example.com/rack": "r1", zone: "b"}]
    plain = csi.deployment("storage", "a1", da_spec.parse(raw()), image="nasblade:test")
    assert "--topology" not in plain["spec"]["template"]["spec"]["containers"][0]["args"]
    for bad, where in [("zone-a", "spec.csi.topology"), ([{}], "spec.csi.topology[0]"),
                       ([{zone: "not a value!"}], "spec.csi.topology[0]"), ([{"Bad Key": "a"}], "spec.csi.topology[0]")]:
        with pytest.raises(InvalidSpec) as exc:
            da_spec.parse(raw(topology=bad))
        assert where in str(exc.value), (bad, str(exc.value))
