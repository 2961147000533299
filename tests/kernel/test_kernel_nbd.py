"""Linux's NBD client (in a User-Mode Linux guest) on a scratch LU of the array's controller.

The test creates an LU of its own through the control API (never a file system's LU), the
guest attaches it with ``nbd-client`` over TLS (the array's admin certificate: ``nasblade up``
serves NBD over TLS only; newstyle handshake, export name = LU name), makes an
ext4 file system on it, writes, syncs, unmounts and checks it with ``fsck.ext4 -fn``, and reads
it back after a cold remount. The host then copies the LU out with ``nbdcopy`` (libnbd, a
client written by others) and checks that image with its own ``e2fsck`` and ``debugfs``.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import uml
from conftest import KernelArray

pytestmark = [pytest.mark.kernel, pytest.mark.component]
LU = "kscratch"
SIZE = 256 << 20
MIB = 48


@pytest.fixture
def scratch_lu(array: KernelArray) -> Iterator[str]:
    ctl = array.control
    ctl.create_lu(LU, SIZE)
    yield LU
    ctl.delete_lu(LU)


def test_nbd_ext4(guest: uml.Guest, array: KernelArray, scratch_lu: str, tmp_path: Path) -> None:
    host, port = array.nbd
    admin = array.data_dir / "tls" / "admin"  # ca-cert.pem, client-cert.pem, client-key.pem
    files = {name: admin / name for name in ("ca-cert.pem", "client-cert.pem", "client-key.pem")}
    script = f"""set -euo pipefail
nbd-client -N {scratch_lu} --enable-tls --cacertfile /share/ca-cert.pem --certfile /share/client-cert.pem \\
  --keyfile /share/client-key.pem --tlshostname localhost 10.0.2.2 {port} /dev/nbd0 -b 4096
blockdev --getsize64 /dev/nbd0 > /share/size.txt
mkfs.ext4 -q -F -L kscratch /dev/nbd0
mount /dev/nbd0 /mnt/ext4
head -c {MIB}M /dev/urandom > /tmp/data
sha256sum < /tmp/data | cut -d' ' -f1 > /share/written.sha
dd if=/tmp/data of=/mnt/ext4/data bs=1M conv=fsync 2> /share/dd-write.txt
mkdir /mnt/ext4/doc
tar -cf - -C /usr/share doc | tar -xf - -C /mnt/ext4/doc
sync
umount /mnt/ext4
set +e
fsck.ext4 -fn /dev/nbd0 > /share/fsck.txt 2>&1
echo $? > /share/fsck.rc
set -e
blockdev --flushbufs /dev/nbd0
echo 3 > /proc/sys/vm/drop_caches
mount /dev/nbd0 /mnt/ext4
dd if=/mnt/ext4/data bs=1M 2> /share/dd-read.txt | sha256sum | cut -d' ' -f1 > /share/read.sha
diff -r --no-dereference /usr/share/doc /mnt/ext4/doc/doc > /share/diff.txt
umount /mnt/ext4
nbd-client -d /dev/nbd0
"""
    result = guest.run(script, forwards=[uml.Forward(port, host, port)], files=files, timeout=900)
    assert result.rc == 0, result.explain()
    assert int((result.share / "size.txt").read_text()) == SIZE
    fsck = (result.share / "fsck.txt").read_text()
    assert (result.share / "fsck.rc").read_text().strip() == "0", fsck
    written = (result.share / "written.sha").read_text().strip()
    assert re.fullmatch(r"[0-9a-f]{64}", written)
    assert (result.share / "read.sha").read_text().strip() == written
    assert (result.share / "diff.txt").read_text() == ""
    # the LU as another NBD client sees it: a clean ext4 holding the same bytes
    image = tmp_path / "lu.img"
    subprocess.run(["nbdcopy", f"nbds://{host}:{port}/{scratch_lu}?tls-certificates={admin}", str(image)],
                   check=True, timeout=300)
    assert image.stat().st_size == SIZE
    e2fsck = subprocess.run(["e2fsck", "-fn", str(image)], capture_output=True, text=True, timeout=300, check=False)
    assert e2fsck.returncode == 0, e2fsck.stdout + e2fsck.stderr
    label = subprocess.run(["e2label", str(image)], capture_output=True, text=True, check=True).stdout.strip()
    assert label == "kscratch"
    cat = subprocess.run(["debugfs", "-R", "cat /data", str(image)], capture_output=True, check=True, timeout=300)
    assert hashlib.sha256(cat.stdout).hexdigest() == written
    print(f"kernel NBD ext4 {MIB} MiB: write {rate(result, 'dd-write.txt')}, read {rate(result, 'dd-read.txt')}, "
          f"run {result.seconds:.1f} s")


def rate(result: uml.GuestResult, name: str) -> str:
    m = re.search(r"copied, [0-9.]+ s, ([0-9.]+ [kMG]?B/s)", (result.share / name).read_text())
    assert m, (result.share / name).read_text()
    return m.group(1)
