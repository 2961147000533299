"""The operator's lean diff-base gives kopf exactly the essence kopf's own storage builds."""

from __future__ import annotations

import copy
from typing import Any

import kopf
from nasblade_operator.handlers import LeanDiffBaseStorage


def _body() -> dict[str, Any]:
    return {
        "apiVersion": "nasblade.io/v1alpha1", "kind": "DiskArray",
        "metadata": {
            "name": "a0", "namespace": "ns", "uid": "u-1", "generation": 3, "resourceVersion": "77",
            "labels": {"team": "storage"},
            "annotations": {"nasblade.io/last-handled-configuration": '{"spec": {}}',
                            "nasblade.io/reconcile": '{"started": "x"}',
                            "kubectl.kubernetes.io/last-applied-configuration": "{}",
                            "note": "kept"},
            "finalizers": ["nasblade.io/finalizer"],
            "managedFields": [{"manager": "kubectl", "fieldsV1": {"f:spec": {"f:devices": {}}}}],
        },
        "spec": {"devices": {"count": 2, "size": "1Gi"}, "fileSystems": [{"name": "fa", "size": "48Mi"}]},
        "status": {"conditions": [{"type": "Ready", "status": "True"}], "lus": [{"name": "fs-fa", "extents": [1, 2]}]},
    }


def test_lean_essence_equals_kopfs() -> None:
    raw = _body()
    ours = LeanDiffBaseStorage(prefix="nasblade.io", key="last-handled-configuration")
    theirs = kopf.AnnotationsDiffBaseStorage(prefix="nasblade.io", key="last-handled-configuration")
    essence = ours.build(body=kopf.Body(raw))
    assert essence == theirs.build(body=kopf.Body(copy.deepcopy(raw)))
    assert essence["spec"]["devices"]["count"] == 2 and "status" not in essence
    annotations = essence["metadata"]["annotations"]
    assert annotations["note"] == "kept" and "kubectl.kubernetes.io/last-applied-configuration" not in annotations
    assert raw == _body()  # the event's body is not changed


def test_lean_essence_is_a_copy() -> None:
    raw = _body()
    essence = LeanDiffBaseStorage(prefix="nasblade.io", key="last-handled-configuration").build(body=kopf.Body(raw))
    essence["spec"]["devices"]["count"] = 9
    assert raw["spec"]["devices"]["count"] == 2


def test_extra_fields_fall_back_to_kopf() -> None:
    raw = _body()
    ours = LeanDiffBaseStorage(prefix="nasblade.io", key="last-handled-configuration")
    theirs = kopf.AnnotationsDiffBaseStorage(prefix="nasblade.io", key="last-handled-configuration")
    fields = [("status", "conditions")]
    assert ours.build(body=kopf.Body(raw), extra_fields=fields) == theirs.build(body=kopf.Body(raw), extra_fields=fields)
