"""Leader election through kopf peering: of two `nasblade operator` processes only the one
with the higher priority works; the other pauses, and takes over when the first goes."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO

import pytest
from conftest import Kubectl
from nasblade import ready

pytestmark = pytest.mark.tier1


class Tail:
    """Collects a process's stderr lines in a thread so a test can wait for one."""

    def __init__(self, stream: IO[bytes]) -> None:
        self.lines: list[str] = []
        self._t = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._t.start()

    def _read(self, stream: IO[bytes]) -> None:
        for raw in stream:
            self.lines.append(raw.decode(errors="replace"))

    def wait_for(self, text: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(text in line for line in self.lines):
                return
            time.sleep(0.2)
        raise AssertionError(f"{text!r} not logged; got:\n{''.join(self.lines[-30:])}")


def start(namespace: str, priority: int, kubeconfig: str, tmp: Path) -> tuple[subprocess.Popen[bytes], Tail]:
    env = dict(os.environ, KUBECONFIG=kubeconfig, NASBLADE_METRICS_PORT="0")
    proc = subprocess.Popen(
        [sys.executable, "-m", "nasblade", "operator", "-n", namespace, "--peering", "nasblade",
         "--priority", str(priority), "--liveness", ""],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    assert proc.stderr is not None
    tail = Tail(proc.stderr)
    ready.wait_ready(proc, timeout=60)
    return proc, tail


def test_only_the_highest_priority_operator_works(kubectl: Kubectl, namespace: str, use_tier1: str, tmp_path: Path) -> None:
    kubectl.apply({"apiVersion": "kopf.dev/v1", "kind": "KopfPeering", "metadata": {"name": "nasblade"}})
    low, low_log = start(namespace, 100, use_tier1, tmp_path)
    try:
        high, high_log = start(namespace, 200, use_tier1, tmp_path)
        try:
            low_log.wait_for("Pausing operations in favour of")
            # The paused operator leaves a new object to the active one.
            kubectl.apply({"apiVersion": "nasblade.io/v1alpha1", "kind": "ClusterGroup", "metadata": {"name": "g1"},
                           "spec": {"diskArrayRef": {"name": "missing"}}})
            high_log.wait_for("DiskArrayMissing")
            assert not any("DiskArrayMissing" in line for line in low_log.lines)
        finally:
            high.terminate()
            assert high.wait(30) == 0
        low_log.wait_for("Resuming operations after the pause", timeout=90)
    finally:
        low.terminate()
        assert low.wait(30) == 0
    for log in (low_log, high_log):
        assert not any("Traceback" in line for line in log.lines), "".join(log.lines)
