"""Linux's NFSv3 client (in a User-Mode Linux guest) against a file system of the array.

Each test boots the guest once (``guest`` fixture), mounts the ``kfs`` export of the array
(``nasblade_nfs``) through the forwarders and runs a workload whose results the guest writes
to ``/share``; the test asserts on those results and, where it says so, reads the same files
back on the host with libnfs, a client written by others. Every workload but the portmapper
check also runs against nfs-ganesha (``ganesha_nfs``) as the reference, with the same client and
the same assertions: where the two differ, ours is the defect unless RFC 1813 says otherwise. Mounts of the array lock through NLM (no ``nolock``; the guest runs rpcbind and
rpc.statd, ``test_kernel_locks.py`` tests the locks themselves); mounts of ganesha say ``nolock``
because its portmapper, where a client finds NLM, is out of the guest's reach here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import re
import sqlite3
import tarfile
from pathlib import Path
from typing import Any

import libnfs
import pytest
import uml
from conftest import KernelArray, NFSTarget
from nasblade.bladeapi.client import BladeClient

pytestmark = [pytest.mark.kernel, pytest.mark.component]
REPO = Path(__file__).resolve().parents[2]
MNT = "/mnt/nfs"
MIB = 1 << 20


def mount_opts(target: NFSTarget, *, ports: bool, extra: str = "") -> str:
    """``-o`` for the kernel: explicit ports, or none (the client asks the portmapper); locking
    (NLM) whenever the guest can reach the server's portmapper."""
    opts = "vers=3,proto=tcp,mountproto=tcp" + (",nolock" if target.portmap_port is None else "")
    if ports:
        opts += f",port={target.nfs_port},mountport={target.mount_port}"
    return opts + (f",{extra}" if extra else "")


def mount_cmd(target: NFSTarget, opts: str) -> str:
    return f"mount -t nfs -o {opts} 10.0.2.2:{target.export} {MNT}"


def run(guest: uml.Guest, target: NFSTarget, body: str, *, opts: str | None = None,
        files: dict[str, Path | bytes] | None = None, timeout: float = 900) -> uml.GuestResult:
    """Run ``body`` with the export mounted on /mnt/nfs (``$MOUNT`` remounts it) and unmount."""
    opts = opts or mount_opts(target, ports=True)
    script = f"""set -euo pipefail
MOUNT="{mount_cmd(target, opts)}"
remount() {{ umount {MNT}; $MOUNT; }}
$MOUNT
grep " {MNT} " /proc/mounts > /share/mounts.txt
{body}
umount {MNT}
"""
    result = guest.run(script, forwards=target.forwards, files=files, timeout=timeout)
    assert result.rc == 0, result.explain()
    return result


def dd_rate(text: str) -> str:
    """The throughput dd printed (``23.1 MB/s``)."""
    m = re.search(r"copied, [0-9.]+ s, ([0-9.]+ [kMG]?B/s)", text)
    assert m, text
    return m.group(1)


def mount_options(result: uml.GuestResult) -> dict[str, str]:
    [line] = (result.share / "mounts.txt").read_text().splitlines()
    _source, target, fstype, opts = line.split()[:4]
    assert fstype == "nfs" and target == MNT, line
    return dict(o.partition("=")[::2] for o in opts.split(","))


def host_read(target: NFSTarget, path: str) -> bytes:
    nfs = libnfs.NFS(target.url)
    data: bytes = nfs.open(path, "rb").read()
    return data


@pytest.mark.parametrize(("server", "ports", "mode", "size", "mib"), [
    pytest.param("nasblade", True, "hard", None, 64, id="ports-hard-default-rsize"),
    pytest.param("nasblade", True, "soft", 4096, 8, id="ports-soft-4k"),
    pytest.param("nasblade", False, "hard", 4096, 8, id="portmap-hard-4k"),
    pytest.param("nasblade", False, "soft", None, 32, id="portmap-soft-default-rsize"),
    pytest.param("ganesha", True, "hard", None, 64, id="ganesha-ports-hard-default-rsize"),
    pytest.param("ganesha", True, "soft", 4096, 8, id="ganesha-ports-soft-4k"),
])
def test_dd_round_trip(guest: uml.Guest, request: pytest.FixtureRequest, server: str, ports: bool, mode: str,
                       size: int | None, mib: int) -> None:
    """dd a file of random bytes in, read it back through a fresh mount, compare checksums in
    the guest, and read the same file on the host with libnfs."""
    target: NFSTarget = request.getfixturevalue(f"{server}_nfs")
    extra = mode + (f",rsize={size},wsize={size}" if size else "")
    if mode == "soft":
        extra += ",timeo=600,retrans=2"
    name = f"dd-{'p' if ports else 'm'}-{mode}-{size or 'dflt'}"
    result = run(guest, target, opts=mount_opts(target, ports=ports, extra=extra), body=f"""
head -c {mib}M /dev/urandom > /tmp/data
sha256sum < /tmp/data | cut -d' ' -f1 > /share/written.sha
dd if=/tmp/data of={MNT}/{name} bs=1M conv=fsync 2> /share/dd-write.txt
remount
dd if={MNT}/{name} bs=1M 2> /share/dd-read.txt | sha256sum | cut -d' ' -f1 > /share/read.sha
stat -c %s {MNT}/{name} > /share/size.txt
""")
    written = (result.share / "written.sha").read_text().strip()
    assert re.fullmatch(r"[0-9a-f]{64}", written)
    assert (result.share / "read.sha").read_text().strip() == written
    assert int((result.share / "size.txt").read_text()) == mib << 20
    opts = mount_options(result)
    assert opts["vers"] == "3" and opts["proto"] == "tcp" and mode in opts, opts
    assert ("nolock" in opts) == (server == "ganesha"), opts
    assert opts["mountport"] == str(target.mount_port), opts
    if size:
        assert opts["rsize"] == opts["wsize"] == str(size), opts
    else:
        assert int(opts["rsize"]) >= 65536 and int(opts["wsize"]) >= 65536, opts
    # given, or learnt from the portmapper: either way the ports the server listens on
    assert opts["port"] == str(target.nfs_port), opts
    assert hashlib.sha256(host_read(target, f"/{name}")).hexdigest() == written
    print(f"kernel NFS dd {server} {name} {mib} MiB: write {dd_rate((result.share / 'dd-write.txt').read_text())}, "
          f"read {dd_rate((result.share / 'dd-read.txt').read_text())}, run {result.seconds:.1f} s")


def test_portmapper_is_what_the_client_asks(guest: uml.Guest, nasblade_nfs: NFSTarget) -> None:
    """Through port 111 the guest's rpcinfo lists NFS v3 over TCP, and MOUNT v3, NLM v4, NSM v1 and
    itself over TCP and UDP (a DUMP over TCP), and the ports the array names answer a NULL call
    from the guest."""
    target = nasblade_nfs

    def uaddr(port: int) -> str:
        return f"10.0.2.2.{port >> 8}.{port & 255}"

    script = f"""set -e
rpcinfo -s 10.0.2.2
rpcinfo -a {uaddr(target.nfs_port)} -T tcp 100003 3
rpcinfo -a {uaddr(target.mount_port)} -T tcp 100005 3
rpcinfo -a {uaddr(target.nfs_port)} -T tcp 100021 4
"""
    result = guest.run(script, forwards=target.forwards, timeout=300)
    assert result.rc == 0, result.explain()
    netids = {(r[0], r[1]): set(r[2].split(",")) for line in result.stdout.splitlines()
              if len(r := line.split()) >= 3 and r[0].isdigit()}
    # NFS over TCP only; the portmapper, MOUNT, NLM and NSM over TCP and UDP
    assert netids == {("100000", "2"): {"tcp", "udp"}, ("100003", "3"): {"tcp"}, ("100005", "3"): {"tcp", "udp"},
                      ("100021", "4"): {"tcp", "udp"}, ("100024", "1"): {"tcp", "udp"}}, result.stdout
    assert "program 100003 version 3 ready and waiting" in result.stdout
    assert "program 100005 version 3 ready and waiting" in result.stdout
    assert "program 100021 version 4 ready and waiting" in result.stdout


def fio_job(result: uml.GuestResult, name: str) -> dict[str, Any]:
    doc = json.loads((result.share / f"{name}.json").read_text())
    [job] = doc["jobs"]
    assert isinstance(job, dict)
    return job


@pytest.mark.parametrize("server", ["nasblade", "ganesha"])
def test_fio_verify(guest: uml.Guest, request: pytest.FixtureRequest, server: str) -> None:
    """fio writes with crc32c checksums in every block and verifies them by reading back:
    buffered random writes, O_DIRECT sequential writes, and a mixed random read/write job."""
    target: NFSTarget = request.getfixturevalue(f"{server}_nfs")
    common = f"--directory={MNT} --ioengine=psync --verify=crc32c --do_verify=1 --verify_fatal=1 --output-format=json"
    result = run(guest, target, body=f"""
fio --name=randw --size=32M --bs=64k --rw=randwrite --fsync_on_close=1 {common} --output=/share/randw.json
fio --name=direct --size=16M --bs=1M --rw=write --direct=1 {common} --output=/share/direct.json
remount
fio --name=mixed --size=16M --bs=4k --rw=randrw --rwmixread=50 --verify_backlog=256 {common} --output=/share/mixed.json
""")
    for name, size in (("randw", 32 << 20), ("direct", 16 << 20)):
        job = fio_job(result, name)
        assert job["error"] == 0, job
        assert job["write"]["io_bytes"] == size, job["write"]
        assert job["read"]["io_bytes"] == size, job["read"]  # the verify pass read it all back
        mbps = job["write"]["bw_bytes"] / 1e6
        print(f"kernel NFS fio {server} {name}: write {mbps:.1f} MB/s, verify read {job['read']['bw_bytes'] / 1e6:.1f} MB/s")
    mixed = fio_job(result, "mixed")
    assert mixed["error"] == 0 and mixed["write"]["io_bytes"] > 0 and mixed["read"]["io_bytes"] > 0, mixed


@pytest.mark.parametrize("server", ["nasblade", "ganesha"])
def test_untar_and_diff(guest: uml.Guest, request: pytest.FixtureRequest, server: str, tmp_path: Path) -> None:
    """Untar the project's blade/ tree (packed on the host) and the guest's own /usr/share/doc
    (symlinks, many small files) onto the mount; a fresh mount must diff equal to the
    originals. The same against ganesha, the reference."""
    tarball = tmp_path / "blade.tar"
    with tarfile.open(tarball, "w") as tar:
        tar.add(REPO / "blade" / "nasblade", arcname="nasblade",
                filter=lambda ti: None if "__pycache__" in ti.name else ti)
    with tarfile.open(tarball) as tar:
        members = [m for m in tar.getmembers() if m.isfile()]
    target: NFSTarget = request.getfixturevalue(f"{server}_nfs")
    result = run(guest, target, files={"blade.tar": tarball}, body=f"""
rm -rf {MNT}/untar; mkdir -p {MNT}/untar/blade {MNT}/untar/doc /tmp/ref
tar -xf /share/blade.tar -C {MNT}/untar/blade
tar -cf /tmp/doc.tar -C /usr/share doc
tar -xf /tmp/doc.tar -C {MNT}/untar/doc
tar -xf /share/blade.tar -C /tmp/ref
remount
diff -r --no-dereference /tmp/ref {MNT}/untar/blade > /share/diff-blade.txt
diff -r --no-dereference /usr/share/doc {MNT}/untar/doc/doc > /share/diff-doc.txt
find {MNT}/untar/blade -type f | wc -l > /share/nfiles.txt
find {MNT}/untar/doc -type l | wc -l > /share/nlinks.txt
find {MNT}/untar/doc -type f | wc -l > /share/ndocfiles.txt
""")
    assert (result.share / "diff-blade.txt").read_text() == ""
    assert (result.share / "diff-doc.txt").read_text() == ""
    assert int((result.share / "nfiles.txt").read_text()) == len(members)
    assert int((result.share / "nlinks.txt").read_text()) > 0  # the tree had symlinks to compare
    assert int((result.share / "ndocfiles.txt").read_text()) > 50
    # one file read back by a client that is not the kernel's
    # (compared with the tarball: the working tree may change while the test runs)
    sample = next(m for m in members if m.name.endswith("cli.py"))
    with tarfile.open(tarball) as tar:
        packed = tar.extractfile(sample)
        assert packed is not None
        assert host_read(target, f"/untar/blade/{sample.name}") == packed.read()


POSIX_CHECKS = r'''
import errno, json, os, stat, sys
d = sys.argv[1]
os.chdir(d)
out = {}

def err(fn):
    try:
        fn()
    except OSError as e:
        return errno.errorcode[e.errno]
    return "ok"

def write(name, data, mode="wb"):
    with open(name, mode) as f:
        f.write(data)

def read(name):
    with open(name, "rb") as f:
        return f.read()

# rename over an existing file replaces it atomically
write("ra", b"A" * 10); write("rb", b"B" * 20)
old_ino = os.stat("ra").st_ino
os.rename("ra", "rb")
out["rename_over"] = [read("rb").decode(), os.path.exists("ra"), os.stat("rb").st_ino == old_ino]

# unlink of an open file: the fd still reads it; once closed, no trace (no .nfs* left)
write("open-unlinked", b"still here")
fd = os.open("open-unlinked", os.O_RDWR)
os.unlink("open-unlinked")
out["unlinked_read"] = os.pread(fd, 100, 0).decode()
os.pwrite(fd, b"STILL", 0)
out["unlinked_write_read"] = os.pread(fd, 100, 0).decode()
out["unlinked_visible"] = "open-unlinked" in os.listdir(".")
os.close(fd)  # the client's .nfs* stand-in goes away asynchronously: checked after the remount

# hard links and link counts
write("h1", b"hard")
os.link("h1", "h2")
out["nlink_after_link"] = [os.stat("h1").st_nlink, os.stat("h2").st_nlink, os.stat("h1").st_ino == os.stat("h2").st_ino]
os.unlink("h1")
out["nlink_after_unlink"] = [os.stat("h2").st_nlink, read("h2").decode()]
out["link_over_existing"] = err(lambda: os.link("h2", "rb"))
os.mkdir("dir")
out["dir_nlink"] = os.stat("dir").st_nlink
os.mkdir("dir/sub")
out["dir_nlink_with_sub"] = os.stat("dir").st_nlink

# chmod, chown, utimes
write("attrs", b"x")
os.chown("attrs", 1234, 5678)
st = os.stat("attrs")
out["chown"] = [st.st_uid, st.st_gid]
os.chmod("attrs", 0o4751)
out["chmod"] = oct(stat.S_IMODE(os.stat("attrs").st_mode))
os.utime("attrs", ns=(1_000_000_000_123_456_789, 1_200_000_000_987_654_321))
st = os.stat("attrs")
out["utimes_ns"] = [st.st_atime_ns, st.st_mtime_ns]
os.utime("attrs", (1_500_000_000, 1_600_000_000))
out["utimes_s"] = [int(os.stat("attrs").st_atime), int(os.stat("attrs").st_mtime)]

# O_EXCL: the second create fails
fd = os.open("excl", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
os.close(fd)
out["excl_twice"] = err(lambda: os.open("excl", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
out["excl_mode"] = oct(stat.S_IMODE(os.stat("excl").st_mode))

# names: 255 bytes is the limit
long = "n" * 255
write(long, b"long")
out["name_255"] = [long in os.listdir("."), read(long).decode()]
out["name_256"] = err(lambda: write("n" * 256, b"x"))

# sparse file: the hole reads as zeros; NFSv3 has no SEEK, so the client sees one data extent
with open("sparse", "wb") as f:
    f.write(b"head")
    f.seek(8 << 20)
    f.write(b"tail")
data = read("sparse")
st = os.stat("sparse")
fd = os.open("sparse", os.O_RDONLY)
out["sparse"] = {
    "size": st.st_size,
    "hole_is_zero": data[4:8 << 20] == bytes((8 << 20) - 4),
    "ends": [data[:4].decode(), data[-4:].decode()],
    "seek_data_0": os.lseek(fd, 0, os.SEEK_DATA),
    "seek_hole_0": os.lseek(fd, 0, os.SEEK_HOLE),
    "seek_data_eof": err(lambda: os.lseek(fd, st.st_size, os.SEEK_DATA)),
}
os.close(fd)

# truncate down then up: the tail comes back as zeros
write("trunc", bytes(range(256)) * 40)
os.truncate("trunc", 100)
out["trunc_down"] = [os.stat("trunc").st_size, read("trunc") == bytes(range(100))]
os.truncate("trunc", 5000)
d2 = read("trunc")
out["trunc_up"] = [len(d2), d2[:100] == bytes(range(100)), d2[100:] == bytes(4900)]
with open("trunc", "r+b") as f:
    f.truncate(0)
out["trunc_zero"] = os.stat("trunc").st_size

# directories
out["rmdir_nonempty"] = err(lambda: os.rmdir("dir"))
out["rename_into_own_subdir"] = err(lambda: os.rename("dir", "dir/sub/x"))
out["unlink_dir"] = err(lambda: os.unlink("dir"))
out["mkdir_existing"] = err(lambda: os.mkdir("dir"))
os.symlink("h2", "sym")
out["symlink"] = [os.readlink("sym"), read("sym").decode(), stat.S_ISLNK(os.lstat("sym").st_mode)]
out["append"] = (write("app", b"12"), write("app", b"34", "ab"), read("app").decode())[2]
json.dump(out, sys.stdout, sort_keys=True)
'''

POSIX_EXPECTED: dict[str, Any] = {
    "rename_over": ["AAAAAAAAAA", False, True],
    "unlinked_read": "still here",
    "unlinked_write_read": "STILL here",
    "unlinked_visible": False,
    "nlink_after_link": [2, 2, True],
    "nlink_after_unlink": [1, "hard"],
    "link_over_existing": "EEXIST",
    "dir_nlink": 2,
    "dir_nlink_with_sub": 3,
    "chmod": "0o4751",
    "chown": [1234, 5678],
    "utimes_ns": [1_000_000_000_123_456_789, 1_200_000_000_987_654_321],
    "utimes_s": [1_500_000_000, 1_600_000_000],
    "excl_twice": "EEXIST",
    "excl_mode": "0o600",
    "name_255": [True, "long"],
    "name_256": "ENAMETOOLONG",
    "sparse": {"size": (8 << 20) + 4, "hole_is_zero": True, "ends": ["head", "tail"], "seek_data_0": 0,
               "seek_hole_0": (8 << 20) + 4, "seek_data_eof": "ENXIO"},
    "trunc_down": [100, True],
    "trunc_up": [5000, True, True],
    "trunc_zero": 0,
    "rmdir_nonempty": "ENOTEMPTY",
    "rename_into_own_subdir": "EINVAL",
    "unlink_dir": "EISDIR",
    "mkdir_existing": "EEXIST",
    "symlink": ["h2", "hard", True],
    "append": "1234",
}


@pytest.mark.parametrize("server", ["nasblade", "ganesha"])
def test_posix_behaviour(guest: uml.Guest, request: pytest.FixtureRequest, server: str) -> None:
    """A table of POSIX rules checked through the kernel client, then again after a remount
    (attributes come from the server, not the client's cache). ganesha, the reference, must
    give the same table."""
    target: NFSTarget = request.getfixturevalue(f"{server}_nfs")
    result = run(guest, target, files={"posix.py": POSIX_CHECKS.encode()}, body=f"""
rm -rf {MNT}/posix; mkdir {MNT}/posix
python3 /share/posix.py {MNT}/posix > /share/posix.json
remount
cd {MNT}/posix
stat -c '%n %s %h %a %u %g %X %Y' attrs h2 trunc sparse app > /share/after-remount.txt
ls -A > /share/listing.txt
cd /
""")
    got = json.loads((result.share / "posix.json").read_text())
    assert {k: got.get(k) for k in POSIX_EXPECTED} == POSIX_EXPECTED
    listing = (result.share / "listing.txt").read_text().split()
    assert "open-unlinked" not in listing and [n for n in listing if n.startswith(".nfs")] == [], listing
    after = {line.split()[0]: line.split()[1:] for line in (result.share / "after-remount.txt").read_text().splitlines()}
    assert after == {
        "attrs": ["1", "1", "4751", "1234", "5678", "1500000000", "1600000000"],
        "h2": ["4", "1", *after["h2"][2:]],
        "trunc": ["0", "1", *after["trunc"][2:]],
        "sparse": [str((8 << 20) + 4), "1", *after["sparse"][2:]],
        "app": ["4", "1", *after["app"][2:]],
    }


CHGRP_BY_OWNER = r"""
import os, stat, sys
os.chdir(sys.argv[1])
with open("setid", "wb") as f:
    f.write(b"x")
os.chown("setid", 1234, 5678)
os.chmod("setid", 0o6755)
pid = os.fork()
if pid == 0:
    os.setgroups([5678, 999]); os.setgid(5678); os.setuid(1234)
    os.chown("setid", -1, 999)
    os._exit(0)
assert os.waitpid(pid, 0)[1] == 0
st = os.stat("setid")
print(st.st_uid, st.st_gid, oct(stat.S_IMODE(st.st_mode)))
"""


@pytest.mark.parametrize("server", ["nasblade", "ganesha"])
def test_chgrp_by_owner_clears_setid_bits(guest: uml.Guest, request: pytest.FixtureRequest, server: str) -> None:
    """POSIX chown(): an owner without privileges changing the group of an executable regular
    file loses S_ISUID and S_ISGID (for root it is implementation-defined: not checked)."""
    result = run(guest, request.getfixturevalue(f"{server}_nfs"), files={"chgrp.py": CHGRP_BY_OWNER.encode()}, body=f"""
rm -rf {MNT}/chgrp; mkdir {MNT}/chgrp
python3 /share/chgrp.py {MNT}/chgrp > /share/chgrp.txt
remount
stat -c '%u %g %a' {MNT}/chgrp/setid >> /share/chgrp.txt
""")
    assert (result.share / "chgrp.txt").read_text().splitlines() == ["1234 999 0o755", "1234 999 755"]


FSX = Path(__file__).with_name("guest_fsx.py")


@pytest.mark.parametrize("server", ["nasblade", "ganesha"])
def test_fsx_random_operations_match_the_model(guest: uml.Guest, request: pytest.FixtureRequest,
                                               server: str) -> None:
    """fsx-style (``guest_fsx.py``): seeded random writes (holes included), cached, O_DIRECT and
    mmap reads, mmap writes, truncations, fsyncs and reopens on one file, each read checked
    against an in-memory model; then the whole file through a fresh mount. The same seeds run
    against ganesha under the same kernel client, the reference."""
    target: NFSTarget = request.getfixturevalue(f"{server}_nfs")
    runs = [(11, 1 << 20, 64 << 10), (12, 256 << 10, 4 << 10)]  # (seed, max size, max op length)
    body = "\n".join(
        f"python3 /share/guest_fsx.py --path {MNT}/fsx-{seed} --ops 1500 --seed {seed} --max-size {size}"
        f" --max-len {length} --out /share/fsx-{seed}.json || true" for seed, size, length in runs)
    result = run(guest, target, files={"guest_fsx.py": FSX}, body=body + "\nremount\n" + "\n".join(
        f"sha256sum < {MNT}/fsx-{seed} | cut -d' ' -f1 > /share/fsx-{seed}.remount.sha" for seed, _, _ in runs))
    for seed, _, _ in runs:
        out = json.loads((result.share / f"fsx-{seed}.json").read_text())
        assert out["ok"], out
        assert all(n > 0 for n in out["counts"].values()), out  # every operation was exercised
        # through a fresh mount the file is the model's last state
        assert (result.share / f"fsx-{seed}.remount.sha").read_text().strip() == out["sha256"], out
        print(f"kernel NFS fsx {server} seed {seed}: {out['ops']} ops {out['counts']}, final size {out['size']}")


@pytest.mark.parametrize("server", ["nasblade", "ganesha"])
def test_sqlite_integrity(guest: uml.Guest, request: pytest.FixtureRequest, server: str, tmp_path: Path) -> None:
    """An sqlite3 workload (transactions, index, updates, deletes, VACUUM) on the mount; after a
    remount ``PRAGMA integrity_check`` is ok in the guest, and the database read from the
    host with libnfs is intact too. The same against ganesha, the reference."""
    sql = """
PRAGMA journal_mode=DELETE;
CREATE TABLE t(id INTEGER PRIMARY KEY, k INTEGER, v TEXT);
WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 20000)
INSERT INTO t(k, v) SELECT i % 97, hex(randomblob(40)) FROM c;
CREATE INDEX tk ON t(k);
BEGIN; UPDATE t SET v = v || 'x' WHERE k = 5; DELETE FROM t WHERE k = 7; COMMIT;
BEGIN; INSERT INTO t(k, v) SELECT k + 1000, v FROM t WHERE id % 10 = 0; COMMIT;
VACUUM;
"""
    target: NFSTarget = request.getfixturevalue(f"{server}_nfs")
    result = run(guest, target, files={"work.sql": sql.encode()}, body=f"""
rm -f {MNT}/k.db {MNT}/k.db-journal
sqlite3 {MNT}/k.db < /share/work.sql > /dev/null
remount
sqlite3 {MNT}/k.db 'PRAGMA integrity_check;' > /share/integrity.txt
sqlite3 {MNT}/k.db 'SELECT count(*), sum(k), sum(length(v)) FROM t;' > /share/sums.txt
sqlite3 {MNT}/k.db "SELECT count(*) FROM t WHERE k = 7; SELECT count(*) FROM t WHERE v LIKE '%x';" > /share/checks.txt
""")
    assert (result.share / "integrity.txt").read_text().strip() == "ok"
    count, ksum, vlen = map(int, (result.share / "sums.txt").read_text().strip().split("|"))
    kept = [i for i in range(1, 20001) if i % 97 != 7]
    copied = [i for i in kept if i % 10 == 0]
    assert count == len(kept) + len(copied)
    assert ksum == sum(i % 97 for i in kept) + sum(i % 97 + 1000 for i in copied)
    assert vlen == 80 * count + len([i for i in kept if i % 97 == 5]) + len([i for i in copied if i % 97 == 5])
    assert (result.share / "checks.txt").read_text().split() == ["0", str(len([i for i in kept if i % 97 == 5])
                                                                        + len([i for i in copied if i % 97 == 5]))]
    db = tmp_path / "k.db"
    db.write_bytes(host_read(target, "/k.db"))
    with contextlib.closing(sqlite3.connect(db)) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert conn.execute("SELECT count(*), sum(k), sum(length(v)) FROM t").fetchone() == (count, ksum, vlen)


def test_directory_volume_seen_and_enforced_by_the_kernel_client(guest: uml.Guest, array: KernelArray,
                                                                  nasblade_nfs: NFSTarget) -> None:
    """A directory volume (``/pv-q`` of ``kfs`` with an 8 MiB quota, made through the blade API
    as the CSI driver's directory layout makes it) mounted by itself: ``df`` shows the quota as
    its size, a write past it fails with "Disk quota exceeded" at the client, what fit is intact,
    and a raised quota is seen at once. Against nasblade only: ganesha has no such volumes."""
    [blade] = array.endpoints["blades"]
    api = BladeClient(blade["api"], (array.data_dir / "secrets" / "blade-token").read_text().strip())
    api.set_directory("kfs", "pv-q", 8 * MIB)
    target = dataclasses.replace(nasblade_nfs, export=nasblade_nfs.export.rstrip("/") + "/pv-q")
    try:
        result = run(guest, target, body=f"""
df -B1 --output=size {MNT} | tail -1 > /share/size-before.txt
dd if=/dev/urandom of={MNT}/fits bs=1M count=6 conv=fsync status=none
sha256sum < {MNT}/fits | cut -d' ' -f1 > /share/fits.sha
if dd if=/dev/zero of={MNT}/over bs=1M count=4 conv=fsync status=none 2> /share/over.err; then
    echo written > /share/over.ok
fi
""")
        assert int((result.share / "size-before.txt").read_text()) == 8 * MIB
        assert not (result.share / "over.ok").exists(), "a write past the quota was acknowledged"
        assert "quota" in (result.share / "over.err").read_text().lower(), (result.share / "over.err").read_text()
        fits = host_read(nasblade_nfs, "/pv-q/fits")
        assert len(fits) == 6 * MIB
        assert hashlib.sha256(fits).hexdigest() == (result.share / "fits.sha").read_text().strip()
        api.set_directory("kfs", "pv-q", 32 * MIB)
        result = run(guest, target, body=f"""
df -B1 --output=size {MNT} | tail -1 > /share/size-after.txt
rm -f {MNT}/over
dd if=/dev/zero of={MNT}/more bs=1M count=12 conv=fsync status=none
""")
        assert int((result.share / "size-after.txt").read_text()) == 32 * MIB
        assert api.directories("kfs")["directories"][0]["usedBytes"] >= 18 * MIB
    finally:
        api.remove_directory("kfs", "pv-q")
