"""The guest harness itself (``uml.py``): what the other kernel-client tests rely on.

The guest reaches the servers a test forwards and nothing else; the cached root tree is never
written; a run that times out is killed with everything it started.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import pytest
import uml

pytestmark = pytest.mark.kernel


@contextlib.contextmanager
def echo_server(host: str) -> Iterator[int]:
    """A TCP server on ``host`` that answers each connection with ``hello\\n``."""
    srv = socket.create_server((host, 0))
    stop = threading.Event()

    def serve() -> None:
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except TimeoutError:
                continue
            with conn:
                conn.sendall(b"hello\n")

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        yield srv.getsockname()[1]
    finally:
        stop.set()
        t.join()
        srv.close()


def test_guest_reaches_only_what_is_forwarded(guest: uml.Guest) -> None:
    with echo_server("127.0.0.1") as forwarded, echo_server("127.0.0.1") as other:
        script = f"""
try() {{ if timeout 10 bash -c "exec 3<>/dev/tcp/$1/$2 && head -1 <&3" 2>/dev/null; then :; else echo "$1:$2 refused"; fi; }}
try 10.0.2.2 7000
try 10.0.2.2 {other}
try 127.0.0.1 {other}
try 10.0.2.2 {forwarded}
ip route get 192.0.2.1 2>&1 | head -1 || true
ip -o -4 addr show dev eth0 | awk '{{print $4}}'
"""
        result = guest.run(script, forwards=[uml.Forward(7000, "127.0.0.1", forwarded)], timeout=300)
    assert result.rc == 0, result.explain()
    assert result.stdout.splitlines() == [
        "hello",
        f"10.0.2.2:{other} refused",
        f"127.0.0.1:{other} refused",
        f"10.0.2.2:{forwarded} refused",
        "RTNETLINK answers: Network is unreachable",
        "10.0.2.15/24",
    ]


def test_cached_tree_is_never_written(guest: uml.Guest) -> None:
    tree = uml.guest_tree(build=False)
    before = sorted(p.name for p in (tree / "etc").iterdir())
    result = guest.run("echo guest > /etc/written-by-guest; rm /etc/hostname; cat /etc/written-by-guest",
                       timeout=300)
    assert result.rc == 0 and result.stdout == "guest\n", result.explain()
    assert not (tree / "etc" / "written-by-guest").exists()
    assert (tree / "etc" / "hostname").is_file()
    assert sorted(p.name for p in (tree / "etc").iterdir()) == before


def test_a_run_that_times_out_leaves_nothing(guest: uml.Guest) -> None:
    with echo_server("127.0.0.1") as port:
        result = guest.run("echo started; sleep 1000", forwards=[uml.Forward(7000, "127.0.0.1", port)], timeout=20)
    assert result.timed_out and result.rc is None, result.explain()
    assert "script starts" in result.init_log
    assert guest.leftovers() == []
    # and the next run works
    again = guest.run("echo again", timeout=300)
    assert again.rc == 0 and again.stdout == "again\n", again.explain()


def test_script_exit_code_and_output_come_back(guest: uml.Guest) -> None:
    result = guest.run("echo out; echo err >&2; echo file > /share/x; exit 7",
                       files={"in.txt": b"input"}, timeout=300)
    assert (result.rc, result.stdout, result.stderr) == (7, "out\n", "err\n"), result.explain()
    assert (result.share / "x").read_text() == "file\n"
    assert (result.share / "in.txt").read_bytes() == b"input"


def test_close_kills_a_run_abandoned_in_a_thread() -> None:
    """A test that gives up on a run it started in a thread: closing the guest ends it."""
    own = uml.UMLGuest(uml.guest_tree(build=False))
    box: dict[str, uml.GuestResult] = {}
    runner = threading.Thread(target=lambda: box.update(result=own.run("sleep 1000", timeout=600)), daemon=True)
    runner.start()
    deadline = time.monotonic() + 120
    while not any("linux.uml" in line for line in own.leftovers()):
        assert runner.is_alive() and time.monotonic() < deadline, own.leftovers()
        time.sleep(0.2)
    own.close()
    assert own.leftovers() == []
    runner.join(60)
    assert not runner.is_alive()
    assert box["result"].rc is None and not box["result"].timed_out
