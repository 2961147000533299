"""``Volume.set_exports``: a served file system's export table changed in place (what the file
processor does when its blade is given new exports, ``PUT /v1/filesystems/{name}/exports``).
A bad table changes nothing; a good one is what the next MOUNT and NFS calls see."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
from nasblade.blockdev import FileBlockDevice
from nasblade.fs import fs as fsmod
from nasblade.nfs import exports, volume


def _volume(tmp_path: Path) -> tuple[volume.Volume, exports.Export]:
    dev = FileBlockDevice(tmp_path / "lu.img", size=64 << 20)
    fsmod.mkfs(dev)
    fs = fsmod.FileSystem(dev)
    fs.mkdir(fsmod.ROOT_INO, b"sub", fsmod.ROOT)
    fs.commit()
    wide = exports.Export.build("/x", ["10.0.0.0/8"])
    return volume.Volume.open("fs", fs, [wide]), wide


def test_new_exports_replace_the_table_at_once(tmp_path: Path) -> None:
    vol, wide = _volume(tmp_path)
    narrow = exports.Export.build("/x", ["10.1.2.3/32"], access="ro")
    sub = exports.Export.build("/s", ["10.0.0.0/8"], subdir="/sub")
    vol.set_exports([narrow, sub])
    got = vol.export_by_path("/x")
    assert got is not None and got.allows("10.1.2.3") and not got.allows("10.9.9.9") and got.readonly
    assert vol.export_by_path("/s") is not None
    assert vol.roots[sub.export_id] == vol.fs.lookup(fsmod.ROOT_INO, b"sub", fsmod.ROOT)
    vol.set_exports([exports.Export.build("/s", ["10.0.0.0/8"], subdir="/sub")])
    assert vol.export_by_path("/x") is None  # gone: its handles are stale from now on
    assert wide.export_id not in vol.exports


def test_a_bad_table_changes_nothing(tmp_path: Path) -> None:
    vol, _ = _volume(tmp_path)
    before = (dict(vol.exports), dict(vol.roots))
    with pytest.raises(fsmod.FsError):
        vol.set_exports([exports.Export.build("/y", ["10.0.0.0/8"]),
                         exports.Export.build("/z", ["10.0.0.0/8"], subdir="/missing")])
    assert (vol.exports, vol.roots) == before


def test_mounting_leaves_out_an_export_whose_directory_is_gone(tmp_path: Path) -> None:
    """At mount (a takeover), an export of a deleted directory volume is left out and the rest
    served; only when no export resolves does the mount fail."""
    vol, wide = _volume(tmp_path)
    gone = exports.Export.build("/x/pv-gone", ["10.0.0.0/8"], subdir="/pv-gone")
    sub = exports.Export.build("/s", ["10.0.0.0/8"], subdir="/sub")
    again = volume.Volume.open("fs", vol.fs, [wide, gone, sub])
    assert sorted(e.path for e in again.exports.values()) == ["/s", "/x"]
    with pytest.raises(fsmod.FsError) as err:
        volume.Volume.open("fs", vol.fs, [gone])
    assert err.value.errno == errno.ENOENT
