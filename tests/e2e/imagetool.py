#!/usr/bin/env python3
"""Build the nasblade images here and import them into the end-to-end cluster.

Used by the Makefile's ``# --- image / chart / e2e ---`` targets (``make image``,
``make client-image``, ``make image-load``) and by tests/e2e/conftest.py. Standard library
only, plus the cluster driver in tools/kube/nbcluster.py for where the cluster is.

* ``build``: ``docker build`` of the top-level Dockerfile with the locally built base and the
  host-built wheels in build/wheels (``PIP_NO_INDEX=1``: no network in the build);
* ``build-client``: the NFS client image (tests/e2e/nfs-client/) with Debian's libnfs tools
  and libnfs's Python binding (wheel built on the host);
* ``load``: import images into the cluster -- ``kind load`` when the e2e cluster is kind,
  else ``docker save | ctr -n k8s.io images import`` into the local containerd. An import is
  skipped when containerd already holds the same image id (recorded next to the tar).

For containerd the images go through tars in ``$NASBLADE_CACHE/images`` (as
tools/kube/images.sh does), rewritten only when the image id changed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO / "tools" / "kube"))
import nbcluster  # noqa: E402 - path set up above

IMAGES_SH = REPO / "tools" / "kube" / "images.sh"
IMG_CACHE = nbcluster.CACHE / "images"


def log(msg: str) -> None:
    nbcluster.log(msg)


def _docker() -> str:
    return shutil.which("docker") or "/usr/bin/docker"


def ensure_dockerd() -> None:
    subprocess.run([str(IMAGES_SH), "dockerd"], check=True)


def image_id(tag: str) -> str:
    r = subprocess.run([_docker(), "image", "inspect", "-f", "{{.Id}}", tag],
                       capture_output=True, text=True, check=False)
    return r.stdout.strip() if r.returncode == 0 else ""


def tar_path(tag: str) -> Path:
    return IMG_CACHE / (tag.replace("/", "_").replace(":", "_") + ".tar")


def save(tag: str) -> Path:
    """docker save ``tag`` into the tar cache (rewritten only when the image id changed)."""
    IMG_CACHE.mkdir(parents=True, exist_ok=True)
    tar, stamp = tar_path(tag), tar_path(tag).with_suffix(".id")
    iid = image_id(tag)
    if tar.exists() and stamp.exists() and stamp.read_text().strip() == iid:
        return tar
    tmp = tar.with_suffix(".tmp")
    subprocess.run([_docker(), "save", "-o", str(tmp), tag], check=True)
    tmp.replace(tar)
    stamp.write_text(iid + "\n")
    return tar


def docker_build(*, tag: str, context: Path, dockerfile: Path, build_args: dict[str, str],
                 network: str = "none") -> None:
    argv = [_docker(), "build", "--network", network, "-t", tag, "-f", str(dockerfile)]
    for k, v in build_args.items():
        argv += ["--build-arg", f"{k}={v}"]
    argv.append(str(context))
    log(f"image {tag}: docker build ({' '.join(f'{k}={v}' for k, v in build_args.items())})")
    # the legacy builder, as tools/kube/images.sh: no buildx plugin needed
    subprocess.run(["nice", "-n", "10", *argv], check=True,
                   env={**os.environ, "DOCKER_BUILDKIT": "0"}, stdout=subprocess.DEVNULL)


def build(*, tag: str, base: str, version: str) -> None:
    if not (REPO / "build" / "wheels" / ".stamp").exists():
        raise SystemExit("build/wheels missing: run `make wheels` first")
    ensure_dockerd()
    # host network for apt (nfs-common); pip installs only from build/wheels (PIP_NO_INDEX)
    docker_build(tag=tag, context=REPO, dockerfile=REPO / "Dockerfile",
                 build_args={"BASE_IMAGE": base, "PIP_NO_INDEX": "1",
                             "NASBLADE_SOFTWARE_VERSION": version}, network="host")
    log(f"image {tag}: {image_id(tag)[:19]}")


def build_client(*, tag: str, base: str) -> None:
    ensure_dockerd()
    with tempfile.TemporaryDirectory(prefix="nfs-client-") as d:
        ctx = Path(d)
        shutil.copy(HERE / "nfs-client" / "Dockerfile", ctx / "Dockerfile")
        shutil.copy(HERE / "nfsclient.py", ctx / "nfsclient.py")
        (ctx / "wheels").mkdir()
        pip = REPO / ".venv" / "bin" / "pip"
        subprocess.run([str(pip), "wheel", "-q", "--no-deps", "-w", str(ctx / "wheels"), "libnfs"],
                       check=True, env={**os.environ,
                                        "PIP_CACHE_DIR": str(nbcluster.CACHE / "pip")})
        # apt in the build needs the Debian mirror: host network (dockerd runs without a bridge)
        docker_build(tag=tag, context=ctx, dockerfile=ctx / "Dockerfile",
                     build_args={"BASE_IMAGE": base}, network="host")


def _kind_cluster() -> str | None:
    """The kind cluster's name when the e2e cluster is kind (tools/kube/nbcluster.py)."""
    if (nbcluster.STATE_ROOT / "kind.kubeconfig").exists() and nbcluster.kind_available():
        return os.environ.get("NASBLADE_KIND_NAME", "nasblade")
    return None


def cluster_running() -> bool:
    """True when images can be imported: a kind cluster, or the local containerd answers."""
    if _kind_cluster():
        return True
    r = subprocess.run(["ctr", "-a", nbcluster.CONTAINERD_SOCK, "--connect-timeout", "2s",
                        "version"], capture_output=True, check=False)
    return r.returncode == 0


def load(tags: list[str]) -> None:
    kind = _kind_cluster()
    for tag in tags:
        if not image_id(tag):
            raise SystemExit(f"image {tag} not built: run `make images`")
        if kind:
            log(f"kind: loading {tag} into {kind}")
            subprocess.run(["kind", "load", "docker-image", "--name", kind, tag], check=True)
            continue
        tar = save(tag)
        stamp = tar.with_suffix(".loaded")
        ctr = ["ctr", "-a", nbcluster.CONTAINERD_SOCK, "-n", "k8s.io"]
        have = subprocess.run([*ctr, "images", "ls", "-q"], capture_output=True, text=True,
                              check=True).stdout.split()
        if f"docker.io/{tag}" in have and stamp.exists() and \
                stamp.read_text() == tar.with_suffix(".id").read_text():
            log(f"containerd: {tag} already imported")
            continue
        log(f"containerd: importing {tag}")
        for attempt in range(3):
            # containerd can lose a race with its own snapshot garbage collection ("parent
            # snapshot ... does not exist"), e.g. right after a namespace's pods were removed;
            # the same import run again succeeds
            done = subprocess.run([*ctr, "images", "import", str(tar)], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, text=True)
            if done.returncode == 0:
                break
            log(f"containerd: importing {tag} failed (attempt {attempt + 1}): {done.stderr.strip()}")
            time.sleep(2)
        else:
            raise subprocess.CalledProcessError(done.returncode, done.args, stderr=done.stderr)
        stamp.write_text(tar.with_suffix(".id").read_text())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build the nasblade image")
    b.add_argument("--image", required=True)
    b.add_argument("--base", required=True)
    b.add_argument("--version", required=True)
    c = sub.add_parser("build-client", help="build the NFS client image")
    c.add_argument("--image", required=True)
    c.add_argument("--base", required=True)
    ld = sub.add_parser("load", help="import images into the e2e cluster")
    ld.add_argument("images", nargs="+")
    ld.add_argument("--if-running", action="store_true",
                    help="only when a cluster runs (else say so and succeed)")
    a = ap.parse_args(argv)
    if a.cmd == "build":
        build(tag=a.image, base=a.base, version=a.version)
    elif a.cmd == "build-client":
        build_client(tag=a.image, base=a.base)
    elif a.if_running and not cluster_running():
        log("no cluster running: images built, not loaded (`make image-load` after `make cluster-up`)")
    else:
        load(a.images)
    return 0


if __name__ == "__main__":
    sys.exit(main())
