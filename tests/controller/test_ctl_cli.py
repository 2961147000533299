"""The ``nasblade controller`` command line: config file, env tokens, Unix socket, sizes."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from ctlharness import TOKEN
from nasblade import ready
from nasblade.controller import main as ctl_main
from nasblade.controller.apiclient import ControlClient
from nasblade.devices import open_device
from nasblade.nbd.client import NBDBlockDevice

pytestmark = pytest.mark.component


@pytest.mark.parametrize(("text", "size"), [("4096", 4096), ("512M", 512 << 20), ("1G", 1 << 30),
                                            ("2GiB", 2 << 30), ("10k", 10 << 10)])
def test_parse_size(text: str, size: int) -> None:
    assert ctl_main.parse_size(text) == size


def test_parse_device() -> None:
    assert ctl_main.parse_device("/d/x:1G") == ("/d/x", 1 << 30)
    assert ctl_main.parse_device("/dev/sdb") == ("/dev/sdb", None)
    assert ctl_main.parse_device("/weird:name") == ("/weird:name", None)


def test_yaml_config_env_token_and_unix_socket(tmp_path: Path) -> None:
    sock = tmp_path / "nbd.sock"
    config = tmp_path / "controller.yaml"
    config.write_text(
        f"device:\n  - {tmp_path / 'a'}:64M\n  - {tmp_path / 'b'}:64M\n"
        f"nbd-listen: 127.0.0.1:0\napi-listen: 127.0.0.1:0\ncache-size: 16M\nnbd-unix: {sock}\n")
    env = {**os.environ, "NASBLADE_TOKEN": TOKEN}
    env.pop("NASBLADE_ADMIN_TOKEN", None)
    proc = subprocess.Popen([sys.executable, "-m", "nasblade", "controller", "--config", str(config)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        eps = ready.wait_ready(proc)["endpoints"]
        assert eps["nbdUnix"] == str(sock)
        # plaintext and every LU: only the controller's own user may connect
        assert stat.S_ISSOCK(sock.stat().st_mode) and stat.S_IMODE(sock.stat().st_mode) == 0o600
        api = ControlClient(eps["api"], TOKEN)
        assert api.cache()["size"] == 16 << 20
        assert len(api.array()["devices"]) == 2
        api.create_lu("u", 8 << 20)
        url = f"nbd+unix:///u?socket={sock}"
        dev = open_device(url)
        try:
            assert isinstance(dev, NBDBlockDevice) and dev.size == 8 << 20
            dev.pwrite(0, b"unix" * 1024, fua=True)
        finally:
            dev.close()
        with NBDBlockDevice.connect(f"nbd://{eps['nbd']}/u") as tcp:
            assert tcp.pread(0, 4096) == b"unix" * 1024
        info = json.loads(subprocess.run(["nbdinfo", "--json", f"nbd+unix:///u?socket={sock}"],
                                         capture_output=True, text=True, check=True).stdout)
        assert info["exports"][0]["export-size"] == 8 << 20
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert b"Traceback" not in err


def test_missing_token_or_device_is_a_clear_error(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NASBLADE_")}
    res = subprocess.run([sys.executable, "-m", "nasblade", "controller", "--device", f"{tmp_path / 'x'}:64M"],
                         capture_output=True, text=True, env=env, timeout=30, check=False)
    assert res.returncode != 0 and "token" in res.stderr and "Traceback" not in res.stderr
    res = subprocess.run([sys.executable, "-m", "nasblade", "controller"], capture_output=True, text=True,
                         env={**env, "NASBLADE_TOKEN": "x"}, timeout=30, check=False)
    assert res.returncode != 0 and "--device" in res.stderr and "Traceback" not in res.stderr


def test_wrong_device_set_is_refused(tmp_path: Path) -> None:
    env = {**os.environ, "NASBLADE_TOKEN": "x"}
    base = [sys.executable, "-m", "nasblade", "controller", "--nbd-listen", "127.0.0.1:0",
            "--api-listen", "127.0.0.1:0"]
    proc = subprocess.Popen([*base, "--device", f"{tmp_path / 'a'}:64M", "--device", f"{tmp_path / 'b'}:64M"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    ready.wait_ready(proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    res = subprocess.run([*base, "--device", str(tmp_path / "a")], capture_output=True, text=True,
                         env=env, timeout=30, check=False)
    assert res.returncode != 0 and "devices" in res.stderr and "Traceback" not in res.stderr
