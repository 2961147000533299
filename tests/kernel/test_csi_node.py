"""csi-sanity's Node Service specs against ``nasblade-csi``'s node plugin running inside the
User-Mode Linux guest, whose kernel has the NFS client: NodeStage is a real
``mount -t nfs -o vers=3,hard,…`` of the array's export, NodePublish a bind mount of it,
NodeGetVolumeStats a statvfs of the mounted file system, and the unmounts are real.

The controller plugin runs on the host in front of the array's controller and is reached by
csi-sanity in the guest over TCP through a forward. Every volume's context names the ``kfs``
export of the array (``--volume-context``): what this tests is the node service's calls and
mounts; serving each volume's own file system through a blade is not built yet (docs/csi.md).
The node plugin runs on the guest's Debian Python with grpcio, protobuf and the driver copied
in from this virtualenv (the same CPython minor version; checked)."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import xml.etree.ElementTree as ET
from pathlib import Path

import grpc
import pytest
import uml
from conftest import KernelArray, free_port
from nasblade import ready
from nasblade_csi import proto

pytestmark = [pytest.mark.kernel, pytest.mark.component]
REPO = Path(__file__).resolve().parents[2]
SIZE = 64 << 20
#: node specs csi-sanity skips, and why (a node capability the driver does not claim)
SKIPPED_BY_DESIGN = {
    "NodeExpandVolume": "no EXPAND_VOLUME node capability: expansion is the controller's (offline)",
    "Health": "GET_VOLUME_HEALTH / GET_STORAGE_HEALTH not claimed",
    "single node multi writer": "SINGLE_NODE_MULTI_WRITER not claimed",
}


def node_bundle(dest: Path) -> Path:
    """The node plugin and what it imports, for the guest's python3 (3.11, like ours)."""
    assert sys.version_info[:2] == (3, 11), "the guest's Debian python3 is 3.11: the wheels must match"
    proto.load()
    site = Path(grpc.__file__).parents[1]

    def skip(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        return None if "__pycache__" in info.name else info

    out = dest / "csi-node.tgz"
    with tarfile.open(out, "w:gz") as tar:
        for name in ("grpc", "google", "typing_extensions.py"):
            tar.add(site / name, f"py/{name}", filter=skip)
        tar.add(REPO / "operator" / "nasblade_csi", "py/nasblade_csi", filter=skip)
        tar.add(REPO / "blade" / "nasblade", "py/nasblade", filter=skip)
        tar.add(proto.cache_dir(), f"cache/csi/{proto.SPEC_VERSION}", filter=skip)
    return out


def csi_sanity() -> Path:
    out = subprocess.run([str(REPO / "tools" / "kube" / "csi.sh"), "sanity"], check=True,
                         capture_output=True, text=True, timeout=1800)
    return Path(out.stdout.strip().splitlines()[-1])


SCRIPT = r"""
mkdir -p /opt/csi /tmp/csi && tar -xzf csi-node.tgz -C /opt/csi
export PYTHONPATH=/opt/csi/py NASBLADE_CACHE=/opt/csi/cache
python3 -S -m nasblade_csi.main --role node --endpoint unix:///tmp/csi/node.sock --node-id uml-guest \
    >node.out 2>node.log &
for i in $(seq 300); do [ -S /tmp/csi/node.sock ] && break; sleep 0.2; done
cp csi-sanity /tmp/csi/csi-sanity && chmod +x /tmp/csi/csi-sanity
/tmp/csi/csi-sanity -csi.endpoint unix:///tmp/csi/node.sock -csi.controllerendpoint dns:///10.0.2.2:@CTLPORT@ \
    -csi.testvolumesize @SIZE@ -csi.mountdir /tmp/csi/mnt -csi.stagingdir /tmp/csi/stage \
    -csi.junitfile /share/junit.xml -ginkgo.focus 'Node Service' -ginkgo.no-color -ginkgo.v >sanity.log 2>&1
echo "sanity exit $?"
echo "nfs mounts left: $(grep -c ' nfs ' /proc/self/mounts)"
kill %1
wait
"""


def test_csi_sanity_node_service_in_the_guest(guest: uml.Guest, array: KernelArray, tmp_path: Path) -> None:
    ep = array.nfs
    token = tmp_path / "token"
    token.write_text((array.data_dir / "secrets" / "controller-token").read_text().strip())
    port = free_port()
    # the array serves NBD over TLS (``network.nbdTLS``, the default): the controller plugin
    # opens its LUs with the array's admin certificate, as ``nasblade up`` itself does
    env, nbd = dict(os.environ), "nbd://" + array.endpoints["controller"]["nbd"]
    admin = array.data_dir / "tls" / "admin"
    if admin.is_dir():
        env["NASBLADE_NBD_TLS_DIR"], nbd = str(admin), "nbds://" + array.endpoints["controller"]["nbd"]
    ctl = subprocess.Popen(
        [sys.executable, "-m", "nasblade_csi.main", "--role", "controller", "--endpoint", f"tcp://127.0.0.1:{port}",
         "--array-api", array.endpoints["controller"]["api"], "--array-nbd", nbd,
         "--token-file", str(token), "--volume-context", "server=10.0.2.2", "--volume-context", f"export={ep['export']}",
         "--volume-context", f"nfsPort={ep['nfsPort']}", "--volume-context", f"mountPort={ep['mountPort']}"],
        stdout=subprocess.PIPE, stderr=(tmp_path / "csi-controller.log").open("wb"), env=env)
    try:
        ready.wait_ready(ctl, timeout=120)
        forwards = [uml.Forward(ep["nfsPort"], ep["host"], ep["nfsPort"]),
                    uml.Forward(ep["mountPort"], ep["host"], ep["mountPort"]),
                    uml.Forward(port, "127.0.0.1", port)]
        script = SCRIPT.replace("@CTLPORT@", str(port)).replace("@SIZE@", str(SIZE))
        res = guest.run(script, forwards=forwards, timeout=1500,
                        files={"csi-node.tgz": node_bundle(tmp_path), "csi-sanity": csi_sanity()})
    finally:
        ctl.terminate()
        ctl.wait(30)
    log = (res.share / "sanity.log").read_text() if (res.share / "sanity.log").exists() else res.stderr
    assert res.rc == 0, res.stdout + res.stderr + log[-4000:]
    junit = res.share / "junit.xml"
    assert junit.exists(), log[-4000:] + (res.share / "node.log").read_text()[-3000:]
    outcome: dict[str, str] = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        failed = case.find("failure") is not None or case.find("error") is not None
        outcome[case.get("name", "")] = "failed" if failed else "skipped" if case.find("skipped") is not None else "passed"
    node = {n: o for n, o in outcome.items() if "Node Service" in n}
    for name, o in sorted(node.items()):
        print(f"  {o}: {name}")
    passed = [n for n, o in node.items() if o == "passed"]
    failed = [n for n, o in node.items() if o == "failed"]
    print(f"csi-sanity node service in the guest: {len(passed)} passed, {len(failed)} failed, "
          f"{len(node) - len(passed) - len(failed)} skipped")
    assert not failed, "\n".join(failed) + "\n" + log[-6000:] + (res.share / "node.log").read_text()[-3000:]
    assert any("should work" in n for n in passed), "the stage/publish/unpublish/unstage cycle did not pass"
    assert any("should be idempotent" in n for n in passed)
    skipped = [n for n, o in node.items() if o == "skipped"]
    unexpected = [n for n in skipped if not any(s in n for s in SKIPPED_BY_DESIGN)]
    assert not unexpected, f"skipped for no reason this driver knows: {unexpected}"
    assert "nfs mounts left: 0" in res.stdout, res.stdout
