"""A device of a mirrored array fails and is rebuilt: the real operator shows it in the DiskArray
(status.devices, status.redundancy, the Degraded condition, Events) -- tier 1: the real API
server, a real ``nasblade controller`` with two mirrored devices (``--protection mirror-2``),
the device failed through the controller's admin API and replaced through the DiskArray's
``nasblade.io/replace-device`` annotation (the operator calls the controller with the admin
token from the array's Secret)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Controller, Kubectl, assert_clean, start_controller
from test_tier1_operator import array, condition, events, wait_until

pytestmark = pytest.mark.tier1


@pytest.fixture()
def controller(tmp_path: Path) -> Iterator[Controller]:
    """The controller of this module: two 1 GiB devices, one mirror set."""
    yield from start_controller(tmp_path, devices=2, args=("--protection", "mirror-2"))


def test_a_failed_device_shows_in_the_diskarray_until_it_is_rebuilt(
    kubectl: Kubectl, operator: Callable[[], Any], controller: Controller, token_secret: Callable[[str], None],
) -> None:
    from nasblade.controller.apiclient import ControlClient

    admin = ControlClient(controller.api, controller.token)  # the fixture's token is the admin token too
    token_secret("a1")
    kubectl("patch", "secret", "a1-control-token", "-p", json.dumps({"stringData": {"admin-token": controller.token}}))

    def status() -> dict[str, Any]:
        return dict((kubectl.get("diskarray", "a1") or {}).get("status", {}))

    with operator() as runner:
        kubectl.apply(array(devices={"count": 2, "size": "1Gi", "protection": "mirror"}))
        kubectl.wait("diskarray/a1", "condition=Ready", timeout=90)
        wait_until("the redundancy in the status",
                   lambda: status().get("redundancy", {}).get("state") == "ok"
                   and condition(kubectl.get("diskarray", "a1"), "Degraded").get("reason") == "AllDevicesOk")
        # a device that has not failed is not replaced: refused with the reason, annotation gone
        kubectl("annotate", "diskarray", "a1", "nasblade.io/replace-device=0")
        wait_until("the DeviceReplaceRefused Event", lambda: ("Warning", "DeviceReplaceRefused") in events(kubectl, "a1"))
        wait_until("the annotation removed", lambda: "nasblade.io/replace-device" not in
                   ((kubectl.get("diskarray", "a1") or {})["metadata"].get("annotations") or {}))
        admin.request("POST", "/v1/array/devices/1/fail", {"reason": "test: pulled"})
        failed = wait_until("device 1 failed in the status",
                            lambda: (s := status()) and s.get("devices", [{}, {}])[1].get("state") == "failed" and s)
        assert failed["redundancy"]["state"] == "degraded"
        assert failed["devices"][1]["reason"] == "test: pulled"
        degraded = wait_until("Degraded=True", lambda: (c := condition(kubectl.get("diskarray", "a1"), "Degraded"))
                              and c["status"] == "True" and c)
        assert degraded["reason"] == "DeviceFailed"
        assert "device 1 failed (test: pulled): data is at risk" in degraded["message"]
        assert "delete pvc dev-1-a1-controller-0" in degraded["message"]
        wait_until("the DeviceFailed Event", lambda: ("Warning", "DeviceFailed") in events(kubectl, "a1"))
        assert "DEGRADED" in kubectl("get", "da", "a1").stdout.upper()
        kubectl("annotate", "diskarray", "a1", "nasblade.io/replace-device=1")
        wait_until("the DeviceReplaced Event", lambda: ("Normal", "DeviceReplaced") in events(kubectl, "a1"))
        wait_until("Degraded=False after the rebuild",
                   lambda: condition(kubectl.get("diskarray", "a1"), "Degraded").get("reason") == "AllDevicesOk",
                   timeout=120)
        wait_until("the DeviceRebuilt Event", lambda: ("Normal", "DeviceRebuilt") in events(kubectl, "a1"))
        seen = events(kubectl, "a1")
    assert_clean(runner)
    assert seen.count(("Warning", "DeviceFailed")) == 1  # once, not every poll
    assert status()["devices"][1]["state"] == "ok" and status()["redundancy"]["rebuild"] == []


def test_a_degraded_computed_from_an_old_status_does_not_put_back_an_old_ready(kubectl: Kubectl, use_tier1: str) -> None:
    """The ``refresh_figures`` timer runs beside the reconcile handler. It read the DiskArray,
    then the handler of a new generation wrote ``Ready`` (observedGeneration 2); the timer's
    ``Degraded`` carries the whole conditions list it computed from what it read: written as
    is, it put back ``Ready`` of generation 1, which nothing rewrote, and ``kubectl wait
    --for=condition=Ready`` never returned (the clean-clone run of 3a3fdf3). It is written
    only against the version it was computed from."""
    import asyncio
    import logging

    import kopf
    import pykube
    from nasblade_operator import kube, state
    from nasblade_operator.diskarray import handlers
    from test_devices import answer, device

    def ready(generation: int) -> list[dict[str, Any]]:
        return [{"type": "Ready", "status": "True", "reason": "Ready", "message": "", "observedGeneration": generation,
                 "lastTransitionTime": "2026-12-05T10:00:00Z"}]

    def write_status(conds: list[dict[str, Any]]) -> None:
        kubectl("patch", "diskarray", "a1", "--subresource=status", "--type=merge",
                "-p", json.dumps({"status": {"conditions": conds}}))

    kubectl.apply(array())
    write_status(ready(1))
    read = kubectl.get("diskarray", "a1")  # what the timer read
    assert read is not None
    kubectl("patch", "diskarray", "a1", "--type=merge", "-p", json.dumps({"spec": {"controller": {"cacheSize": "64Mi"}}}))
    write_status(ready(2))  # the handler of generation 2
    st = state.OperatorState(kube=kube.Kube(pykube.HTTPClient(pykube.KubeConfig.from_file(use_tier1), timeout=30)))
    mirror = answer(device(0), device(1))

    def timer_pass(body: dict[str, Any]) -> kopf.Patch:
        patch = kopf.Patch()
        asyncio.run(handlers._show_device_health(
            st, kopf.Body(body), mirror, name="a1", namespace=kubectl.namespace, status=body.get("status", {}),
            patch=patch, logger=logging.getLogger("test")))
        return patch

    patch = timer_pass(read)
    now = kubectl.get("diskarray", "a1")
    assert condition(now, "Ready")["observedGeneration"] == 2, "the handler's Ready was overwritten"
    assert condition(now, "Degraded") == {}, "written against a version that is gone"
    assert "devices" in patch.get("status", {}), "the timer's own fields still go through kopf's patch"
    # the next interval reads the new status, and Degraded is written beside the handler's Ready
    timer_pass(now)
    after = kubectl.get("diskarray", "a1")
    assert condition(after, "Ready")["observedGeneration"] == 2
    assert condition(after, "Degraded")["reason"] == "AllDevicesOk"
