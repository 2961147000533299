"""A cluster group's file systems change while its blades run (``PUT /v1/cluster/config``).

What the operator does when a DiskArray gains or loses a file system (a CSI volume, an
administrator's edit), done here by hand on a ``nasblade up`` array: the new file system's LU
is made and formatted, the group is allowed to open it (the controller re-reads the access
file), and every blade is sent the group's configuration with the file system added. Its home
blade must serve it without any process restarting, a real NFS client (libnfs) must write and
read it, new exports and new ports must apply to it in place, a survivor must take it over when that blade's file processor is killed (and the
restarted blade take it back, knowing it from the rewritten configuration file), and once
the file system is removed from the configuration it must be released (no NFS, no
reservation) while the first file system is served throughout. Changes a running blade cannot
apply are refused with the API's error and change nothing.
"""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import libnfs
import pytest
from conftest import ArrayUp, expect, wait_for
from nasblade.bladeapi.client import BladeAPIError, FPControlClient
from nasblade.fs import fs as fsmod
from nasblade.nbd.client import NBDBlockDevice

pytestmark = pytest.mark.component


def _add_fs2(arr: ArrayUp) -> dict[str, Any]:
    """LU ``fs-fs2`` made and formatted; returns its ``serve`` section (``_open_fs2`` lets
    group g1 open it)."""
    arr.control.create_lu("fs-fs2", 64 << 20)
    with NBDBlockDevice.connect(arr.nbd_url("fs-fs2")) as dev:
        fsmod.mkfs(dev, root_mode=0o777)
        dev.flush()
    fs1 = arr.nfs
    return {"address": f"127.{random.randint(100, 250)}.{random.randint(1, 250)}.{random.randint(2, 250)}",
            "nfsPort": fs1["nfsPort"], "mountPort": fs1["mountPort"], "portmapPort": None,
            "exports": [{"path": "/fs2", "subdir": "/", "clients": ["127.0.0.0/8"], "access": "rw",
                         "rootSquash": True}]}


def _open_fs2(arr: ArrayUp) -> None:
    """Group g1 may open ``fs-fs2``: the controller re-reads its NBD access file."""
    access = arr.data_dir / "tls" / "access.json"
    policy = json.loads(access.read_text())
    policy["groups"]["g1"] = [*policy["groups"]["g1"], "fs-fs2"]
    access.write_text(json.dumps(policy))


def _url(serve: dict[str, Any], path: str = "") -> str:
    return (f"nfs://{serve['address']}/fs2{path}?version=3&nfsport={serve['nfsPort']}"
            f"&mountport={serve['mountPort']}")


def _free_port(address: str) -> int:
    with socket.socket() as s:
        s.bind((address, 0))
        return int(s.getsockname()[1])


def _put_all(arr: ArrayUp, config: dict[str, Any]) -> list[dict[str, Any]]:
    return [arr.api(b, "PUT", "/v1/cluster/config", config) for b in sorted(arr.blades)]


def _pids(arr: ArrayUp) -> dict[str, Any]:
    return {b: {p: arr.part_status(b, p)["pid"] for p in ("bp", "fp")} for b in arr.blades}


def test_file_system_added_served_taken_over_and_removed_while_blades_run(make_array: Any) -> None:
    arr: ArrayUp = make_array()
    before = arr.api("g1-0", "GET", "/v1/cluster/config")
    assert [f["name"] for f in before["fileSystems"]] == ["fs1"]
    pids = _pids(arr)
    serve = _add_fs2(arr)
    added = {**before, "fileSystems": [*before["fileSystems"],
                                       {"name": "fs2", "lu": "fs-fs2", "home": "g1-1", "serve": serve}]}

    answers = _put_all(arr, added)
    assert all(a["added"] == ["fs2"] and a["removed"] == [] for a in answers), answers
    assert all(sorted(arr.api(b, "GET", "/v1/status")["knownFileSystems"]) == ["fs1", "fs2"] for b in arr.blades)
    # as on Kubernetes, where the kubelet brings the controller the new access file up to a
    # minute later: the home blade's takeover is refused until then, and must not count as done
    time.sleep(3)
    assert not arr.served_by("g1-1", "fs2")
    assert "fs2" not in arr.cluster("g1-1")["serving"]
    # a takeover being retried holds up no other on its blade: g1-1 takes fs1 over while its
    # takeover of fs2 is still being refused, and g1-0 takes fs1 back
    assert "fs2" in arr.cluster("g1-1")["pendingTakeovers"]
    arr.api("g1-1", "POST", "/v1/cluster/filesystems/fs1/takeover", {"force": False})
    assert "fs1" in arr.cluster("g1-1")["serving"]
    assert "fs2" in arr.cluster("g1-1")["pendingTakeovers"]  # still retrying: it did not wait for it
    arr.api("g1-0", "POST", "/v1/cluster/filesystems/fs1/takeover", {"force": False})
    expect(arr, lambda: arr.served_by("g1-0", "fs1"), timeout=30, what="fs1 back on g1-0")
    # removed while its takeover is refused: the retries stop and no reservation is left (a
    # CSI volume deleted right after it was made must not keep its LU reserved), then it is
    # added again
    answers = _put_all(arr, before)
    assert [a["removed"] for a in answers] == [["fs2"], ["fs2"]], answers
    assert "fs2" not in arr.cluster("g1-1")["pendingTakeovers"]
    assert arr.control.get_reservation("fs-fs2").get("holder") is None
    time.sleep(2)
    assert arr.control.get_reservation("fs-fs2").get("holder") is None  # no attempt after the removal
    answers = _put_all(arr, added)
    assert all(a["added"] == ["fs2"] for a in answers), answers
    _open_fs2(arr)
    expect(arr, lambda: arr.served_by("g1-1", "fs2"), timeout=90, what="the home blade serves fs2")
    holder = arr.control.get_reservation("fs-fs2")
    assert holder["holder"] == "g1-1", holder

    content = os.urandom(1 << 20)
    nfs = libnfs.NFS(_url(serve))
    f = nfs.open("/new.bin", "wb")
    f.write(bytearray(content))
    f.flush()  # COMMIT
    f.close()
    assert bytes(libnfs.NFS(_url(serve)).open("/new.bin", "rb").read()) == content
    assert _pids(arr) == pids  # no process restarted to serve it

    # narrowed exports apply at once to the blade serving it, in place (no remount)
    def with_clients(clients: list[str]) -> dict[str, Any]:
        fs2 = {"name": "fs2", "lu": "fs-fs2", "home": "g1-1",
               "serve": {**serve, "exports": [{**serve["exports"][0], "clients": clients}]}}
        return {**before, "fileSystems": [*before["fileSystems"], fs2]}

    def listing() -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(["nfs-ls", _url(serve)], capture_output=True, timeout=60)

    assert b"new.bin" in listing().stdout
    fp = FPControlClient(str(arr.data_dir / "run" / "g1-1" / "fp.sock"))
    verifier = fp.file_systems()["fs2"]["writeVerifier"]
    answers = _put_all(arr, with_clients(["10.9.9.0/24"]))
    assert [a["exportsApplied"] for a in answers] == [[], ["fs2"]], answers
    refused = listing()
    assert refused.returncode != 0 and b"new.bin" not in refused.stdout, refused
    answers = _put_all(arr, with_clients(["127.0.0.0/8"]))
    assert [a["exportsApplied"] for a in answers] == [[], ["fs2"]], answers
    assert b"new.bin" in listing().stdout
    assert bytes(libnfs.NFS(_url(serve)).open("/new.bin", "rb").read()) == content
    assert _pids(arr) == pids
    assert fp.file_systems()["fs2"]["writeVerifier"] == verifier  # not remounted

    # new ports apply at once too (an operator giving each file system its own): new
    # listeners in place, the old ones closed, not remounted, no process restarted
    old_serve, serve = serve, {**serve, "nfsPort": _free_port(serve["address"]),
                               "mountPort": _free_port(serve["address"])}
    answers = _put_all(arr, with_clients(["127.0.0.0/8"]))
    assert [a["listenApplied"] for a in answers] == [[], ["fs2"]], answers
    assert fp.file_systems()["fs2"]["endpoints"]["nfs"].endswith(f":{serve['nfsPort']}")
    assert bytes(libnfs.NFS(_url(serve)).open("/new.bin", "rb").read()) == content
    with pytest.raises(OSError), socket.create_connection((old_serve["address"], old_serve["nfsPort"]), timeout=5):
        pass
    assert fp.file_systems()["fs2"]["writeVerifier"] == verifier
    assert _pids(arr) == pids

    # the peer learnt fs2 from the same request: it takes it over from a dead file processor
    epoch = int(holder["epoch"])
    killed = arr.kill("g1-1", "fp")
    wait_for(lambda: (r := arr.control.get_reservation("fs-fs2"))["holder"] == "g1-0" and r["epoch"] > epoch,
             timeout=30)
    expect(arr, lambda: arr.served_by("g1-0", "fs2"), timeout=30, what="the survivor serves fs2")
    out = subprocess.run(["nfs-cat", _url(serve, "/new.bin")], capture_output=True, timeout=60, check=True)
    assert out.stdout == content
    # the survivor power-fenced the whole blade (the chassis killed its block processor too):
    # nasblade up restarts both, and the new block processor knows fs2 from the configuration
    # file the reconfiguration rewrote, so it takes its file system back
    arr.restarted("g1-1", "fp", killed)
    expect(arr, lambda: arr.served_by("g1-1", "fs2"), timeout=90, what="fs2 given back to its home blade")
    assert arr.served_by("g1-0", "fs1")

    # removed from the configuration: released, reservation and record dropped, not served
    answers = _put_all(arr, before)
    assert [a["removed"] for a in answers] == [["fs2"], ["fs2"]], answers
    assert not any(arr.served_by(b, "fs2") for b in arr.blades)
    assert arr.control.get_reservation("fs-fs2").get("holder") is None
    wait_for(lambda: all("fs2" not in arr.cluster(b)["ownership"] for b in arr.blades), timeout=10)  # next tick
    with pytest.raises(OSError), socket.create_connection((serve["address"], serve["nfsPort"]), timeout=5):
        pass
    arr.control.delete_lu("fs-fs2")  # nothing holds it any more
    assert arr.served_by("g1-0", "fs1")
    assert _pids(arr)["g1-0"] == pids["g1-0"]


def test_changes_a_running_blade_cannot_apply_are_refused(make_array: Any) -> None:
    arr: ArrayUp = make_array()
    before = arr.api("g1-0", "GET", "/v1/cluster/config")

    def refused(body: Any) -> tuple[int, str]:
        with pytest.raises(BladeAPIError) as err:
            arr.api("g1-0", "PUT", "/v1/cluster/config", body)
        return err.value.status, str(err.value)

    status, message = refused({**before, "members": ["g1-0", "g1-1", "g1-2"]})
    assert status == 409 and "members" in message and "restart" in message
    status, message = refused({**before, "heartbeatInterval": 0.5})
    assert status == 409 and "heartbeatInterval" in message
    no_serve = {"name": "fs9", "lu": "fs-fs9", "home": "g1-0"}
    status, message = refused({**before, "fileSystems": [*before["fileSystems"], no_serve]})
    assert status == 400 and "fs9" in message and "serve" in message
    bad_exports = {**no_serve, "serve": {"address": "127.0.0.9", "exports": [{"path": "/fs9"}]}}
    status, message = refused({**before, "fileSystems": [*before["fileSystems"], bad_exports]})
    assert status == 400 and "clients" in message
    status, message = refused({**before, "fileSystems": [{**before["fileSystems"][0], "home": "g9-0"}]})
    assert status == 400 and "home" in message
    status, _ = refused(["not", "an", "object"])
    assert status == 400
    # the fs1 LU cannot move under a blade that serves it
    owner = wait_for(arr.owner)[0]
    moved = {**before, "fileSystems": [{**before["fileSystems"][0], "lu": "fs-other"}]}
    with pytest.raises(BladeAPIError) as err:
        arr.api(owner, "PUT", "/v1/cluster/config", moved)
    assert err.value.status == 409 and "release" in str(err.value)
    # nothing changed
    assert arr.api("g1-0", "GET", "/v1/cluster/config") == before
    assert arr.served_by(owner, "fs1")
    assert sorted(arr.api("g1-0", "GET", "/v1/status")["knownFileSystems"]) == ["fs1"]


def test_config_of_a_restarted_block_processor_names_a_file_system_its_flags_do_not(tmp_path: Path) -> None:
    """A blade pod's block processor restarts with its original ``--fs-spec`` flags, but the
    kubelet has brought the newer configuration (the pod's annotation) into its file: the
    configuration's ``serve`` sections win (``cluster.member._specs``)."""
    from nasblade.blockproc.core import BlockProcessor, Settings
    from nasblade.cluster.config import parse
    from nasblade.cluster.member import _specs

    bp = BlockProcessor(Settings(blade="g1-0", group="g1", fs_specs={"fs1": {"lu": "fs-fs1", "address": "old"}}))
    cfg = parse({"group": "g1", "members": ["g1-0"], "fileSystems": [
        {"name": "fs1", "lu": "fs-fs1", "home": "g1-0"},
        {"name": "fs2", "lu": "fs-fs2", "home": "g1-0", "serve": {
            "address": "0.0.0.0", "nfsPort": 2049, "mountPort": 20048, "portmapPort": 111,
            "exports": [{"path": "/fs2", "clients": ["10.0.0.0/8"]}]}}]})
    specs = _specs(cfg, bp)
    assert specs["fs1"] == {"lu": "fs-fs1", "address": "old"}
    assert specs["fs2"]["lu"] == "fs-fs2" and specs["fs2"]["address"] == "0.0.0.0"
