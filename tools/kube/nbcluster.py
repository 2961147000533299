#!/usr/bin/env python3
"""Local Kubernetes clusters for the nasblade tests, built from source on this machine.

Tier 1: etcd + kube-apiserver (+ kube-controller-manager) on 127.0.0.1, admin kubeconfig
        (client certificate in system:masters).  Ephemeral (pytest fixture, random ports,
        temporary directory) or persistent (``make tier1-up``, fixed state directory).
Tier 2: tier 1 + kube-scheduler, containerd, kubelet, kube-proxy (iptables), CNI bridge,
        CoreDNS and local-path-provisioner: one Ready node running real containers from
        locally built images.  Persistent only (host-global: containerd, kubelet, iptables).

Only the Python standard library and the ``openssl`` CLI are used, so this module can be run
with the system python3 before the project's venv exists.

CLI (used by the Makefile, see docs/testing.md):
    nbcluster.py tier1-up | tier1-down | tier2-up | tier2-down | up | down | status | env
    nbcluster.py kind-up | kind-down     (kind on PATH, NASBLADE_KIND_IMAGE: tools/kube/kind.sh)
    nbcluster.py kubeconfig [tier1|tier2]
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from string import Template

CLUSTER_DIR = Path(__file__).resolve().parent
REPO_ROOT = CLUSTER_DIR.parent.parent


def _read_versions() -> dict[str, str]:
    out: dict[str, str] = {}
    for line in (CLUSTER_DIR / "versions.env").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            k, v = line.split("=", 1)
            out[k.strip()] = v.strip()
    return out


VERSIONS = _read_versions()
CACHE = Path(os.environ.get("NASBLADE_CACHE") or Path.home() / ".cache" / "nasblade")
BIN_ROOT = CACHE / "bin"
STATE_ROOT = CACHE / "state"

K8S_VERSION = VERSIONS["K8S_VERSION"]
BASE_IMAGE = VERSIONS["BASE_IMAGE"]  # the one place other code should read the base tag from
PAUSE_IMAGE = VERSIONS["PAUSE_IMAGE"]

SERVICE_CIDR = "10.96.0.0/16"
KUBERNETES_SVC_IP = "10.96.0.1"
DNS_SVC_IP = "10.96.0.10"
POD_CIDR = "10.244.0.0/16"
NODE_POD_SUBNET = "10.244.0.0/24"
NODE_NAME = "nasblade-node"
CONTAINERD_SOCK = "/run/containerd/containerd.sock"
CNI_BIN_DIR = "/usr/lib/cni"
CNI_CONF_DIR = "/etc/cni/net.d"
CNI_NET_NAME = "nasblade"
TIER1_PORTS = {"apiserver": 16443, "etcd": 12379, "etcd_peer": 12380}
TIER2_PORTS = {"apiserver": 6443, "etcd": 2379, "etcd_peer": 2380}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S', time.gmtime())}] {msg}", file=sys.stderr, flush=True)


def k8s_bin(name: str) -> Path:
    return BIN_ROOT / f"kubernetes-{K8S_VERSION}" / name


def etcd_bin() -> Path:
    return BIN_ROOT / f"etcd-{VERSIONS['ETCD_VERSION']}" / "etcd"


def kwok_bin() -> Path:
    return BIN_ROOT / f"kwok-{VERSIONS['KWOK_VERSION']}" / "kwok"


def helm_bin() -> Path:
    return BIN_ROOT / f"helm-{VERSIONS['HELM_VERSION']}" / "helm"


def tool_path() -> str:
    """A PATH with the cached kubectl/helm/kwok first."""
    dirs = [k8s_bin("x").parent, helm_bin().parent, kwok_bin().parent, etcd_bin().parent]
    return os.pathsep.join([str(d) for d in dirs] + [os.environ.get("PATH", "")])


def ensure_built(components: str = "tier1") -> None:
    """Run build.sh for a set of components (no-op when everything is cached)."""
    needed = {
        "tier1": [etcd_bin(), k8s_bin("kube-apiserver"), k8s_bin("kube-controller-manager"),
                  k8s_bin("kubectl"), kwok_bin()],
    }
    needed["tier2"] = needed["tier1"] + [
        k8s_bin("kube-scheduler"), k8s_bin("kubelet"), k8s_bin("kube-proxy"), helm_bin(),
        BIN_ROOT / "pause-1" / "pause",
        BIN_ROOT / f"coredns-{VERSIONS['COREDNS_VERSION']}" / "coredns",
        BIN_ROOT / f"local-path-provisioner-{VERSIONS['LPP_VERSION']}" / "local-path-provisioner",
        *(BIN_ROOT / f"external-snapshotter-{VERSIONS['SNAPSHOTTER_VERSION']}" / b
          for b in ("csi-snapshotter", "snapshot-controller"))]
    if all(p.exists() for p in needed.get(components, [])):
        return
    log(f"building missing {components} binaries (see {CACHE}/logs); this can take a while")
    subprocess.run([str(CLUSTER_DIR / "build.sh"), components], check=True)


def ensure_images() -> None:
    """Build the local images unless every one of them is in the tar cache."""
    tags = subprocess.run([str(CLUSTER_DIR / "images.sh"), "tags"], capture_output=True,
                          text=True, check=True).stdout.split()
    tars = [CACHE / "images" / (t.replace("/", "_").replace(":", "_") + ".tar") for t in tags]
    if not all(t.exists() for t in tars):
        subprocess.run([str(CLUSTER_DIR / "images.sh"), "build", "all"], check=True)


@contextlib.contextmanager
def locked(name: str) -> Iterator[None]:
    """Serialize cluster operations between processes (pytest workers, make, users)."""
    import fcntl

    STATE_ROOT.mkdir(parents=True, exist_ok=True)
    with open(STATE_ROOT / f"{name}.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def node_ip() -> str:
    """The host address pods can reach: the default route's source, else a lo alias."""
    with contextlib.suppress(Exception):
        out = subprocess.run(["ip", "-4", "-j", "route", "get", "192.0.2.254"],
                             capture_output=True, text=True, check=True).stdout
        src = json.loads(out)[0].get("prefsrc")
        if src and not src.startswith("127."):
            return str(src)
    alias = "10.254.254.254"
    subprocess.run(["ip", "addr", "replace", f"{alias}/32", "dev", "lo"], check=False)
    return alias


# --------------------------------------------------------------------------- PKI

class PKI:
    """A CA plus certificates made with the openssl CLI."""

    def __init__(self, d: Path):
        self.d = d
        d.mkdir(parents=True, exist_ok=True)

    def _ssl(self, *args: str, stdin: str | None = None) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, input=stdin,
                       text=True, cwd=self.d)

    @property
    def ca_crt(self) -> Path:
        return self.d / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.d / "ca.key"

    def ensure_ca(self) -> None:
        if self.ca_crt.exists():
            return
        self._ssl("genrsa", "-out", "ca.key", "2048")
        self._ssl("req", "-x509", "-new", "-nodes", "-key", "ca.key", "-sha256", "-days", "3650",
                  "-subj", "/CN=nasblade-test-ca", "-out", "ca.crt")
        self._ssl("genrsa", "-out", "sa.key", "2048")
        self._ssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub")

    def cert(self, name: str, cn: str, org: str | None = None, sans: list[str] | None = None,
             server: bool = False) -> tuple[Path, Path]:
        crt, key = self.d / f"{name}.crt", self.d / f"{name}.key"
        stamp = self.d / f"{name}.req"
        want = json.dumps([cn, org, sorted(sans or []), server])
        if crt.exists() and stamp.exists() and stamp.read_text() == want:
            return crt, key
        subj = f"/CN={cn}" + (f"/O={org}" if org else "")
        self._ssl("genrsa", "-out", key.name, "2048")
        self._ssl("req", "-new", "-key", key.name, "-subj", subj, "-out", f"{name}.csr")
        ext = ["basicConstraints=CA:FALSE", "keyUsage=critical,digitalSignature,keyEncipherment",
               "extendedKeyUsage=" + ("serverAuth,clientAuth" if server else "clientAuth")]
        if sans:
            ext.append("subjectAltName=" + ",".join(
                (f"IP:{s}" if s.replace(".", "").isdigit() or ":" in s else f"DNS:{s}")
                for s in sans))
        (self.d / f"{name}.ext").write_text("\n".join(ext) + "\n")
        self._ssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                  "-CAcreateserial", "-out", crt.name, "-days", "3650", "-sha256",
                  "-extfile", f"{name}.ext")
        stamp.write_text(want)
        return crt, key

    def kubeconfig(self, path: Path, server: str, user: str, crt: Path, key: Path,
                   cluster: str = "nasblade") -> Path:
        def b64(p: Path) -> str:
            return base64.b64encode(p.read_bytes()).decode()

        cfg = {
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": cluster, "cluster": {
                "server": server, "certificate-authority-data": b64(self.ca_crt)}}],
            "users": [{"name": user, "user": {
                "client-certificate-data": b64(crt), "client-key-data": b64(key)}}],
            "contexts": [{"name": cluster, "context": {"cluster": cluster, "user": user}}],
            "current-context": cluster,
        }
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(cfg, indent=1))
        tmp.chmod(0o600)
        tmp.replace(path)
        return path


# --------------------------------------------------------------------------- processes

class Procs:
    """Background processes recorded in <dir>/pids.json, killable by a later invocation."""

    def __init__(self, d: Path):
        self.d = d
        self.pidfile = d / "pids.json"

    def _load(self) -> dict[str, list[int | str]]:
        try:
            return dict(json.loads(self.pidfile.read_text()))
        except (OSError, ValueError):
            return {}

    def _save(self, data: dict[str, list[int | str]]) -> None:
        self.pidfile.write_text(json.dumps(data, indent=1))

    @staticmethod
    def _alive(pid: int, exe: str) -> bool:
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
            stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return False
        if stat in ("Z", "X"):
            return False
        # an empty cmdline can be seen transiently while the child execs
        return cmd in (exe, "")

    def running(self, name: str) -> int | None:
        ent = self._load().get(name)
        if ent and self._alive(int(ent[0]), str(ent[1])):
            return int(ent[0])
        return None

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> int:
        pid = self.running(name)
        if pid:
            return pid
        logf = open(self.d / f"{name}.log", "ab")  # noqa: SIM115 - handed to the child
        logf.write(f"\n==== {time.ctime()} {' '.join(argv)}\n".encode())
        logf.flush()
        p = subprocess.Popen(argv, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             start_new_session=True, env={**os.environ, **(env or {})},
                             cwd=self.d)
        logf.close()
        data = self._load()
        data[name] = [p.pid, argv[0]]
        self._save(data)
        return p.pid

    def check(self, name: str) -> None:
        if not self.running(name) and (time.sleep(0.5) or not self.running(name)):
            tail = (self.d / f"{name}.log").read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{name} exited; last log lines:\n{tail}")

    def stop(self, name: str, timeout: float = 20) -> None:
        data = self._load()
        ent = data.get(name)
        if not ent:
            return
        pid, exe = int(ent[0]), str(ent[1])
        if self._alive(pid, exe):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and self._alive(pid, exe):
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, os.WNOHANG)
                time.sleep(0.1)
            if self._alive(pid, exe):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
                time.sleep(0.2)
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)
        data.pop(name, None)
        self._save(data)


def proc_start_time(pid: int) -> float:
    """Wall-clock start time of a process (now if unknown)."""
    try:
        ticks = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
        btime = next(int(ln.split()[1]) for ln in Path("/proc/stat").read_text().splitlines()
                     if ln.startswith("btime "))
        return btime + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, StopIteration, IndexError):
        return time.time()


def wait_for(what: str, pred, timeout: float, interval: float = 0.5, check=None):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        if check:
            check()
        try:
            r = pred()
            if r:
                return r
        except Exception as e:
            last_exc = e
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}: {last_exc!r}")


# --------------------------------------------------------------------------- control plane

class ControlPlane:
    """etcd + kube-apiserver (+ kube-controller-manager [+ kube-scheduler])."""

    def __init__(self, workdir: Path, ports: dict[str, int] | None = None, *,
                 controller_manager: bool = True, scheduler: bool = False,
                 advertise: str = "127.0.0.1", bind: str = "127.0.0.1",
                 node_authz: bool = False, extra_sans: list[str] | None = None):
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.ports = ports or {"apiserver": free_port(), "etcd": free_port(),
                               "etcd_peer": free_port()}
        self.with_kcm = controller_manager
        self.with_sched = scheduler
        self.advertise = advertise
        self.bind = bind
        self.node_authz = node_authz
        self.extra_sans = extra_sans or []
        self.pki = PKI(self.dir / "pki")
        self.procs = Procs(self.dir)
        self.server = f"https://127.0.0.1:{self.ports['apiserver']}"
        self.kubeconfig = self.dir / "admin.kubeconfig"

    # -- helpers
    def kubectl(self, *args: str, check: bool = True, input: str | None = None,
                capture: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(k8s_bin("kubectl")), "--kubeconfig", str(self.kubeconfig),
                               *args], check=check, text=True, input=input,
                              capture_output=capture)

    def _https_get(self, path: str) -> tuple[int, str]:
        crt, key = self.pki.d / "admin.crt", self.pki.d / "admin.key"
        ctx = ssl.create_default_context(cafile=str(self.pki.ca_crt))
        ctx.load_cert_chain(str(crt), str(key))
        try:
            with urllib.request.urlopen(self.server + path, context=ctx, timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode(errors="replace")

    def healthy(self) -> bool:
        try:
            code, _ = self._https_get("/readyz")
            return code == 200
        except Exception:
            return False

    def make_pki(self) -> None:
        p = self.pki
        p.ensure_ca()
        sans = ["127.0.0.1", KUBERNETES_SVC_IP, self.advertise, "localhost", "kubernetes",
                "kubernetes.default", "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local", *self.extra_sans]
        p.cert("apiserver", "kube-apiserver", sans=sorted(set(sans)), server=True)
        crt, key = p.cert("admin", "nasblade-admin", "system:masters")
        p.kubeconfig(self.kubeconfig, self.server, "admin", crt, key)
        p.cert("apiserver-kubelet-client", "kube-apiserver-kubelet-client", "system:masters")
        crt, key = p.cert("kube-controller-manager", "system:kube-controller-manager")
        p.kubeconfig(self.dir / "kcm.kubeconfig", self.server, "kcm", crt, key)
        crt, key = p.cert("kube-scheduler", "system:kube-scheduler")
        p.kubeconfig(self.dir / "scheduler.kubeconfig", self.server, "scheduler", crt, key)

    # -- lifecycle
    def start(self, timeout: float = 120) -> ControlPlane:
        for b in (etcd_bin(), k8s_bin("kube-apiserver")):
            if not b.exists():
                raise FileNotFoundError(f"{b} missing: run `make cluster-build` "
                                        f"(tools/kube/build.sh tier1)")
        t0 = time.monotonic()
        self.make_pki()
        pk = self.pki.d
        e, ep = self.ports["etcd"], self.ports["etcd_peer"]
        self.procs.start("etcd", [
            str(etcd_bin()), "--name=nasblade", f"--data-dir={self.dir / 'etcd'}",
            f"--listen-client-urls=http://127.0.0.1:{e}",
            f"--advertise-client-urls=http://127.0.0.1:{e}",
            f"--listen-peer-urls=http://127.0.0.1:{ep}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{ep}",
            f"--initial-cluster=nasblade=http://127.0.0.1:{ep}",
            "--unsafe-no-fsync", "--quota-backend-bytes=4294967296",
            "--log-level=warn", "--snapshot-count=100000"])
        authz = "Node,RBAC" if self.node_authz else "RBAC"
        args = [
            str(k8s_bin("kube-apiserver")),
            f"--etcd-servers=http://127.0.0.1:{e}",
            f"--secure-port={self.ports['apiserver']}",
            f"--bind-address={self.bind}", f"--advertise-address={self.advertise}",
            f"--tls-cert-file={pk / 'apiserver.crt'}",
            f"--tls-private-key-file={pk / 'apiserver.key'}",
            f"--client-ca-file={pk / 'ca.crt'}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            f"--authorization-mode={authz}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={pk / 'sa.pub'}",
            f"--service-account-signing-key-file={pk / 'sa.key'}",
            f"--kubelet-client-certificate={pk / 'apiserver-kubelet-client.crt'}",
            f"--kubelet-client-key={pk / 'apiserver-kubelet-client.key'}",
            "--kubelet-preferred-address-types=InternalIP,ExternalIP,Hostname",
            "--allow-privileged=true", "--profiling=false",
            f"--cert-dir={self.dir / 'apiserver-certs'}",
            "--v=1",
        ]
        if not self.with_kcm:
            args.append("--disable-admission-plugins=ServiceAccount")
        self.procs.start("kube-apiserver", args)
        wait_for("kube-apiserver /readyz", self.healthy, timeout,
                 check=lambda: (self.procs.check("etcd"), self.procs.check("kube-apiserver")))
        if self.with_kcm:
            kc = str(self.dir / "kcm.kubeconfig")
            self.procs.start("kube-controller-manager", [
                str(k8s_bin("kube-controller-manager")), f"--kubeconfig={kc}",
                f"--authentication-kubeconfig={kc}", f"--authorization-kubeconfig={kc}",
                f"--service-account-private-key-file={pk / 'sa.key'}",
                f"--root-ca-file={pk / 'ca.crt'}",
                f"--cluster-signing-cert-file={pk / 'ca.crt'}",
                f"--cluster-signing-key-file={pk / 'ca.key'}",
                "--use-service-account-credentials=true", "--leader-elect=false",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                f"--cluster-cidr={POD_CIDR}", "--allocate-node-cidrs=false",
                "--secure-port=0", "--v=1"])
        if self.with_sched:
            kc = str(self.dir / "scheduler.kubeconfig")
            self.procs.start("kube-scheduler", [
                str(k8s_bin("kube-scheduler")), f"--kubeconfig={kc}",
                f"--authentication-kubeconfig={kc}", f"--authorization-kubeconfig={kc}",
                "--leader-elect=false", "--secure-port=0", "--v=1"])
        if self.with_kcm:
            # the default ServiceAccount exists once the controller-manager works
            wait_for("default ServiceAccount", lambda: self.kubectl(
                "get", "serviceaccount", "default", "-n", "default", check=False
            ).returncode == 0, timeout,
                check=lambda: self.procs.check("kube-controller-manager"))
        log(f"control plane ready at {self.server} in {time.monotonic() - t0:.1f}s "
            f"(KUBECONFIG={self.kubeconfig})")
        return self

    def stop(self) -> None:
        for n in ("kwok", "kube-scheduler", "kube-controller-manager", "kube-apiserver", "etcd"):
            self.procs.stop(n)

    def env(self) -> dict[str, str]:
        return {"KUBECONFIG": str(self.kubeconfig), "PATH": tool_path()}

    # -- kwok
    def start_kwok(self) -> int:
        """Run kwok: Nodes annotated kwok.x-k8s.io/node=fake and their Pods become Ready."""
        ensure_built("tier1")
        pid = self.procs.start("kwok", [
            str(kwok_bin()), f"--kubeconfig={self.kubeconfig}",
            "--manage-all-nodes=false",
            "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
            "--node-lease-duration-seconds=40", "--cidr=10.250.0.1/16",
            "--node-ip=10.250.0.1", "--server-address=127.0.0.1:0"])
        time.sleep(1)
        self.procs.check("kwok")
        return pid


# --------------------------------------------------------------------------- tier 2

CONTAINERD_TOML = Template("""\
version = 2
root = "/var/lib/containerd"
state = "/run/containerd"
[grpc]
  address = "$sock"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "docker.io/$pause"
  enable_unprivileged_ports = false
  # this VM's root lacks CAP_SYS_RESOURCE: runc cannot set negative oom_score_adj (the kubelet
  # asks -998 for sandboxes), so clamp to containerd's own score (0)
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "$cni_bin"
    conf_dir = "$cni_conf"
""")

KUBELET_CONFIG = Template("""\
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: "$ca"}
authorization: {mode: Webhook}
cgroupDriver: cgroupfs
failSwapOn: false
failCgroupV1: false
containerRuntimeEndpoint: "unix://$sock"
clusterDNS: ["$dns"]
clusterDomain: cluster.local
resolvConf: /etc/resolv.conf
tlsCertFile: "$tls_crt"
tlsPrivateKeyFile: "$tls_key"
readOnlyPort: 0
serializeImagePulls: false
podCIDR: "$pod_subnet"
maxPods: 110
evictionHard: {memory.available: "50Mi", nodefs.available: "1%", nodefs.inodesFree: "1%", imagefs.available: "1%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
imageMinimumGCAge: 8760h
protectKernelDefaults: false
rotateCertificates: false
localStorageCapacityIsolation: true
shutdownGracePeriod: 0s
""")

KUBE_PROXY_CONFIG = Template("""\
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: "$kubeconfig"}
mode: iptables
clusterCIDR: "$pod_cidr"
hostnameOverride: "$node"
bindAddress: 0.0.0.0
metricsBindAddress: 127.0.0.1:10249
healthzBindAddress: 127.0.0.1:10256
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
""")


def cni_conflist() -> str:
    return json.dumps({
        "cniVersion": "0.4.0", "name": CNI_NET_NAME,
        "plugins": [
            {"type": "bridge", "bridge": "cni0", "isGateway": True, "ipMasq": True,
             "hairpinMode": True,
             "ipam": {"type": "host-local", "ranges": [[{"subnet": NODE_POD_SUBNET}]],
                      "routes": [{"dst": "0.0.0.0/0"}]}},
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ]}, indent=1)


def _sysctl(key: str, value: str) -> None:
    p = Path("/proc/sys") / key.replace(".", "/")
    with contextlib.suppress(OSError):
        if p.exists() and p.read_text().strip() != value:
            p.write_text(value)


class Tier2:
    def __init__(self, workdir: Path | None = None):
        self.dir = Path(workdir or STATE_ROOT / "tier2")
        self.ip = node_ip()
        self.cp = ControlPlane(self.dir, dict(TIER2_PORTS), controller_manager=True,
                               scheduler=True, advertise=self.ip, bind="0.0.0.0",
                               node_authz=True, extra_sans=[NODE_NAME])
        self.procs = self.cp.procs
        self.kubeconfig = self.cp.kubeconfig

    def node_pki(self) -> None:
        p = self.cp.pki
        crt, key = p.cert("kubelet-client", f"system:node:{NODE_NAME}", "system:nodes")
        p.kubeconfig(self.dir / "kubelet.kubeconfig", self.cp.server, "kubelet", crt, key)
        p.cert("kubelet-serving", f"system:node:{NODE_NAME}", "system:nodes",
               sans=[self.ip, "127.0.0.1", NODE_NAME, socket.gethostname()], server=True)
        crt, key = p.cert("kube-proxy", "system:kube-proxy")
        p.kubeconfig(self.dir / "kube-proxy.kubeconfig", self.cp.server, "kube-proxy", crt, key)

    def start_containerd(self) -> None:
        cfg = self.dir / "containerd.toml"
        cfg.write_text(CONTAINERD_TOML.substitute(
            sock=CONTAINERD_SOCK, pause=PAUSE_IMAGE, cni_bin=CNI_BIN_DIR, cni_conf=CNI_CONF_DIR))
        Path(CNI_CONF_DIR).mkdir(parents=True, exist_ok=True)
        for f in Path(CNI_CONF_DIR).glob("*"):
            if f.name != f"10-{CNI_NET_NAME}.conflist" and f.suffix in (".conf", ".conflist"):
                log(f"note: other CNI config present: {f} (ours sorts first)")
        Path(CNI_CONF_DIR, f"10-{CNI_NET_NAME}.conflist").write_text(cni_conflist())
        if not self.procs.running("containerd") and self._containerd_up():
            log(f"using an already running containerd at {CONTAINERD_SOCK} "
                "(it must use the CRI config in tools/kube: pause image, CNI dir)")
            return
        self.procs.start("containerd", ["/usr/bin/containerd", "--config", str(cfg)])
        wait_for("containerd", self._containerd_up, 60,
                 check=lambda: self.procs.check("containerd"))

    @staticmethod
    def _containerd_up() -> bool:
        if not Path(CONTAINERD_SOCK).exists():
            return False
        try:
            return subprocess.run(["ctr", "-a", CONTAINERD_SOCK, "--connect-timeout", "2s",
                                   "version"], capture_output=True, timeout=10).returncode == 0
        except subprocess.TimeoutExpired:
            return False

    def host_setup(self) -> None:
        with contextlib.suppress(Exception):
            subprocess.run(["modprobe", "br_netfilter"], capture_output=True, check=False)
            subprocess.run(["modprobe", "overlay"], capture_output=True, check=False)
        _sysctl("net.ipv4.ip_forward", "1")
        _sysctl("net.bridge.bridge-nf-call-iptables", "1")
        _sysctl("net.bridge.bridge-nf-call-ip6tables", "1")
        _sysctl("net.ipv4.conf.all.route_localnet", "1")
        for d in ("/var/lib/kubelet", "/var/lib/nasblade/local-path"):
            Path(d).mkdir(parents=True, exist_ok=True)

    def start_node(self) -> None:
        pk = self.cp.pki.d
        kcfg = self.dir / "kubelet-config.yaml"
        kcfg.write_text(KUBELET_CONFIG.substitute(
            ca=pk / "ca.crt", sock=CONTAINERD_SOCK, dns=DNS_SVC_IP,
            tls_crt=pk / "kubelet-serving.crt", tls_key=pk / "kubelet-serving.key",
            pod_subnet=NODE_POD_SUBNET))
        self.procs.start("kubelet", [
            str(k8s_bin("kubelet")), f"--config={kcfg}",
            f"--kubeconfig={self.dir / 'kubelet.kubeconfig'}",
            f"--hostname-override={NODE_NAME}", f"--node-ip={self.ip}",
            "--root-dir=/var/lib/kubelet", f"--cert-dir={self.dir / 'kubelet-certs'}",
            "--v=1"])
        pcfg = self.dir / "kube-proxy-config.yaml"
        pcfg.write_text(KUBE_PROXY_CONFIG.substitute(
            kubeconfig=self.dir / "kube-proxy.kubeconfig", pod_cidr=POD_CIDR, node=NODE_NAME))
        self.procs.start("kube-proxy", [str(k8s_bin("kube-proxy")), f"--config={pcfg}",
                                        "--v=1"])

    def node_ready(self) -> bool:
        r = self.cp.kubectl("get", "node", NODE_NAME, "-o",
                            "jsonpath={.status.conditions[?(@.type=='Ready')].status}",
                            check=False)
        return r.stdout.strip() == "True"

    def addons(self) -> None:
        subst = dict(VERSIONS)
        subst.update(DNS_SVC_IP=DNS_SVC_IP, NODE_NAME=NODE_NAME)
        for f in sorted((CLUSTER_DIR / "manifests").glob("*.yaml")):
            text = Template(f.read_text()).substitute(subst)
            self.cp.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-",
                            input=text)

    def up(self) -> Tier2:
        with locked("tier2"):
            return self._up()

    def _up(self) -> Tier2:
        t0 = time.monotonic()
        ensure_built("tier2")
        ensure_images()
        if self.healthy():
            log(f"tier 2 already up (KUBECONFIG={self.kubeconfig})")
            return self
        self.host_setup()
        self.cp.make_pki()
        self.node_pki()
        log("starting containerd")
        self.start_containerd()
        log("loading local images into containerd (namespace k8s.io)")
        subprocess.run([str(CLUSTER_DIR / "images.sh"), "load"], check=True)
        log("starting etcd, kube-apiserver, kube-controller-manager, kube-scheduler")
        self.cp.start()
        log("starting kubelet and kube-proxy")
        self.start_node()
        kubelet_started = proc_start_time(self.procs.running("kubelet") or 0) - 2
        wait_for(f"node {NODE_NAME} Ready", self.node_ready, 180,
                 check=lambda: (self.procs.check("kubelet"), self.procs.check("kube-proxy")))
        log("applying addons: CoreDNS, local-path-provisioner (default StorageClass)")
        self.addons()
        for ns, dep in (("kube-system", "coredns"), ("local-path-storage",
                                                     "local-path-provisioner")):
            self.cp.kubectl("-n", ns, "rollout", "status", f"deployment/{dep}",
                            "--timeout=180s")
            # after a restart the old status still says ready: wait for fresh containers
            wait_for(f"{dep} running since the kubelet started",
                     lambda ns=ns, dep=dep: self.pods_fresh(ns, dep, kubelet_started), 180,
                     interval=1)
        wait_for("cluster DNS answering", lambda: dns_query(
            DNS_SVC_IP, "kubernetes.default.svc.cluster.local") == KUBERNETES_SVC_IP, 60)
        log(f"tier 2 ready in {time.monotonic() - t0:.0f}s: export KUBECONFIG={self.kubeconfig}")
        return self

    def pods_fresh(self, ns: str, app: str, since: float) -> bool:
        r = self.cp.kubectl("-n", ns, "get", "pods", "-o", "json", check=False)
        if r.returncode:
            return False
        import datetime as dt

        pods = [p for p in json.loads(r.stdout)["items"]
                if p["metadata"]["name"].startswith(app + "-")
                and not p["metadata"].get("deletionTimestamp")]
        if not pods:
            return False
        for p in pods:
            for c in p["status"].get("containerStatuses") or []:
                started = (c.get("state", {}).get("running") or {}).get("startedAt")
                if not (c.get("ready") and started):
                    return False
                t = dt.datetime.strptime(started, "%Y-%m-%dT%H:%M:%SZ").replace(
                    tzinfo=dt.UTC).timestamp()
                if t < since:
                    return False
        return True

    def healthy(self) -> bool:
        names = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler",
                 "kubelet", "kube-proxy")
        if not all(self.procs.running(n) for n in names):
            return False
        if not (self.cp.healthy() and self.node_ready()):
            return False
        r = self.cp.kubectl("-n", "kube-system", "get", "deployment", "coredns", "-o",
                            "jsonpath={.status.readyReplicas}", check=False)
        return r.stdout.strip() not in ("", "0")

    def down(self) -> None:
        with locked("tier2"):
            self._down()

    def _down(self) -> None:
        log("stopping tier 2")
        self.procs.stop("kube-proxy")
        self.procs.stop("kubelet")
        # kill the pods' containers so nothing keeps running without a kubelet
        if self.procs.running("containerd"):
            ctr = ["ctr", "-a", CONTAINERD_SOCK, "-n", "k8s.io"]
            tasks = subprocess.run([*ctr, "tasks", "ls", "-q"], capture_output=True,
                                   text=True, check=False).stdout.split()
            for t in tasks:
                subprocess.run([*ctr, "tasks", "kill", "-s", "SIGKILL", t],
                               capture_output=True, check=False)
            time.sleep(1)
            for t in tasks:
                subprocess.run([*ctr, "tasks", "delete", "-f", t], capture_output=True,
                               check=False)
        self.cp.stop()
        self.procs.stop("containerd", timeout=30)
        # release pod IPs and the pod network of the stopped sandboxes
        shutil.rmtree(f"/var/lib/cni/networks/{CNI_NET_NAME}", ignore_errors=True)
        for line in Path("/proc/mounts").read_text().splitlines():
            mnt = line.split()[1]
            if mnt.startswith(("/run/netns/cni-", "/var/lib/kubelet/pods/")):
                subprocess.run(["umount", "-l", mnt], capture_output=True, check=False)
        subprocess.run(["ip", "link", "del", "cni0"], capture_output=True, check=False)

    def reset(self) -> None:
        """down + forget all cluster state (etcd data, certificates, pod volumes)."""
        self.down()
        log("removing tier-2 state")
        shutil.rmtree(self.dir, ignore_errors=True)
        shutil.rmtree("/var/lib/kubelet/pods", ignore_errors=True)
        shutil.rmtree("/var/lib/nasblade/local-path", ignore_errors=True)


def dns_query(server: str, name: str, timeout: float = 2) -> str | None:
    """One A query over UDP (stdlib only); the first address of the answer, or None."""
    import random
    import struct

    qid = random.randrange(65536)
    q = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    q += b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    q += struct.pack("!HH", 1, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(q, (server, 53))
        data, _ = s.recvfrom(4096)
    rid, _flags, qd, an = struct.unpack("!HHHH", data[:8])
    if rid != qid or an == 0:
        return None
    off = 12
    for _ in range(qd):  # skip the question
        while data[off]:
            off += data[off] + 1
        off += 5
    for _ in range(an):
        off += 2 if data[off] & 0xC0 == 0xC0 else len(data[off:].split(b"\0", 1)[0]) + 1
        rtype, _cls, _ttl, rdlen = struct.unpack("!HHIH", data[off:off + 10])
        off += 10
        if rtype == 1 and rdlen == 4:
            return socket.inet_ntoa(data[off:off + 4])
        off += rdlen
    return None


# --------------------------------------------------------------------------- kind provider

def kind_available() -> str | None:
    """The kind node image to use when kind and its node image exist locally, else None."""
    if os.environ.get("NASBLADE_PROVIDER", "auto") == "local":
        return None
    kind = shutil.which("kind")
    docker = shutil.which("docker")
    if not kind or not docker:
        return None
    image = os.environ.get("NASBLADE_KIND_IMAGE")
    r = subprocess.run([docker, "images", "--format", "{{.Repository}}:{{.Tag}}",
                        image or "kindest/node"], capture_output=True, text=True, check=False)
    imgs = [i for i in r.stdout.split() if not i.endswith(":<none>")]
    return imgs[0] if imgs else None


# The kind cluster of the end-to-end suite: a control plane and a worker, so blades are placed
# on two nodes. Its pod and service ranges differ from the local tier-2 cluster's, whose routes
# and kube-proxy rules live in this host's network namespace.
KIND_POD_SUBNET = "10.245.0.0/16"
KIND_SERVICE_SUBNET = "10.97.0.0/16"


def kind_name() -> str:
    return os.environ.get("NASBLADE_KIND_NAME", "nasblade")


def kind_config(image: str) -> str:
    nodes = "".join(f"- role: {role}\n  image: {image}\n" for role in ("control-plane", "worker"))
    return ("kind: Cluster\napiVersion: kind.x-k8s.io/v1alpha4\n"
            f"networking:\n  podSubnet: {KIND_POD_SUBNET}\n  serviceSubnet: {KIND_SERVICE_SUBNET}\n"
            f"nodes:\n{nodes}")


def kind_up(image: str) -> Path:
    kc = STATE_ROOT / "kind.kubeconfig"
    STATE_ROOT.mkdir(parents=True, exist_ok=True)
    name = kind_name()
    have = subprocess.run(["kind", "get", "clusters"], capture_output=True, text=True,
                          check=False).stdout.split()
    if name not in have:
        cfg = STATE_ROOT / "kind-config.yaml"
        cfg.write_text(kind_config(image))
        log(f"creating kind cluster {name} (control plane + worker) from {image}")
        t0 = time.monotonic()
        subprocess.run(["kind", "create", "cluster", "--name", name, "--config", str(cfg),
                        "--kubeconfig", str(kc), "--wait", "10m", "--retain"], check=True)
        log(f"kind cluster {name} ready in {time.monotonic() - t0:.0f}s")
        # blades go to both nodes (their anti-affinity is preferred): let the control plane
        # take workloads, as a single-node kind cluster does
        subprocess.run([str(k8s_bin("kubectl")), "--kubeconfig", str(kc), "taint", "nodes",
                        "--all", "node-role.kubernetes.io/control-plane-"],
                       check=False, capture_output=True)
    else:
        subprocess.run(["kind", "export", "kubeconfig", "--name", name, "--kubeconfig",
                        str(kc)], check=True)
    for tag in subprocess.run([str(CLUSTER_DIR / "images.sh"), "tags"], capture_output=True,
                              text=True, check=True).stdout.split():
        if subprocess.run(["docker", "image", "inspect", tag], capture_output=True).returncode == 0:
            subprocess.run(["kind", "load", "docker-image", "--name", name, tag], check=False)
    return kc


def kind_nodes() -> list[str]:
    """The node containers of the kind cluster (docker names)."""
    r = subprocess.run(["kind", "get", "nodes", "--name", kind_name()], capture_output=True,
                       text=True, check=False)
    return r.stdout.split()


def kind_down() -> None:
    if shutil.which("kind"):
        subprocess.run(["kind", "delete", "cluster", "--name", kind_name()], check=False)
    # imagetool and e2elib take this file as "the e2e cluster is kind"
    with contextlib.suppress(FileNotFoundError):
        (STATE_ROOT / "kind.kubeconfig").unlink()


# --------------------------------------------------------------------------- the VolumeSnapshot API

def install_snapshot_crds(kubectl) -> None:  # type: ignore[no-untyped-def]
    """The VolumeSnapshot CRDs, as a cluster gets them from its distribution: the files of
    kubernetes-csi/external-snapshotter's client module (``csi.sh snapshot-crds``, from the Go
    module cache), applied server-side (their schemas pass the client-side annotation's size
    limit) with ``kubectl(*args)``, then waited for until Established."""
    files = subprocess.run([str(CLUSTER_DIR / "csi.sh"), "snapshot-crds"], capture_output=True, text=True,
                           timeout=300, check=True).stdout.split()
    names = []
    for f in files:
        kubectl("apply", "--server-side", "--force-conflicts", "-f", f)
        group, plural = Path(f).name.removesuffix(".yaml").split("_", 1)  # GROUP_PLURAL.yaml
        names.append(f"crd/{plural}.{group}")
    if "crd/volumesnapshotclasses.snapshot.storage.k8s.io" not in names:
        raise RuntimeError(f"csi.sh snapshot-crds gave no VolumeSnapshotClass CRD: {files}")
    kubectl("wait", "--for=condition=Established", "--timeout=60s", *names)


# --------------------------------------------------------------------------- entry points

def tier1_persistent() -> ControlPlane:
    return ControlPlane(STATE_ROOT / "tier1", dict(TIER1_PORTS), controller_manager=True)


def cluster_up() -> Path:
    """Bring up the end-to-end cluster (kind if available, else local tier 2); its kubeconfig."""
    image = kind_available()
    kc = kind_up(image) if image else Tier2().up().kubeconfig
    link = STATE_ROOT / "kubeconfig"
    with contextlib.suppress(FileNotFoundError):
        link.unlink()
    link.symlink_to(kc)
    return link


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("cmd", choices=["tier1-up", "tier1-down", "tier2-up", "tier2-down",
                                    "tier2-reset", "up", "down", "status", "env", "kubeconfig",
                                    "kind-up", "kind-down"])
    ap.add_argument("which", nargs="?", default="tier2")
    a = ap.parse_args(argv)
    if a.cmd == "tier1-up":
        ensure_built("tier1")
        cp = tier1_persistent()
        with locked("tier1"):
            if cp.healthy():
                log("tier 1 already up")
            else:
                cp.start()
        print(f"export KUBECONFIG={cp.kubeconfig}")
    elif a.cmd == "tier1-down":
        tier1_persistent().stop()
    elif a.cmd == "tier2-up":
        print(f"export KUBECONFIG={Tier2().up().kubeconfig}")
    elif a.cmd == "tier2-down":
        Tier2().down()
    elif a.cmd == "tier2-reset":
        Tier2().reset()
    elif a.cmd == "up":
        print(f"export KUBECONFIG={cluster_up()}")
    elif a.cmd == "down":
        if (STATE_ROOT / "kind.kubeconfig").exists() and kind_available():
            kind_down()
        Tier2().down()
    elif a.cmd == "kind-up":
        image = kind_available()
        if not image:
            log("kind or its node image is missing (make kind-node-image; NASBLADE_KIND_IMAGE)")
            return 1
        print(f"export KUBECONFIG={kind_up(image)}")
    elif a.cmd == "kind-down":
        kind_down()
    elif a.cmd == "status":
        t1, t2 = tier1_persistent(), Tier2()
        print(f"tier1: {'up' if t1.healthy() else 'down'} ({t1.kubeconfig})")
        print(f"tier2: {'up' if t2.healthy() else 'down'} ({t2.kubeconfig})")
        for n in ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler",
                  "containerd", "kubelet", "kube-proxy"):
            print(f"  {n}: {t2.procs.running(n) or '-'}")
    elif a.cmd == "env":
        print(f"export PATH={tool_path()}")
        print(f"export NASBLADE_BASE_IMAGE={BASE_IMAGE}")
        print(f"export KUBECONFIG={STATE_ROOT / 'kubeconfig'}")
    elif a.cmd == "kubeconfig":
        print(tier1_persistent().kubeconfig if a.which == "tier1" else STATE_ROOT / "kubeconfig")
    return 0


if __name__ == "__main__":
    sys.exit(main())
