"""Acceptance tests of the test clusters themselves (tier 1 and tier 2).

The fixtures come from tools/kube/pytest_cluster.py; other test folders get them the same
way (copy these three lines into their conftest.py):
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools" / "kube"))
from pytest_cluster import *  # noqa: F403 - fixtures: tier1_cluster, use_tier1, kwok, e2e_*


def _client(kubeconfig: str):  # type: ignore[no-untyped-def]
    from kubernetes import client, config

    return client.ApiClient(config.new_client_from_config(config_file=kubeconfig).configuration)


@pytest.fixture(scope="session")
def tier1_api(tier1_kubeconfig: str):  # type: ignore[no-untyped-def]
    """kubernetes.client.ApiClient for the tier-1 API server."""
    return _client(tier1_kubeconfig)


@pytest.fixture(scope="session")
def e2e_api(e2e_kubeconfig: str):  # type: ignore[no-untyped-def]
    """kubernetes.client.ApiClient for the end-to-end cluster."""
    return _client(e2e_kubeconfig)


def _namespace(api) -> Iterator[str]:  # type: ignore[no-untyped-def]
    from kubernetes import client

    name = f"t-{uuid.uuid4().hex[:8]}"
    core = client.CoreV1Api(api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    yield name
    core.delete_namespace(name, propagation_policy="Background")


@pytest.fixture()
def tier1_ns(tier1_api) -> Iterator[str]:  # type: ignore[no-untyped-def]
    yield from _namespace(tier1_api)


@pytest.fixture()
def e2e_ns(e2e_api) -> Iterator[str]:  # type: ignore[no-untyped-def]
    yield from _namespace(e2e_api)
