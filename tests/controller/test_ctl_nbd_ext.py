"""Component tests: the NBD extensions of the controller, driven by libnbd's own tools.

Structured replies and ``base:allocation`` (``nbdinfo --map`` extents of a known write
pattern, before and after a restart; ``nbdcopy`` of a sparse LU to a sparse file; hole
chunks in structured reads), ``NBD_CMD_FLAG_FAST_ZERO`` and ``NBD_CMD_CACHE`` through nbdsh,
and an oversized WRITE sent by libnbd with strict checks off. nbdsh and the libnbd scripts
run under Debian's ``/usr/bin/python3`` (python3-libnbd).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from ctlharness import Controller
from nasblade.nbd.client import NBDBlockDevice

pytestmark = pytest.mark.component

MiB = 1 << 20
HOLE, DATA = "hole,zero", "data"
ENV = {**os.environ, "PATH": "/usr/bin:/bin:" + os.environ.get("PATH", "")}  # nbdsh: Debian's python3


def run(*cmd: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False, env=ENV)
    if check:
        assert res.returncode == 0, f"{cmd}: {res.stdout}\n{res.stderr}"
    return res


def nbdsh(url: str, *code: str) -> str:
    args = ["nbdsh", "-u", url]
    for c in code:
        args += ["-c", c]
    return run(*args).stdout


def nbd_map(url: str) -> list[tuple[int, int, str]]:
    return [(e["offset"], e["length"], e["description"])
            for e in json.loads(run("nbdinfo", "--map", "--json", url).stdout)]


def write_pattern(url: str) -> None:
    """4 KiB at 1 MiB (left dirty in the cache), 3 MiB at 8 MiB (written through), 100 bytes
    at 20 MiB (one sector once destaged), then 1 MiB zeroed at 9 MiB (inside the 3 MiB)."""
    nbdsh(url, 'h.pwrite(b"a" * 4096, 1 << 20)', 'h.pwrite(b"b" * (3 << 20), 8 << 20)',
          'h.pwrite(b"c" * 100, 20 << 20)', "h.zero(1 << 20, 9 << 20)")


def expected_map(size: int) -> list[tuple[int, int, str]]:
    data = [(1 * MiB, 4096), (8 * MiB, MiB), (10 * MiB, MiB), (20 * MiB, 4096)]
    out, pos = [], 0
    for off, n in data:
        if off > pos:
            out.append((pos, off - pos, HOLE))
        out.append((off, n, DATA))
        pos = off + n
    out.append((pos, size - pos, HOLE))
    return out


def pattern_bytes(size: int) -> bytes:
    buf = bytearray(size)
    buf[MiB : MiB + 4096] = b"a" * 4096
    buf[8 * MiB : 11 * MiB] = b"b" * (3 * MiB)
    buf[9 * MiB : 10 * MiB] = bytes(MiB)
    buf[20 * MiB : 20 * MiB + 100] = b"c" * 100
    return bytes(buf)


def test_nbdinfo_shows_the_negotiated_extensions(controller: Controller) -> None:
    controller.client.create_lu("ext", 16 * MiB)
    url = controller.url("ext")
    info = json.loads(run("nbdinfo", "--json", url).stdout)
    assert info["structured"] is True
    (export,) = info["exports"]
    assert export["contexts"] == ["base:allocation"]
    assert export["can_cache"] and export["can_fast_zero"] and export["can_df"]
    assert export["can_zero"] and export["can_trim"] and export["can_fua"] and export["can_multi_conn"]
    for what in ("structured-reply", "cache", "fast-zero", "df"):
        assert run("nbdinfo", "--can", what, url, check=False).returncode == 0, what


def test_nbdinfo_map_reports_holes_and_data_across_a_restart(
        controller_factory: Callable[..., Controller]) -> None:
    c = controller_factory()
    size = 64 * MiB
    c.client.create_lu("sparse", size)
    url = c.url("sparse")
    assert nbd_map(url) == [(0, size, HOLE)]  # a new LU is all hole
    c.admin.hold_destage(True)  # small writes stay dirty in the cache: data all the same
    write_pattern(url)
    assert {"offset": MiB, "length": 4096, "state": "dirty"} in c.client.cache_directory("sparse")["ranges"]
    assert nbd_map(url) == expected_map(size)
    assert c.stop() == 0  # destages the cache
    c.restart()
    assert nbd_map(c.url("sparse")) == expected_map(size)
    # a zeroed whole range becomes a hole again; an unaligned zero leaves data around it
    nbdsh(c.url("sparse"), "h.zero(4096, 1 << 20)", "h.zero(1000, (20 << 20) + 10)")
    assert nbd_map(c.url("sparse")) == [(0, 8 * MiB, HOLE), (8 * MiB, MiB, DATA), (9 * MiB, MiB, HOLE),
                                        (10 * MiB, MiB, DATA), (11 * MiB, 9 * MiB, HOLE),
                                        (20 * MiB, 4096, DATA), (20 * MiB + 4096, size - 20 * MiB - 4096, HOLE)]


def test_nbdcopy_of_a_sparse_lu_makes_a_sparse_identical_file(controller: Controller, tmp_path: Path) -> None:
    size = 64 * MiB
    controller.client.create_lu("copysrc", size)
    url = controller.url("copysrc")
    write_pattern(url)
    dst = tmp_path / "copy.img"
    run("nbdcopy", url, str(dst))
    assert hashlib.sha256(dst.read_bytes()).hexdigest() == hashlib.sha256(pattern_bytes(size)).hexdigest()
    assert dst.stat().st_size == size
    data_bytes = 4096 + 2 * MiB + 4096
    assert dst.stat().st_blocks * 512 <= data_bytes + MiB, "nbdcopy should have skipped the holes"
    # and back: a copy from the sparse file into a fresh LU keeps the same map
    controller.client.create_lu("copydst", size)
    run("nbdcopy", str(dst), controller.url("copydst"))
    assert nbd_map(controller.url("copydst")) == expected_map(size)


STRUCTURED_READ = r"""
import json, sys, nbd
h = nbd.NBD()
h.connect_uri(sys.argv[1])
chunks = []
def chunk(subbuf, offset, status, error):
    kind = {nbd.READ_DATA: "data", nbd.READ_HOLE: "hole"}.get(status, str(status))
    chunks.append([offset, len(subbuf), kind, bytes(subbuf) == bytes(len(subbuf))])
    return 0
buf = h.pread_structured(4 << 20, 7 << 20, chunk)
out = {"chunks": sorted(chunks), "sha": __import__("hashlib").sha256(buf).hexdigest()}
h.set_strict_mode(0)
try:
    h.pread(4096, h.get_size())
    out["past_end"] = "no error"
except nbd.Error as e:
    out["past_end"] = e.errno
print(json.dumps(out))
"""


def test_structured_reads_send_holes_as_hole_chunks(controller: Controller) -> None:
    size = 64 * MiB
    controller.client.create_lu("holes", size)
    url = controller.url("holes")
    write_pattern(url)
    out = json.loads(run("/usr/bin/python3", "-c", STRUCTURED_READ, url).stdout)
    # 7..8 MiB hole, 8..9 data, 9..10 zeroed (hole), 10..11 data: offsets are absolute
    assert out["chunks"] == [[7 * MiB, MiB, "hole", True], [8 * MiB, MiB, "data", False],
                             [9 * MiB, MiB, "hole", True], [10 * MiB, MiB, "data", False]]
    assert out["sha"] == hashlib.sha256(pattern_bytes(size)[7 * MiB : 11 * MiB]).hexdigest()
    assert out["past_end"] == "EINVAL"  # an error on a structured read is an ERROR chunk


def test_fast_zero_is_done_when_fast_and_refused_untouched_when_not(controller: Controller) -> None:
    cl = controller.client
    cl.create_lu("fz", 16 * MiB)
    cl.create_lu("fz-copy", 16 * MiB)
    url = controller.url("fz")
    nbdsh(url, 'h.pwrite(b"x" * (16 << 20), 0)', "h.flush()")
    # hole punching on file devices is fast: done, reads back zero, shows as a hole
    out = nbdsh(url, "h.zero(2 << 20, 1 << 20, nbd.CMD_FLAG_FAST_ZERO)",
                "print(h.pread(2 << 20, 1 << 20) == bytes(2 << 20))")
    assert out.strip() == "True"
    assert (MiB, 2 * MiB, HOLE) in nbd_map(url)
    # a running copy job has to save the old data first: as slow as a write, so ENOTSUP
    job = cl.create_copy_job("fz", "fz-copy", 16 * MiB, rate_limit=MiB)
    try:
        script = (
            "try:\n"
            "    h.zero(1 << 20, 14 << 20, nbd.CMD_FLAG_FAST_ZERO)\n"
            "    print('no error')\n"
            "except nbd.Error as e:\n"
            "    print(e.errno)\n"
            "print(h.pread(1 << 20, 14 << 20) == b'x' * (1 << 20))\n"
        )
        assert nbdsh(url, script).split() == ["ENOTSUP", "True"]  # refused, nothing changed
        # without the flag the same zero is done (after copy-on-write)
        assert nbdsh(url, "h.zero(1 << 20, 14 << 20)", "print(h.pread(1 << 20, 14 << 20) == bytes(1 << 20))"
                     ).strip() == "True"
    finally:
        cl.cancel_copy_job(job["id"])


def device_blocks(c: Controller) -> int:
    return sum(os.stat(c.workdir / f"dev{i}").st_blocks * 512 for i in range(2))


def test_no_hole_zero_keeps_the_space_and_is_never_fast(controller: Controller) -> None:
    controller.client.create_lu("nh", 16 * MiB)
    url = controller.url("nh")
    nbdsh(url, 'h.pwrite(b"n" * (4 << 20), 0)', "h.flush()")
    before = device_blocks(controller)
    out = nbdsh(url, "h.zero(2 << 20, 0, nbd.CMD_FLAG_NO_HOLE)", "h.flush()",
                "print(h.pread(2 << 20, 0) == bytes(2 << 20))")
    assert out.strip() == "True"
    assert device_blocks(controller) == before  # provisioned: no hole punched
    script = (
        "try:\n"
        "    h.zero(1 << 20, 2 << 20, nbd.CMD_FLAG_FAST_ZERO | nbd.CMD_FLAG_NO_HOLE)\n"
        "    print('no error')\n"
        "except nbd.Error as e:\n"
        "    print(e.errno)\n"
        "print(h.pread(1 << 20, 2 << 20) == b'n' * (1 << 20))\n"
    )
    assert nbdsh(url, script).split() == ["ENOTSUP", "True"]
    nbdsh(url, "h.zero(2 << 20, 2 << 20)", "h.flush()")  # without NO_HOLE: punched
    assert device_blocks(controller) == before - 2 * MiB


def test_fast_zero_respects_fencing(controller: Controller) -> None:
    cl = controller.client
    cl.create_lu("fzf", 8 * MiB)
    old = cl.reserve("fzf", "blade-a")
    cl.reserve("fzf", "blade-b")
    url = controller.url(f"fzf;holder=blade-a;epoch={old['epoch']}")
    script = (
        "try:\n"
        "    h.zero(4096, 0, nbd.CMD_FLAG_FAST_ZERO)\n"
        "    print('no error')\n"
        "except nbd.Error as e:\n"
        "    print(e.errno)\n"
    )
    assert nbdsh(url.replace(";", "%3B").replace("=", "%3D"), script).strip() == "EPERM"


def test_cache_command_prefetches_into_the_controller_cache(controller: Controller) -> None:
    cl = controller.client
    cl.create_lu("pf", 16 * MiB)
    url = controller.url("pf")
    nbdsh(url, 'h.pwrite(b"p" * (4 << 20), 0)', "h.flush()")  # large writes bypass the cache
    assert cl.cache_directory("pf")["ranges"] == []
    out = nbdsh(url, "print(h.can_cache())", "h.cache(256 << 10, 1 << 20)",
                "h.set_strict_mode(0)",
                "try:\n    h.cache(4096, h.get_size())\n    print('no error')\nexcept nbd.Error as e:\n    print(e.errno)")
    assert out.split() == ["True", "EINVAL"]
    assert cl.cache_directory("pf")["ranges"] == [{"offset": MiB, "length": 256 << 10, "state": "clean"}]
    with NBDBlockDevice.connect(url) as dev:  # cached data is the data
        assert dev.pread(MiB, 256 << 10) == b"p" * (256 << 10)


OVERSIZED_WRITE = r"""
import sys, nbd
h = nbd.NBD()
h.set_strict_mode(0)
h.connect_uri(sys.argv[1])
try:
    h.pwrite(b"x" * ((32 << 20) + 4096), 0)
    print("no error")
except nbd.Error as e:
    print(e.errno)
h.pwrite(b"y" * 4096, 8192)
print(h.pread(4096, 8192) == b"y" * 4096, h.pread(4096, 0) == bytes(4096))
"""


def test_libnbd_oversized_write_gets_einval_and_the_connection_keeps_working(controller: Controller) -> None:
    controller.client.create_lu("big", 64 * MiB)
    out = run("/usr/bin/python3", "-c", OVERSIZED_WRITE, controller.url("big")).stdout.split()
    assert out == ["EINVAL", "True", "True"]
