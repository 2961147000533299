"""The node plugin's topology (``NodeGetInfo``'s ``accessible_topology``, ``--topology-keys``):
the node's values of the topology keys among its Node object's labels, read at each call
(``nasblade_csi.registration.NodeLabels``), without an API server: a fake plays pykube's
client. No keys: no topology, and the API server is never asked (the UML guest's node plugin
has no Kubernetes client)."""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from nasblade_csi import main, proto, registration
from nasblade_csi.errors import CsiError
from nasblade_csi.node import Node
from nasblade_csi.registration import NodeLabels

pb, pb_grpc = proto.load()
REGION, ZONE = "topology.kubernetes.io/region", "topology.kubernetes.io/zone"
KEYS = (REGION, ZONE)


class Context:
    def abort(self, code: grpc.StatusCode, message: str) -> None:
        raise CsiError(code, message)


def node_info(node: Node) -> Any:
    return node.NodeGetInfo(pb.NodeGetInfoRequest(), Context())


class Labels:
    """A node's labels, counting the reads; ``fail``: the read raises it."""

    def __init__(self, labels: dict[str, str]) -> None:
        self.labels = labels
        self.reads = 0
        self.fail: Exception | None = None

    def __call__(self) -> dict[str, str]:
        self.reads += 1
        if self.fail is not None:
            raise self.fail
        return dict(self.labels)


def test_the_node_reports_its_values_of_the_keys_it_has_labels_for() -> None:
    labels = Labels({REGION: "eu", ZONE: "eu-1", "kubernetes.io/hostname": "n1"})
    node = Node("n1", topology_keys=KEYS, node_labels=labels)
    info = node_info(node)
    assert info.node_id == "n1"
    assert info.HasField("accessible_topology")
    assert dict(info.accessible_topology.segments) == {REGION: "eu", ZONE: "eu-1"}
    # partial: only the keys the node has a label for
    labels.labels = {ZONE: "eu-2"}
    info = node_info(node)
    assert dict(info.accessible_topology.segments) == {ZONE: "eu-2"}
    assert labels.reads == 2  # read at each call (each registration)


def test_a_node_with_none_of_the_labels_reports_no_topology() -> None:
    labels = Labels({"kubernetes.io/hostname": "n1"})
    info = node_info(Node("n1", topology_keys=KEYS, node_labels=labels))
    assert not info.HasField("accessible_topology")
    assert labels.reads == 1


def test_without_keys_no_topology_and_no_read() -> None:
    labels = Labels({ZONE: "eu-1"})
    info = node_info(Node("n1", node_labels=labels, max_volumes=7))
    assert not info.HasField("accessible_topology")
    assert info.max_volumes_per_node == 7
    assert labels.reads == 0
    assert not node_info(Node("n1")).HasField("accessible_topology")
    with pytest.raises(ValueError, match="node_labels"):
        Node("n1", topology_keys=KEYS)


def test_a_node_that_cannot_be_read_is_unavailable(caplog: pytest.LogCaptureFixture) -> None:
    labels = Labels({})
    labels.fail = PermissionError('nodes "n1" is forbidden: cannot get resource "nodes"')
    with pytest.raises(CsiError) as err:
        node_info(Node("n1", topology_keys=(ZONE,), node_labels=labels))
    assert err.value.code == grpc.StatusCode.UNAVAILABLE
    assert "cannot read the labels of node n1" in str(err.value) and "forbidden" in str(err.value)
    assert ZONE in str(err.value) and "cannot read the labels of node n1" in caplog.text


class FakeAPI:
    """pykube's HTTPClient as far as ``NodeLabels`` uses it."""

    def __init__(self, nodes: dict[str, dict[str, str]]) -> None:
        self.nodes = nodes
        self.urls: list[tuple[str, str]] = []

    def get(self, *, version: str, url: str) -> Any:
        self.urls.append((version, url))
        name = url.removeprefix("nodes/")
        status = 200 if name in self.nodes else 404
        body = {"metadata": {"name": name, "labels": self.nodes.get(name)}}
        return type("Response", (), {"status_code": status, "json": lambda _self: body})()

    def raise_for_status(self, response: Any) -> None:
        if response.status_code != 200:
            raise LookupError(f"{response.status_code}: not found")


def test_node_labels_get_the_node_by_name() -> None:
    made: list[FakeAPI] = []

    def client() -> FakeAPI:
        made.append(FakeAPI({"n1": {ZONE: "a"}, "n2": None}))  # type: ignore[dict-item]
        return made[-1]

    assert made == []  # no client until the first read
    assert NodeLabels("n1", client=client)() == {ZONE: "a"}
    assert made[0].urls == [("v1", "nodes/n1")]
    n2 = NodeLabels("n2", client=client)
    assert n2() == {} and n2() == {}  # a node without labels
    assert len(made) == 2 and len(made[1].urls) == 2  # one client per reader, kept
    with pytest.raises(LookupError):
        NodeLabels("gone", client=client)()


# ---------------------------------------------------------------- nasblade-csi --topology-keys


def parse(*argv: str) -> argparse.Namespace:
    return main.parse(["--role", "node", *argv])


def test_topology_keys_are_parsed_once_each_in_order() -> None:
    assert parse().topology_keys == ()
    assert parse("--topology-keys", "").topology_keys == ()
    assert parse("--topology-keys", f" {ZONE}, {REGION},{ZONE},").topology_keys == (ZONE, REGION)
    assert parse("--topology-keys=example.com/rack").topology_keys == ("example.com/rack",)


@pytest.mark.parametrize("argv", [
    ["--role", "node", "--topology-keys", "not a key"],
    ["--role", "node", "--topology-keys", "Example.com/rack"],
    ["--role", "controller", "--array-api", "http://c:8080", "--array-nbd", "nbd://c:10809",
     "--topology-keys", ZONE],
])
def test_bad_topology_keys_are_refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main.parse(argv)
    assert "--topology-keys" in capsys.readouterr().err


@pytest.fixture
def sockdir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="topo-", dir="/tmp"))  # a Unix socket's path is short
    yield d
    shutil.rmtree(d, ignore_errors=True)


def serve_node(sockdir: Path, *argv: str) -> tuple[grpc.Server, Any]:
    sock = sockdir / "csi.sock"
    server = main.serve(parse("--endpoint", f"unix://{sock}", "--node-id", "n1", *argv))
    channel = grpc.insecure_channel(f"unix://{sock}")
    return server, (channel, pb_grpc.NodeStub(channel))


def test_the_served_node_plugin_reads_its_node_only_with_keys(sockdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``serve``: without ``--topology-keys`` not even pykube is imported; with them, NodeGetInfo
    reads the Node named by ``--node-id``, and a failed read answers UNAVAILABLE."""
    monkeypatch.setitem(sys.modules, "pykube", None)  # any import of it fails
    apis: list[FakeAPI] = []
    monkeypatch.setattr(registration, "_in_cluster_client",
                        lambda: apis.append(FakeAPI({"n1": {ZONE: "z1", REGION: "r1"}})) or apis[-1])
    server, (channel, stub) = serve_node(sockdir)
    try:
        info = stub.NodeGetInfo(pb.NodeGetInfoRequest(), timeout=10)
        assert info.node_id == "n1" and not info.HasField("accessible_topology")
        assert apis == []
    finally:
        channel.close()
        server.stop(None).wait()

    server, (channel, stub) = serve_node(sockdir, "--topology-keys", ZONE)
    try:
        info = stub.NodeGetInfo(pb.NodeGetInfoRequest(), timeout=10)
        assert dict(info.accessible_topology.segments) == {ZONE: "z1"}
        assert apis[0].urls == [("v1", "nodes/n1")]
        del apis[0].nodes["n1"]
        with pytest.raises(grpc.RpcError) as err:
            stub.NodeGetInfo(pb.NodeGetInfoRequest(), timeout=10)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "cannot read the labels of node n1" in str(err.value.details())
    finally:
        channel.close()
        server.stop(None).wait()
