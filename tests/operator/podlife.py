"""Pod life for tier 1, where no kubelet runs: ``FakeKubelet`` plays the kubelet.

It watches the pods of one namespace and marks each new pod Running and Ready (phase,
conditions, a 127.0.0.x pod IP), the way a kubelet reports a started pod. A test makes a
pod fail with ``fail(ns, name)`` (Ready=False, as a failing readiness probe would) or
``crash(ns, name)`` (phase Failed), and removes one with ``kill(ns, name)`` (delete, grace 0);
a pod that replaces a failed one (new uid) starts normally.
Status patches go through the pod ``status`` subresource.
"""

from __future__ import annotations

import datetime
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pykube
import requests


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class FakeKubelet:
    def __init__(self, kubeconfig: str, namespace: str | None) -> None:
        self.api = pykube.HTTPClient(pykube.KubeConfig.from_file(kubeconfig), timeout=60)
        self.namespace = namespace
        self.held: set[str] = set()  # uids of pods the test failed: not made Ready again
        self.readied = 0
        self._stop = threading.Event()
        self._ips: dict[str, str] = {}
        self._thread = threading.Thread(target=self._run, name="fake-kubelet", daemon=True)
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="fake-kubelet")
        self._pending: set[str] = set()
        self._lock = threading.Lock()
        self._resp: Any = None

    def start(self) -> FakeKubelet:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._resp is not None:
            self._resp.close()
        self._thread.join(timeout=5)
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _run(self) -> None:
        rv = ""
        while not self._stop.is_set():
            params = {"watch": "true", "timeoutSeconds": "30", "allowWatchBookmarks": "false"}
            if rv:
                params["resourceVersion"] = rv
            try:
                self._resp = self.api.get(url="pods", namespace=self.namespace, params=params, stream=True, timeout=40)
                for line in self._resp.iter_lines():
                    if self._stop.is_set():
                        return
                    if not line:
                        continue
                    ev = json.loads(line)
                    obj = ev.get("object", {})
                    if ev.get("type") == "ERROR":
                        rv = ""
                        break
                    rv = obj.get("metadata", {}).get("resourceVersion", rv)
                    if ev.get("type") in ("ADDED", "MODIFIED"):
                        self._maybe_ready(obj)
            except (requests.RequestException, ValueError, OSError, AttributeError):  # watch broke: re-list and go on
                if self._stop.is_set():
                    return
                rv = ""

    def _ip(self, name: str) -> str:
        return self._ips.setdefault(name, f"127.0.{len(self._ips) // 250}.{len(self._ips) % 250 + 2}")

    def _maybe_ready(self, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        if meta.get("deletionTimestamp") or meta["uid"] in self.held:
            return
        conds = {c["type"]: c.get("status") for c in pod.get("status", {}).get("conditions", [])}
        if conds.get("Ready") == "True":
            return
        with self._lock:
            if meta["uid"] in self._pending:
                return
            self._pending.add(meta["uid"])
        self._pool.submit(self._ready, meta["namespace"], meta["name"], meta["uid"])

    def _ready(self, namespace: str, name: str, uid: str) -> None:
        try:
            if uid not in self.held:
                self._set(namespace, name, ready=True, phase="Running")
                self.readied += 1
        except (requests.RequestException, OSError):
            pass  # the pod went away meanwhile, or the API server is stopping
        finally:
            with self._lock:
                self._pending.discard(uid)

    def _set(self, namespace: str, name: str, *, ready: bool, phase: str) -> None:
        t = _now()
        status = "True" if ready else "False"
        body = {"status": {
            "phase": phase, "podIP": self._ip(name), "podIPs": [{"ip": self._ip(name)}], "hostIP": "127.0.0.1",
            "startTime": t,
            "conditions": [
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": t},
                {"type": "Initialized", "status": "True", "lastTransitionTime": t},
                {"type": "ContainersReady", "status": status, "lastTransitionTime": t},
                {"type": "Ready", "status": status, "lastTransitionTime": t},
            ],
        }}
        r = self.api.patch(url=f"pods/{name}/status", namespace=namespace, data=json.dumps(body),
                           headers={"Content-Type": "application/strategic-merge-patch+json"})
        if r.status_code not in (200, 404):
            r.raise_for_status()

    def _hold(self, namespace: str, name: str) -> None:
        r = self.api.get(url=f"pods/{name}", namespace=namespace)
        r.raise_for_status()
        self.held.add(r.json()["metadata"]["uid"])

    def fail(self, namespace: str, name: str) -> None:
        """This pod stops answering its readiness probe (a replacement pod starts normally)."""
        self._hold(namespace, name)
        self._set(namespace, name, ready=False, phase="Running")

    def crash(self, namespace: str, name: str) -> None:
        """This pod's containers exited for good."""
        self._hold(namespace, name)
        self._set(namespace, name, ready=False, phase="Failed")

    def kill(self, namespace: str, name: str) -> None:
        """The pod is gone (node lost, kubectl delete --force)."""
        r = self.api.delete(url=f"pods/{name}", namespace=namespace, data=json.dumps({"gracePeriodSeconds": 0}))
        if r.status_code not in (200, 202, 404):
            r.raise_for_status()
