"""Program storage (claim 12): catalog, bundles, install and the boot shim.

Library tests run on a ``FileBlockDevice``; the boot shim test runs a real bundle (zipapp of
this checkout) in a subprocess.
"""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from nasblade.blockdev import FileBlockDevice
from nasblade.program import bundle, install
from nasblade.program.catalog import CATALOG_COPY, ProgramError, ProgramStore


def test_push_two_versions_select_and_install_each(device: FileBlockDevice, tmp_path: Path) -> None:
    store = ProgramStore(device)
    assert store.catalog().bundles == ()
    e1 = store.push(b"one" * 1000, version="1.0")
    e2 = store.push(b"two" * 5000, version="2.0")
    assert e2.offset >= e1.offset + 4096 and e2.offset % 4096 == 0
    cat = store.catalog()
    assert cat.versions() == ["1.0", "2.0"] and cat.current == "1.0"  # first push is selected
    sw = tmp_path / "sw"
    assert install.install(store, version=None, software_dir=sw).version == "1.0"
    store.select("2.0")
    inst = install.install(store, version=None, software_dir=sw)
    assert inst.version == "2.0" and inst.path.read_bytes() == b"two" * 5000
    assert install.current(sw) == inst
    # an explicit version overrides the catalog's selection
    assert install.install(store, version="1.0", software_dir=sw).version == "1.0"
    with pytest.raises(ProgramError, match="already in the program catalog"):
        store.push(b"x", version="1.0")
    with pytest.raises(ProgramError, match="invalid version"):
        store.push(b"x", version="../etc")


def test_corrupted_bundle_is_refused_and_running_version_stays(
    device: FileBlockDevice, tmp_path: Path
) -> None:
    store = ProgramStore(device)
    store.push(b"good" * 1000, version="1.0")
    e2 = store.push(b"bad!" * 1000, version="2.0", select=True)
    sw = tmp_path / "sw"
    install.install(store, version="1.0", software_dir=sw)
    device.pwrite(e2.offset + 10, b"\x00\xff")
    with pytest.raises(ProgramError, match=r"bundle 2.0 is corrupted: sha256 .* does not match"):
        install.install(store, version=None, software_dir=sw)
    kept = install.current(sw)
    assert kept is not None and kept.version == "1.0"
    install.verify(kept)
    assert not (sw / "2.0.pyz").exists()


def test_missing_version_and_unreadable_catalog_are_refused(
    device: FileBlockDevice, tmp_path: Path
) -> None:
    store = ProgramStore(device)
    with pytest.raises(ProgramError, match="no selected version"):
        store.resolve(None)
    store.push(b"a" * 100, version="1.0")
    with pytest.raises(ProgramError, match=r"version 9.9 is not in the program catalog \(available: 1.0\)"):
        install.install(store, version="9.9", software_dir=tmp_path / "sw")
    store.push(b"b" * 100, version="2.0")  # catalog seq 2 in copy B, seq 1 in copy A
    # truncate the newest catalog copy: the previous catalog (only 1.0) is what readers see
    raw = device.pread(CATALOG_COPY, CATALOG_COPY)
    used = len(raw.rstrip(b"\0"))
    device.pwrite(CATALOG_COPY + used // 2, bytes(used - used // 2))
    assert store.catalog().versions() == ["1.0"]
    # truncate the other copy too: nothing valid is left, and the blade is told so
    raw = device.pread(0, CATALOG_COPY)
    used = len(raw.rstrip(b"\0"))
    device.pwrite(used // 2, bytes(used - used // 2))
    with pytest.raises(ProgramError, match="catalog is unreadable"):
        install.install(store, version=None, software_dir=tmp_path / "sw")
    assert install.current(tmp_path / "sw") is None


def test_no_room_is_refused(tmp_path: Path) -> None:
    dev = FileBlockDevice(tmp_path / "small.img", size=256 * 1024)
    store = ProgramStore(dev)
    with pytest.raises(ProgramError, match="no room on the program LU"):
        store.push(bytes(200 * 1024), version="big")
    assert store.catalog().bundles == ()


def test_bundle_is_reproducible_and_holds_the_package() -> None:
    a = bundle.build(version="1.0")
    assert a == bundle.build(version="1.0")
    import io

    with zipfile.ZipFile(io.BytesIO(a)) as zf:
        names = set(zf.namelist())
        assert {"__main__.py", "nasblade/cli.py", "nasblade/program/boot.py"} <= names
        assert zf.read("nasblade/BUNDLE_VERSION") == b"1.0\n"


def test_boot_shim_runs_the_installed_bundle(device: FileBlockDevice, tmp_path: Path) -> None:
    """The shim execs ``python <bundle> ROLE``; the bundle's own code (not the installed one) runs."""
    store = ProgramStore(device)
    store.push(bundle.build(version="7.1"), version="7.1")
    sw = tmp_path / "sw"
    install.install(store, version=None, software_dir=sw)
    out = subprocess.run(
        [sys.executable, "-c", "import sys; from nasblade.program import boot, install;"
         "import argparse; p = argparse.ArgumentParser(); boot.add_arguments(p);"
         "sys.exit(boot.run(p.parse_args(sys.argv[1:])))",
         "--software-dir", str(sw), "--wait", "0", "--", "software", "running"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert info == {"version": "7.1", "code": str(sw / "7.1.pyz" / "nasblade")}


def test_boot_shim_refuses_when_nothing_is_installed(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-c", "import sys, argparse; from nasblade.program import boot;"
         "p = argparse.ArgumentParser(); boot.add_arguments(p);"
         "sys.exit(boot.run(p.parse_args(sys.argv[1:])))",
         "--software-dir", str(tmp_path), "--wait", "0", "--", "file-processor"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert out.returncode == 2
    assert "no blade software installed" in out.stderr
    (tmp_path / "current.json").write_text(json.dumps(
        {"version": "1", "sha256": "00", "path": str(tmp_path / "1.pyz"), "installed": 0}))
    (tmp_path / "1.pyz").write_bytes(b"tampered")
    out = subprocess.run(
        [sys.executable, "-c", "import sys, argparse; from nasblade.program import boot;"
         "p = argparse.ArgumentParser(); boot.add_arguments(p);"
         "sys.exit(boot.run(p.parse_args(sys.argv[1:])))",
         "--software-dir", str(tmp_path), "--wait", "0", "--", "file-processor"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert out.returncode == 2 and "is corrupted" in out.stderr
