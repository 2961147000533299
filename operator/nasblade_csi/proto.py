"""The CSI protobuf and gRPC code, generated from the pinned spec's ``csi.proto`` on first use
(and the kubelet's plugin-registration API the same way, ``load_registration``).

No maintained PyPI package ships CSI's generated Python code, so ``csi.proto`` of the release
pinned in ``tools/kube/csi.sh`` (fetched through the Go module proxy into the module cache) is
compiled with grpcio-tools into ``$NASBLADE_CACHE/csi/<version>/`` the first time the driver
starts, and loaded from there. ``NASBLADE_CSI_PROTO`` names another ``csi.proto``; the image
compiles both protos at build time into ``$NASBLADE_CSI_CODE`` (Dockerfile). Nothing generated
is committed.
"""

from __future__ import annotations

import functools
import importlib
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

#: tools/kube/csi.sh pins the same release (the one csi-sanity is built against)
SPEC_VERSION = "v1.13.0"
_REPO = Path(__file__).resolve().parents[2]


def cache_dir() -> Path:
    """Where the generated code is: ``$NASBLADE_CSI_CODE/<version>`` (the image's, compiled at
    build time), else ``$NASBLADE_CACHE/csi/<version>``."""
    built = os.environ.get("NASBLADE_CSI_CODE")
    if built:
        return Path(built) / SPEC_VERSION
    root = Path(os.environ.get("NASBLADE_CACHE", Path.home() / ".cache" / "nasblade"))
    return root / "csi" / SPEC_VERSION


def _fetched(command: str, env: str) -> Path:
    """A proto file: ``$env`` when set, else what ``tools/kube/csi.sh COMMAND`` fetched."""
    given = os.environ.get(env)
    if given:
        return Path(given)
    script = _REPO / "tools" / "kube" / "csi.sh"
    if not script.exists():
        raise RuntimeError(f"{command} proto: set {env} (no tools/kube/csi.sh beside this install)")
    out = subprocess.run([str(script), command], check=True, capture_output=True, text=True)
    return Path(out.stdout.strip().splitlines()[-1])


def generate(dest: Path, proto: Path | None = None, *, module: str = "csi") -> None:
    """Compile ``proto`` (default: csi.proto) into ``dest`` as ``<module>_pb2.py`` and
    ``<module>_pb2_grpc.py``; atomic per directory."""
    from grpc_tools import protoc  # build-time dependency (the ``csi`` extra)

    proto = proto or _fetched("spec", "NASBLADE_CSI_PROTO")
    include = Path(protoc.__file__).parent / "_proto"
    tmp = dest.with_name(dest.name + f".tmp{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    src = tmp / "src"
    src.mkdir(exist_ok=True)
    named = src / f"{module}.proto"  # the generated modules are named after the file
    named.write_bytes(proto.read_bytes())
    rc = protoc.main(["protoc", f"-I{src}", f"-I{include}", f"--python_out={tmp}",
                      f"--grpc_python_out={tmp}", str(named)])
    if rc != 0:
        raise RuntimeError(f"protoc failed on {proto} (exit {rc})")
    (tmp / f"{module}.proto.src").write_text(str(proto) + "\n")
    try:
        tmp.rename(dest)
    except OSError:  # another process generated it first
        if not (dest / f"{module}_pb2_grpc.py").exists():
            raise


def _load(dest: Path, module: str, proto: Callable[[], Path]) -> tuple[ModuleType, ModuleType]:
    if not (dest / f"{module}_pb2_grpc.py").exists():
        dest.parent.mkdir(parents=True, exist_ok=True)
        generate(dest, proto(), module=module)
    if str(dest) not in sys.path:
        sys.path.insert(0, str(dest))  # <module>_pb2_grpc imports <module>_pb2 as a top-level module
    return importlib.import_module(f"{module}_pb2"), importlib.import_module(f"{module}_pb2_grpc")


@functools.cache
def load() -> tuple[ModuleType, ModuleType]:
    """``(csi_pb2, csi_pb2_grpc)``, generated first if the cache does not have them."""
    return _load(cache_dir(), "csi", lambda: _fetched("spec", "NASBLADE_CSI_PROTO"))


@functools.cache
def load_registration() -> tuple[ModuleType, ModuleType]:
    """``(pluginregistration_pb2, pluginregistration_pb2_grpc)``: the kubelet's plugin
    registration API (k8s.io/kubelet ``pkg/apis/pluginregistration/v1/api.proto``; or
    ``NASBLADE_REGISTRATION_PROTO``), which ``nasblade_csi.registration`` serves."""
    return _load(cache_dir().parent / "pluginregistration-v1", "pluginregistration",
                 lambda: _fetched("registration", "NASBLADE_REGISTRATION_PROTO"))
