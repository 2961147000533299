"""Fixtures for the operator tests.

Unit tests (``test_spec.py``, ``test_builders.py``, ``test_plan.py``, ``test_conditions.py``)
need no fixture and no network. The tier-1 tests (``test_tier1_*.py``) use:

- ``tier1_cluster`` / ``use_tier1`` from tests/cluster/pytest_cluster.py: a private etcd +
  kube-apiserver + kube-controller-manager (no kubelet, no scheduler);
- ``crds`` (session): the CRDs of crds/ applied and Established;
- ``namespace``: a fresh namespace per test, deleted afterwards;
- ``kubelet``: ``podlife.FakeKubelet`` -- plays the kubelet for pods of that namespace (marks
  them Running/Ready with a 127.0.0.x IP) and lets a test fail or remove a pod;
- ``controller``: a real ``nasblade controller`` process on loopback with a 1 GiB sparse
  device; the operator is pointed at it through NASBLADE_ENDPOINT_OVERRIDES;
- ``blades``: ``fakeblade.FakeBlades`` -- an HTTP server speaking the blade management API
  (take over / release / backup) and recording every call, because blade pods do not really
  run in tier 1;
- ``operator``: the real operator (``kopf.testing.KopfRunner`` over
  ``nasblade_operator.handlers``) with those overrides; on exit the test checks that it exited
  cleanly and printed no Traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "cluster"))

pytest_plugins = ["pytest_cluster"]
