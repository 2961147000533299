"""Placing a verified bundle where the boot shim finds it (blade side of claim 12).

The block processor calls ``install`` at boot: it reads the selected bundle from the program
LU through ``ProgramStore`` (which verifies the sha256), writes it to
``SOFTWARE_DIR/<version>.pyz`` through a temporary file, and only then replaces
``SOFTWARE_DIR/current.json`` atomically. Any failure (missing version, corrupted bundle,
unreadable catalog) raises ``ProgramError`` before anything the blade already has is touched,
so the blade keeps the version it was running. The boot shim (``nasblade.program.boot``) reads
``current.json``, checks the file's sha256 once more and runs it.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nasblade.program.catalog import ProgramError, ProgramStore

CURRENT = "current.json"


@dataclass(frozen=True)
class Installed:
    version: str
    sha256: str
    path: Path
    installed: float

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "sha256": self.sha256,
            "path": str(self.path),
            "installed": self.installed,
        }


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def current(software_dir: Path) -> Installed | None:
    """What the boot shim will run, or ``None`` if nothing was ever installed."""
    try:
        d = json.loads((software_dir / CURRENT).read_text())
        return Installed(
            version=str(d["version"]),
            sha256=str(d["sha256"]),
            path=Path(d["path"]),
            installed=float(d["installed"]),
        )
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError) as exc:
        raise ProgramError(f"{software_dir / CURRENT} is malformed: {exc}") from exc


def install(store: ProgramStore, *, version: str | None, software_dir: Path) -> Installed:
    """Fetch ``version`` (or the catalog's selected one), verify it, make it current."""
    entry = store.resolve(version)
    data = store.read_bundle(entry)
    software_dir.mkdir(parents=True, exist_ok=True)
    target = software_dir / f"{entry.version}.pyz"
    _atomic_write(target, data)
    inst = Installed(version=entry.version, sha256=entry.sha256, path=target, installed=time.time())
    _atomic_write(software_dir / CURRENT, json.dumps(inst.to_json(), sort_keys=True).encode())
    return inst


def verify(inst: Installed) -> None:
    """Check an installed bundle file still has the sha256 it was installed with."""
    try:
        data = inst.path.read_bytes()
    except OSError as exc:
        raise ProgramError(f"installed bundle {inst.path} cannot be read: {exc}") from exc
    digest = hashlib.sha256(data).hexdigest()
    if digest != inst.sha256:
        raise ProgramError(
            f"installed bundle {inst.path} is corrupted: sha256 {digest}, expected {inst.sha256}"
        )
