"""Tier 2 / end to end: a real node running real containers from locally built images.

Runs against the cluster in KUBECONFIG (or NASBLADE_E2E_KUBECONFIG) when set -- e.g. kind --
and otherwise brings up the local tier-2 cluster (tools/kube/nbcluster.py up).
On kind, load the images first: `kind load docker-image nasblade/base:bookworm-1`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nbcluster
import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

pytestmark = pytest.mark.tier2

IMAGE = os.environ.get("NASBLADE_TEST_IMAGE", nbcluster.BASE_IMAGE)
CHART = Path(__file__).parent / "testdata" / "hello-chart"


def wait_until(what: str, pred: Callable[[], Any], timeout: float = 120,
               interval: float = 1) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = pred()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def container(name: str, command: list[str], **kw: Any) -> client.V1Container:
    return client.V1Container(name=name, image=IMAGE, image_pull_policy="IfNotPresent",
                              command=command, **kw)


def pod_spec(*containers: client.V1Container, **kw: Any) -> client.V1PodSpec:
    kw.setdefault("termination_grace_period_seconds", 1)
    return client.V1PodSpec(containers=list(containers), **kw)


def pod_phase(core: client.CoreV1Api, ns: str, name: str) -> str:
    return str(core.read_namespaced_pod(name, ns).status.phase)


def pod_logs(core: client.CoreV1Api, ns: str, name: str) -> str:
    try:
        return str(core.read_namespaced_pod_log(name, ns))
    except ApiException as e:
        return f"<no logs: {e.status}>"


def run_to_completion(core: client.CoreV1Api, ns: str, name: str, spec: client.V1PodSpec,
                      timeout: float = 120) -> str:
    spec.restart_policy = "Never"
    core.create_namespaced_pod(ns, client.V1Pod(metadata=client.V1ObjectMeta(name=name),
                                                spec=spec))
    phase = wait_until(f"pod {name} to finish",
                       lambda: (p := pod_phase(core, ns, name)) in ("Succeeded", "Failed") and p,
                       timeout)
    logs = pod_logs(core, ns, name)
    assert phase == "Succeeded", f"pod {name} {phase}: {logs}"
    return logs


def test_node_ready(e2e_api: client.ApiClient) -> None:
    nodes = client.CoreV1Api(e2e_api).list_node().items
    assert nodes, "no nodes"
    for n in nodes:
        ready = {c.type: c.status for c in n.status.conditions}.get("Ready")
        assert ready == "True", f"node {n.metadata.name} Ready={ready}"


def _web_deployment(ns: str, core: client.CoreV1Api, apps: client.AppsV1Api) -> None:
    labels = {"app": "web"}
    apps.create_namespaced_deployment(ns, client.V1Deployment(
        metadata=client.V1ObjectMeta(name="web"),
        spec=client.V1DeploymentSpec(
            replicas=2, selector=client.V1LabelSelector(match_labels=labels),
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels=labels),
                spec=pod_spec(container(
                    "web", ["python3", "-m", "http.server", "8080", "-d", "/etc"],
                    ports=[client.V1ContainerPort(container_port=8080)],
                    readiness_probe=client.V1Probe(
                        http_get=client.V1HTTPGetAction(path="/hostname", port=8080),
                        period_seconds=1)))))))
    core.create_namespaced_service(ns, client.V1Service(
        metadata=client.V1ObjectMeta(name="web"),
        spec=client.V1ServiceSpec(selector=labels, ports=[client.V1ServicePort(
            port=80, target_port=8080)])))


def test_deployment_of_local_image_runs_and_is_reachable_by_dns(
        e2e_api: client.ApiClient, e2e_ns: str) -> None:
    core, apps = client.CoreV1Api(e2e_api), client.AppsV1Api(e2e_api)
    _web_deployment(e2e_ns, core, apps)
    wait_until("deployment web available", lambda: (
        apps.read_namespaced_deployment("web", e2e_ns).status.available_replicas or 0) == 2)
    # Ready endpoints reach kube-proxy asynchronously: until it has synced, a Service
    # without programmed endpoints answers with a REJECT (connection refused). The client
    # retries that one error for up to 30 s; anything else, or no answer by then, fails.
    script = (
        "import socket, time, urllib.error, urllib.request\n"
        f"for host in ('web', 'web.{e2e_ns}', 'web.{e2e_ns}.svc.cluster.local'):\n"
        "    ip = socket.gethostbyname(host)\n"
        "    deadline = time.monotonic() + 30\n"
        "    while True:\n"
        "        try:\n"
        "            body = urllib.request.urlopen(f'http://{host}/hostname', timeout=10).read()\n"
        "            break\n"
        "        except urllib.error.URLError as e:\n"
        "            if not isinstance(e.reason, ConnectionRefusedError) \\\n"
        "                    or time.monotonic() > deadline:\n"
        "                raise\n"
        "            time.sleep(0.5)\n"
        "    print(host, ip, body.decode().strip())\n"
    )
    logs = run_to_completion(core, e2e_ns, "client", pod_spec(
        container("client", ["python3", "-c", script])))
    web_pods = {p.metadata.name for p in core.list_namespaced_pod(
        e2e_ns, label_selector="app=web").items}
    lines = logs.strip().splitlines()
    assert len(lines) == 3, logs
    for line in lines:
        _host, ip, served_by = line.split()
        assert ip.startswith(("10.", "172.", "192.168.")), line
        assert served_by in web_pods, (line, web_pods)


def test_pvc_from_default_storageclass_binds_and_keeps_data(
        e2e_api: client.ApiClient, e2e_ns: str) -> None:
    core = client.CoreV1Api(e2e_api)
    storage = client.StorageV1Api(e2e_api)
    defaults = [sc.metadata.name for sc in storage.list_storage_class().items
                if (sc.metadata.annotations or {}).get(
                    "storageclass.kubernetes.io/is-default-class") == "true"]
    assert defaults, "no default StorageClass"
    core.create_namespaced_persistent_volume_claim(e2e_ns, client.V1PersistentVolumeClaim(
        metadata=client.V1ObjectMeta(name="data"),
        spec=client.V1PersistentVolumeClaimSpec(
            access_modes=["ReadWriteOnce"],
            resources=client.V1VolumeResourceRequirements(requests={"storage": "64Mi"}))))

    def with_volume(cmd: list[str]) -> client.V1PodSpec:
        return pod_spec(
            container("c", cmd, volume_mounts=[client.V1VolumeMount(
                name="data", mount_path="/data")]),
            volumes=[client.V1Volume(name="data", persistent_volume_claim=(
                client.V1PersistentVolumeClaimVolumeSource(claim_name="data")))])

    run_to_completion(core, e2e_ns, "writer", with_volume(
        ["sh", "-c", "echo nasblade-$((6*7)) > /data/f && sync"]))
    pvc = core.read_namespaced_persistent_volume_claim("data", e2e_ns)
    assert pvc.status.phase == "Bound"
    assert pvc.spec.storage_class_name in defaults
    core.delete_namespaced_pod("writer", e2e_ns, grace_period_seconds=0)
    logs = run_to_completion(core, e2e_ns, "reader", with_volume(["cat", "/data/f"]))
    assert logs.strip() == "nasblade-42"


def test_killed_container_process_is_restarted(e2e_api: client.ApiClient, e2e_ns: str,
                                               e2e_kubeconfig: str) -> None:
    core = client.CoreV1Api(e2e_api)
    # shareProcessNamespace: the pause process is PID 1, so our process can be SIGKILLed
    core.create_namespaced_pod(e2e_ns, client.V1Pod(
        metadata=client.V1ObjectMeta(name="victim"),
        spec=pod_spec(container("app", ["sleep", "infinity"]),
                      container("killer", ["sleep", "infinity"]),
                      share_process_namespace=True, restart_policy="Always")))

    def statuses() -> dict[str, client.V1ContainerStatus]:
        st = core.read_namespaced_pod("victim", e2e_ns).status
        return {c.name: c for c in (st.container_statuses or [])}

    wait_until("victim running", lambda: all(
        c.ready for c in statuses().values()) and len(statuses()) == 2)
    assert statuses()["app"].restart_count == 0
    out = _exec(e2e_kubeconfig, e2e_ns, "victim", "killer",
          ["sh", "-c", "for p in $(pgrep -x sleep); do "
                       "[ \"$(cat /proc/$p/cgroup)\" != \"$(cat /proc/self/cgroup)\" ] "
                       "&& kill -9 $p && echo killed $p; done; true"])
    assert out.startswith("killed "), out
    st = wait_until("app restarted by the kubelet", lambda: (
        (s := statuses()["app"]).restart_count >= 1 and s.ready and s))
    assert st.last_state.terminated is not None
    assert st.last_state.terminated.exit_code == 137  # SIGKILL
    assert statuses()["killer"].restart_count == 0


def _kubectl() -> str:
    p = nbcluster.k8s_bin("kubectl")
    return str(p) if p.exists() else (shutil.which("kubectl") or "kubectl")


def _exec(kubeconfig: str, ns: str, pod: str, cont: str, cmd: list[str]) -> str:
    argv = [_kubectl(), "--kubeconfig", kubeconfig, "exec", "-n", ns, pod, "-c", cont, "--", *cmd]
    for _ in range(30):
        r = subprocess.run(argv, capture_output=True, text=True, check=False)
        # just after start the kubelet may not know the container yet: retry that only
        if "container not found" not in r.stderr:
            break
        time.sleep(1)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def _helm() -> str:
    p = nbcluster.helm_bin()
    h = str(p) if p.exists() else shutil.which("helm")
    assert h, "helm not found: run `make cluster-build`"
    return h


def test_helm_install_and_uninstall_local_chart(e2e_kubeconfig: str, e2e_api: client.ApiClient,
                                                e2e_ns: str) -> None:
    core, apps = client.CoreV1Api(e2e_api), client.AppsV1Api(e2e_api)
    env = {**os.environ, "KUBECONFIG": e2e_kubeconfig,
           "HELM_CACHE_HOME": str(nbcluster.CACHE / "helm" / "cache"),
           "HELM_CONFIG_HOME": str(nbcluster.CACHE / "helm" / "config"),
           "HELM_DATA_HOME": str(nbcluster.CACHE / "helm" / "data")}
    r = subprocess.run([_helm(), "install", "hello", str(CHART), "-n", e2e_ns, "--wait",
                        "--timeout", "3m", "--set", f"image={IMAGE}"],
                       env=env, capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert core.read_namespaced_config_map("hello-hello", e2e_ns).data == {
        "message": "hello from helm"}
    assert apps.read_namespaced_deployment("hello-hello", e2e_ns).status.ready_replicas == 1
    r = subprocess.run([_helm(), "list", "-n", e2e_ns, "-q"], env=env, capture_output=True,
                       text=True, check=True)
    assert r.stdout.split() == ["hello"]
    r = subprocess.run([_helm(), "uninstall", "hello", "-n", e2e_ns, "--wait"], env=env,
                       capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    with pytest.raises(ApiException) as exc:
        core.read_namespaced_config_map("hello-hello", e2e_ns)
    assert exc.value.status == 404
    wait_until("deployment gone", lambda: not apps.list_namespaced_deployment(e2e_ns).items, 60)
