"""The topology rules (``nasblade.csitopology``) shared by the driver and the operator, the
``--topology`` argument, and the PersistentVolume node affinity the driver's own provisioner
writes from a volume's topology."""

from __future__ import annotations

import pytest
from csiharness import pb
from nasblade import csitopology
from nasblade_csi import main as csi_main
from nasblade_csi.provisioner import allowed_segments, persistent_volume

ZONE, REGION = "topology.kubernetes.io/zone", "topology.kubernetes.io/region"


def test_segments_are_parsed_and_checked() -> None:
    assert csitopology.parse_segments("") == ()
    assert csitopology.parse_segments(f'[{{"{ZONE}": "a"}}]') == ({ZONE: "a"},)
    for raw, match in [("{", "not JSON"), ("[]", "1 to 64"), ('{"a": "b"}', "list"), ("[{}]", "non-empty map"),
                       ('[{"bad key!": "a"}]', "not a label key"), (f'[{{"{ZONE}": ""}}]', "not a label value"),
                       (f'[{{"{ZONE}": 3}}]', "not a label value"),
                       (f'[{{"{ZONE}": "a"}}, {{"{ZONE}": "a"}}]', "twice")]:
        with pytest.raises(ValueError, match=match):
            csitopology.parse_segments(raw)


def test_a_segment_serves_the_nodes_that_agree_on_every_shared_key() -> None:
    a = {ZONE: "a"}
    assert csitopology.compatible(a, {ZONE: "a", REGION: "r"})
    assert not csitopology.compatible(a, {ZONE: "b", REGION: "r"})
    assert not csitopology.compatible(a, {REGION: "r"})  # disjoint keys tell nothing: no match
    assert csitopology.accessible([a, {ZONE: "b"}], []) == [a, {ZONE: "b"}]
    assert csitopology.accessible([a, {ZONE: "b"}], [{ZONE: "b"}, {ZONE: "c"}]) == [{ZONE: "b"}]
    assert csitopology.accessible([a], [{ZONE: "c"}]) == []


def test_the_topology_argument_is_refused_when_malformed(capsys: pytest.CaptureFixture[str]) -> None:
    base = ["--role", "controller", "--array-api", "http://x:1", "--array-nbd", "nbd://x:2"]
    assert csi_main.parse([*base, "--topology", f'[{{"{ZONE}": "a"}}]']).topology == ({ZONE: "a"},)
    with pytest.raises(SystemExit):
        csi_main.parse([*base, "--topology", "[{}]"])
    assert "--topology: segment 0 must be a non-empty map" in capsys.readouterr().err


def test_the_class_allowed_topologies_and_the_volume_node_affinity() -> None:
    sc = {"metadata": {"name": "nas"}, "allowedTopologies": [
        {"matchLabelExpressions": [{"key": ZONE, "values": ["a", "b"]}, {"key": REGION, "values": ["r"]}]}]}
    assert allowed_segments(sc) == [{ZONE: "a", REGION: "r"}, {ZONE: "b", REGION: "r"}]
    assert allowed_segments({"metadata": {"name": "x"}}) == []
    claim = {"metadata": {"name": "c", "namespace": "ns", "uid": "u-1"}, "spec": {"accessModes": ["ReadWriteMany"]}}
    vol = pb.Volume(volume_id="pv-1", capacity_bytes=1 << 26, accessible_topology=[
        pb.Topology(segments={ZONE: "a"}), pb.Topology(segments={ZONE: "b", REGION: "r"})])
    pv = persistent_volume(claim, sc, vol)
    assert pv["spec"]["nodeAffinity"] == {"required": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": ZONE, "operator": "In", "values": ["a"]}]},
        {"matchExpressions": [{"key": REGION, "operator": "In", "values": ["r"]},
                              {"key": ZONE, "operator": "In", "values": ["b"]}]}]}}
    assert "nodeAffinity" not in persistent_volume(claim, sc, pb.Volume(volume_id="pv-2", capacity_bytes=1))["spec"]
