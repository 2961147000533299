"""Building a blade software bundle: a zipapp of this project's own ``nasblade`` package.

The bundle runs with the interpreter of the blade image (``python bundle.pyz ROLE ...``); its
``__main__`` is the ``nasblade`` CLI, so ``python bundle.pyz file-processor ...`` starts the file
processor from the bundle's code rather than the installed one. Third-party dependencies
(aiohttp, PyYAML, apsw) come from the image. The archive is reproducible: same sources, same
bytes, same sha256 (fixed timestamps, sorted entries), so pushing the same build twice is
visible as the same checksum.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import nasblade

_MAIN = b"""import sys

from nasblade.cli import main

sys.exit(main())
"""
_EPOCH = (2020, 1, 1, 0, 0, 0)


def _add(zf: zipfile.ZipFile, name: str, data: bytes) -> None:
    info = zipfile.ZipInfo(name, date_time=_EPOCH)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = 0o644 << 16
    zf.writestr(info, data)


def build(*, version: str, package_dir: Path | None = None) -> bytes:
    """Return the bytes of a zipapp holding the ``nasblade`` package and a version stamp."""
    root = package_dir or Path(nasblade.__file__).resolve().parent
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        _add(zf, "__main__.py", _MAIN)
        for path in sorted(root.rglob("*.py")):
            if "__pycache__" in path.parts:
                continue
            rel = path.relative_to(root.parent).as_posix()
            _add(zf, rel, path.read_bytes())
        _add(zf, "nasblade/BUNDLE_VERSION", version.encode() + b"\n")
    return b"#!/usr/bin/env python3\n" + buf.getvalue()


def running_version() -> str:
    """The version of the code running in this process.

    ``BUNDLE_VERSION`` inside a bundle; ``dev-<package version>`` for an installed checkout.
    """
    import pkgutil

    try:
        data = pkgutil.get_data("nasblade", "BUNDLE_VERSION")
    except OSError:
        data = None
    if data:
        return data.decode().strip()
    return f"dev-{nasblade.__version__}"
