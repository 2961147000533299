"""Running a whole array on one machine: controller + blades as supervised local processes.

``Array.start()`` does, in order (each step idempotent, so a restart on the same data directory
brings the same data back):

1. tokens under ``DATA/secrets`` (random on first start, mode 0600; each cluster group's
   block processors get only their group's token, ``nasblade.grants``, never the controller's)
   and, with
   ``network.nbdTLS`` (the default), the NBD TLS credentials and access file under ``DATA/tls``
   (``nasblade.standalone.credentials``);
2. the controller (``nasblade controller``) with ``DATA/devices/dev<i>`` as its devices; with
   TLS it serves NBD only over TLS to certificates of the array's CA, each cluster group's
   blades opening only their group's LUs (``nasblade.nbd.access``);
3. the LUs: ``program``, ``procinfo`` (one portion per cluster group), ``backup`` and one LU per
   file system (``fs-<name>``); a new file-system LU gets ``nasblade.fs.fs.mkfs``;
4. the blade software: on a blank program LU, a bundle of this installation's code is built
   (``nasblade.program.bundle``) and pushed as the configured (or package) version;
5. per blade: the block processor (``nasblade block-processor``, owning the LUs of the file
   systems whose ``preferredBlade`` it is) and then its file processor, started through the
   boot shim from the bundle the block processor installed
   (``nasblade boot -- blade-file-processor ...``);
6. one ready line listing every NFS endpoint and the controller endpoints.

``Array.stop()`` stops file processors, then block processors (they flush), then the controller
(it destages and fsyncs). Each child's stderr goes to ``DATA/logs/<name>.log``.

With TLS, ``nasblade up`` reaches the controller's NBD port with the ``admin`` certificate and
each block processor gets its group's certificate directory as ``NASBLADE_NBD_TLS_DIR`` (also
on restarts by the supervisor, which starts children through ``launch``).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nasblade import grants, lunames, ready, tls
from nasblade.cluster import config as cluster_config
from nasblade.standalone import credentials, lifetime
from nasblade.standalone.config import Config, FileSystem

log = logging.getLogger(__name__)

NASBLADE = [sys.executable, "-m", "nasblade"]
PROGRAM_LU = lunames.PROGRAM
PROCINFO_LU = lunames.PROCINFO
BACKUP_LU = lunames.BACKUP


def fs_lu(fs: FileSystem) -> str:
    return lunames.fs_lu(fs.name)


def _drain(proc: subprocess.Popen[bytes]) -> None:
    assert proc.stdout is not None
    while proc.stdout.read(65536):
        pass


class ArrayError(RuntimeError):
    """The array could not be started; the message says which step failed."""


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    ready: dict[str, Any]
    argv: list[str] = field(default_factory=list)
    blade: str | None = None
    part: str | None = None
    """``bp`` / ``fp`` for a blade's processes (restarted by ``nasblade.standalone.supervisor``)."""


@dataclass
class Array:
    config: Config
    data_dir: Path
    ready_timeout: float = 120.0
    children: list[Child] = field(default_factory=list)
    controller: Child | None = None
    software_version: str | None = None
    tls: credentials.Credentials | None = None
    #: extra environment of a child, by child name (a blade's NBD client credentials)
    child_env: dict[str, dict[str, str]] = field(default_factory=dict)

    # -- paths and secrets ------------------------------------------------------------------

    @property
    def secrets_dir(self) -> Path:
        return self.data_dir / "secrets"

    def _secret(self, name: str) -> Path:
        path = self.secrets_dir / name
        if not path.exists():
            self.secrets_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(24))
        return path

    @property
    def chassis_socket(self) -> Path:
        """The chassis API of ``nasblade up`` (``nasblade.standalone.chassis``)."""
        return self.data_dir / "run" / "chassis.sock"

    def blade_token(self) -> str:
        return self._secret("blade-token").read_text().strip()

    def group_token_file(self, group: str) -> Path:
        """The control-API credential of ``group``'s block processors (``nasblade.grants``:
        derived from the controller's token, written on every start, mode 0600)."""
        path = self.secrets_dir / f"group-{group}-token"
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(grants.group_token(self._secret("controller-token").read_text().strip(), group))
        os.replace(tmp, path)
        return path

    def _spawn(self, name: str, argv: list[str], *, blade: str | None = None, part: str | None = None) -> Child:
        proc, line = self.launch(name, argv)
        child = Child(name=name, proc=proc, ready=line, argv=list(argv), blade=blade, part=part)
        self.children.append(child)
        return child

    def launch(self, name: str, argv: list[str]) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
        """Start ``argv`` in its own session (stderr to ``DATA/logs/<name>.log``); wait for its
        ready line. Used for first starts and by the supervisor for restarts."""
        logs = self.data_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        with open(logs / f"{name}.log", "ab") as err:
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err, start_new_session=True,
                                    env={**lifetime.child_env(), **self.child_env.get(name, {})})
        try:
            line = ready.wait_ready(proc, timeout=self.ready_timeout)
        except ready.NotReady as exc:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            tail = (logs / f"{name}.log").read_text(errors="replace").strip().splitlines()[-5:]
            raise ArrayError(f"{name} did not start: {exc}\n  " + "\n  ".join(tail)) from exc
        # keep reading stdout so a chatty child never blocks on a full pipe
        threading.Thread(target=_drain, args=(proc,), daemon=True, name=f"drain-{name}").start()
        return proc, line

    # -- start ------------------------------------------------------------------------------

    def start(self) -> dict[str, Any]:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        try:
            self._start_controller()
            client = self._client()
            self._create_lus(client)
            self._software()
            blades = self._start_blades()
        except BaseException:
            self.stop()
            raise
        return self._summary(blades)

    def _start_controller(self) -> None:
        c, net = self.config, self.config.network
        devdir = self.data_dir / "devices"
        devdir.mkdir(parents=True, exist_ok=True)
        argv = [*NASBLADE, "controller",
                "--nbd-listen", f"{net.controller_address}:{net.nbd_port}",
                "--api-listen", f"{net.controller_address}:{net.api_port}",
                "--token-file", str(self._secret("controller-token")),
                "--admin-token-file", str(self._secret("admin-token")),
                "--cache-size", str(c.cache_size), "--protection", c.protection,
                *(["--faults"] if c.fault_injection else [])]
        for i in range(c.device_count):
            argv += ["--device", f"{devdir / f'dev{i}'}:{c.device_size}"]
        if net.nbd_tls:
            self.tls = credentials.ensure(self.data_dir, c)
            argv += ["--tls-dir", str(self.tls.controller), "--nbd-access", str(self.tls.access_file)]
        else:  # the control API still holds group tokens to it
            argv += ["--nbd-access", str(credentials.write_access(self.data_dir / "tls" / "access.json", c))]
        self.controller = self._spawn("controller", argv)

    def nbd_url(self, lu: str) -> str:
        """The URL ``nasblade up`` opens an LU by (with the admin certificate under TLS)."""
        if self.tls is None:
            return f"nbd://{self.nbd}/{lu}"
        return f"nbds://{self.nbd}/{lu}?tls-certificates={self.tls.admin}"

    @property
    def nbd(self) -> str:
        assert self.controller is not None
        return str(self.controller.ready["endpoints"]["nbd"])

    @property
    def api(self) -> str:
        assert self.controller is not None
        return str(self.controller.ready["endpoints"]["api"])

    def _client(self) -> Any:
        from nasblade.controller.apiclient import ControlClient

        return ControlClient(self.api, self._secret("controller-token").read_text().strip())

    def _create_lus(self, client: Any) -> None:
        from nasblade.controller.apiclient import ControlAPIError

        c = self.config
        have = {lu["name"]: lu for lu in client.list_lus()}
        wanted = [(PROGRAM_LU, c.program_size), (PROCINFO_LU, c.procinfo_size), (BACKUP_LU, c.backup_size)]
        wanted += [(fs_lu(fs), fs.size) for fs in c.file_systems]
        for name, size in wanted:
            if name in have:
                if have[name]["size"] < size:
                    client.update_lu(name, size=size)
                continue
            try:
                client.create_lu(name, size)
            except ControlAPIError as exc:
                raise ArrayError(f"creating LU {name} ({size} bytes) failed: {exc.message}") from exc
            for fs in c.file_systems:
                if fs_lu(fs) == name:
                    self._mkfs(name, root_mode=fs.root_mode)

    def _mkfs(self, lu: str, *, root_mode: int) -> None:
        from nasblade.fs import fs as fsmod
        from nasblade.nbd.client import NBDBlockDevice

        with NBDBlockDevice.connect(self.nbd_url(lu)) as dev:
            fsmod.mkfs(dev, root_mode=root_mode)
            dev.flush()

    def _software(self) -> None:
        import nasblade
        from nasblade.nbd.client import NBDBlockDevice
        from nasblade.program import bundle
        from nasblade.program.catalog import ProgramError, ProgramStore

        wanted = self.config.software_version
        with NBDBlockDevice.connect(self.nbd_url(PROGRAM_LU)) as dev:
            store = ProgramStore(dev)
            catalog = store.catalog()
            if not catalog.bundles:
                version = wanted or nasblade.__version__
                store.push(bundle.build(version=version), version=version, select=True)
                log.info("pushed blade software %s to the program LU", version)
            elif wanted is not None and catalog.get(wanted) is None:
                raise ProgramError(
                    f"software.version: {wanted} is not in the program catalog"
                    f" (available: {', '.join(catalog.versions())})"
                )
        self.software_version = wanted

    def _start_blades(self) -> list[dict[str, Any]]:
        c, net = self.config, self.config.network
        blade_token = self._secret("blade-token")
        out = []
        port = net.blade_api_port
        for gi, group in enumerate(c.groups):
            for slot, blade in enumerate(group.blades):
                rundir = self.data_dir / "run" / blade
                rundir.mkdir(parents=True, exist_ok=True)
                owned = [fs for fs in c.file_systems if fs.preferred_blade == blade]
                argv = [*NASBLADE, "block-processor", "--blade", blade, "--group", group.name,
                        "--group-index", str(gi), "--slot", str(slot),
                        "--controller-nbd", self.nbd, "--controller-api", self.api,
                        "--token-file", str(self.group_token_file(group.name)),
                        "--portion-size", str(c.portion_size),
                        "--procinfo-lu", PROCINFO_LU, "--program-lu", PROGRAM_LU,
                        "--software-dir", str(rundir / "software"),
                        "--nbd-unix", str(rundir / "nbd.sock"), "--local-unix", str(rundir / "local.sock"),
                        "--api-listen", f"{net.controller_address}:{port if port else 0}",
                        "--api-token-file", str(blade_token),
                        "--controller-wait", str(group.controller_wait)]
                if self.software_version:
                    argv += ["--software-version", self.software_version]
                for fs in owned:
                    argv += ["--own", fs_lu(fs)]
                argv += ["--fp-unix", str(rundir / "fp.sock")]
                argv += ["--cluster-config", str(cluster_config.write_standalone(
                    c, group.name, self.data_dir / "run" / f"cluster-{group.name}.json",
                    chassis=str(self.chassis_socket)))]
                for fs in c.file_systems:
                    if fs.cluster_group == group.name:
                        spec = {"name": fs.name, "lu": fs_lu(fs), **self._listen_spec(fs)}
                        argv += ["--fs-spec", json.dumps(spec, sort_keys=True)]
                if port:
                    port += 1
                if self.tls is not None:
                    self.child_env[f"{blade}-bp"] = {tls.ENV_DIR: str(self.tls.group(group.name))}
                bp = self._spawn(f"{blade}-bp", argv, blade=blade, part="bp")
                if bp.ready.get("softwareError") and not bp.ready.get("software"):
                    raise ArrayError(f"{blade}: no blade software: {bp.ready['softwareError']}")
                fp = self._spawn(f"{blade}-fp", [*self._fp_argv(blade, rundir, owned, group.heartbeat_interval),
                                                  "--fence-after", str(group.failure_timeout / 2),
                                                  "--read-cache", str(group.read_cache)],
                                 blade=blade, part="fp")
                out.append({"name": blade, "group": group.name, "bp": bp, "fp": fp, "owned": owned})
        return out

    def _fp_argv(self, blade: str, rundir: Path, owned: list[FileSystem], heartbeat: float) -> list[str]:
        argv = [*NASBLADE, "boot", "--software-dir", str(rundir / "software"), "--",
                "blade-file-processor", "--blade", blade,
                "--local-unix", str(rundir / "local.sock"),
                "--heartbeat-interval", str(heartbeat),
                "--control-unix", str(rundir / "fp.sock")]
        for fs in owned:
            spec = {
                "name": fs.name,
                "device": f"nbd+unix:///{fs_lu(fs)}?socket={rundir / 'nbd.sock'}",
                **self._listen_spec(fs),
            }
            argv += ["--fs", json.dumps(spec, sort_keys=True)]
        return argv

    def _listen_spec(self, fs: FileSystem) -> dict[str, Any]:
        """Address, ports and exports of ``fs`` as the file processor takes them."""
        net = self.config.network
        return {
            "address": fs.address,
            "nfsPort": net.nfs_port,
            "mountPort": net.mount_port,
            "portmapPort": net.portmap_port,
            "exports": [
                {"path": e.path if e.path != "/" else f"/{fs.name}", "subdir": "/",
                 "clients": list(e.clients), "access": e.access, "rootSquash": e.root_squash}
                for e in fs.exports
            ],
        }

    def _summary(self, blades: list[dict[str, Any]]) -> dict[str, Any]:
        net = self.config.network
        nfs = []
        for b in blades:
            for fs in b["owned"]:
                for e in fs.exports:
                    path = e.path if e.path != "/" else f"/{fs.name}"
                    nfs.append({
                        "fileSystem": fs.name,
                        "host": fs.address,
                        "nfsPort": net.nfs_port,
                        "mountPort": net.mount_port,
                        "export": path,
                        "url": f"nfs://{fs.address}{path}?nfsport={net.nfs_port}&mountport={net.mount_port}&version=3",
                        "blade": b["name"],
                        "pid": b["fp"].proc.pid,
                    })
        return {
            "controller": {"nbd": self.nbd, "api": self.api, "pid": self.controller.proc.pid if self.controller else None,
                           "nbdTLS": self.tls is not None,
                           "tlsCertificates": str(self.tls.admin) if self.tls is not None else None},
            "nfs": nfs,
            "blades": [
                {"name": b["name"], "group": b["group"], "api": b["bp"].ready["endpoints"].get("api"),
                 "software": b["bp"].ready.get("software"),
                 "blockProcessorPid": b["bp"].proc.pid, "fileProcessorPid": b["fp"].proc.pid}
                for b in blades
            ],
            "secrets": str(self.secrets_dir),
        }

    # -- supervision and stop ---------------------------------------------------------------

    def exited(self) -> list[tuple[str, int]]:
        """Children that have exited on their own, with their status."""
        return [(c.name, rc) for c in self.children if (rc := c.proc.poll()) is not None]

    def stop(self, *, timeout: float = 30.0) -> None:
        order = sorted(
            self.children,
            key=lambda c: 0 if c.name.endswith("-fp") else 1 if c.name.endswith("-bp") else 2,
        )
        for rank in (0, 1, 2):
            group = [c for c in order if (0 if c.name.endswith("-fp") else 1 if c.name.endswith("-bp") else 2) == rank]
            for c in group:
                if c.proc.poll() is None:
                    os.killpg(c.proc.pid, signal.SIGTERM)
            for c in group:
                try:
                    c.proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    log.warning("%s did not stop in %ss; killing it", c.name, timeout)
                    os.killpg(c.proc.pid, signal.SIGKILL)
                    c.proc.wait()
        self.children.clear()
