"""The CSI protobuf and gRPC code, generated from the pinned spec's ``csi.proto`` on first use.

No maintained PyPI package ships CSI's generated Python code, so ``csi.proto`` of the release
pinned in ``tools/kube/csi.sh`` (fetched through the Go module proxy into the module cache) is
compiled with grpcio-tools into ``$NASBLADE_CACHE/csi/<version>/`` the first time the driver
starts, and loaded from there. ``NASBLADE_CSI_PROTO`` names another ``csi.proto`` (an image
copies it in at build time). Nothing generated is committed.
"""

from __future__ import annotations

import functools
import importlib
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

#: tools/kube/csi.sh pins the same release (the one csi-sanity is built against)
SPEC_VERSION = "v1.13.0"
_REPO = Path(__file__).resolve().parents[2]


def cache_dir() -> Path:
    root = Path(os.environ.get("NASBLADE_CACHE", Path.home() / ".cache" / "nasblade"))
    return root / "csi" / SPEC_VERSION


def _proto_file() -> Path:
    given = os.environ.get("NASBLADE_CSI_PROTO")
    if given:
        return Path(given)
    script = _REPO / "tools" / "kube" / "csi.sh"
    if not script.exists():
        raise RuntimeError("csi.proto: set NASBLADE_CSI_PROTO (no tools/kube/csi.sh beside this install)")
    out = subprocess.run([str(script), "spec"], check=True, capture_output=True, text=True)
    return Path(out.stdout.strip().splitlines()[-1])


def generate(dest: Path) -> None:
    """Compile csi.proto into ``dest`` (csi_pb2.py, csi_pb2_grpc.py); atomic per directory."""
    from grpc_tools import protoc  # build-time dependency (the ``csi`` extra)

    proto = _proto_file()
    include = Path(protoc.__file__).parent / "_proto"
    tmp = dest.with_name(dest.name + f".tmp{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    rc = protoc.main(["protoc", f"-I{proto.parent}", f"-I{include}", f"--python_out={tmp}",
                      f"--grpc_python_out={tmp}", str(proto)])
    if rc != 0:
        raise RuntimeError(f"protoc failed on {proto} (exit {rc})")
    (tmp / "csi.proto.src").write_text(str(proto) + "\n")
    try:
        tmp.rename(dest)
    except OSError:  # another process generated it first
        if not (dest / "csi_pb2_grpc.py").exists():
            raise


@functools.cache
def load() -> tuple[ModuleType, ModuleType]:
    """``(csi_pb2, csi_pb2_grpc)``, generated first if the cache does not have them."""
    dest = cache_dir()
    if not (dest / "csi_pb2_grpc.py").exists():
        dest.parent.mkdir(parents=True, exist_ok=True)
        generate(dest)
    if str(dest) not in sys.path:
        sys.path.insert(0, str(dest))  # csi_pb2_grpc imports csi_pb2 as a top-level module
    return importlib.import_module("csi_pb2"), importlib.import_module("csi_pb2_grpc")
