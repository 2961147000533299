"""TLS credentials for NBD: the directory layout, SSL contexts and a client's identity.

A credentials directory follows the layout nbdkit, qemu and libnbd use for
``--tls-certificates DIR`` (GnuTLS's x509 directory), so the same directory works for
``nbdinfo --tls=require --tls-certificates DIR``:

- ``ca-cert.pem``: the array's CA (the only CA a peer's certificate is checked against);
- ``server-cert.pem`` / ``server-key.pem``: the controller's certificate and key;
- ``client-cert.pem`` / ``client-key.pem``: a client's (blade, operator, terminal).

Both ends authenticate: the server requires a client certificate signed by the CA, the
client checks the server's certificate against the CA and the host name it dialled.

A client's identity is its certificate's subject common name: ``admin`` (the operator and
the terminal: every LU), ``group:NAME`` (the blades of cluster group NAME: the LUs
``nasblade.nbd.access`` gives that group) or ``csi`` (the CSI driver's controller plugin: the
LUs of its volumes, snapshots and catalog, ``nasblade.lunames.is_csi_lu``). Anything else is a
valid certificate with no rights.

``NASBLADE_NBD_TLS_DIR`` names a client credentials directory for processes that reach the
controller by URL (``nbd://``, ``https://``): blade pods, the operator, the standalone array's
children. The variable holds a path, never a secret.

The same directories secure the HTTPS control APIs (``nasblade.httptls``): the controller's
server certificate serves its control API too, and a blade's certificate (issued per blade,
usable as client and server) serves the blade API.

Rotation: credentials are files of a mounted Secret that the operator replaces before they
expire (``nasblade_operator.nbdtls``). ``ServerCredentials`` re-reads its files when they
change, at the next handshake (the ``sni_callback`` runs for every ClientHello), and
``default_client_context`` re-reads the client's on the next connection, so no process
restarts for a new certificate. ``ca-cert.pem`` may hold several CA certificates (the trust
bundle while a CA is being replaced: the new one and the old one).
"""

from __future__ import annotations

import logging
import os
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CA_CERT = "ca-cert.pem"
SERVER_CERT = "server-cert.pem"
SERVER_KEY = "server-key.pem"
CLIENT_CERT = "client-cert.pem"
CLIENT_KEY = "client-key.pem"

#: the environment variable naming a client credentials directory
ENV_DIR = "NASBLADE_NBD_TLS_DIR"

log = logging.getLogger(__name__)

ADMIN = "admin"
#: the CSI driver's controller plugin (its client certificate's common name; also the identity
#: of a csi-token request on the control API)
CSI = "csi"
_GROUP_PREFIX = "group:"


def group_identity(group: str) -> str:
    """The common name of a cluster group's client certificate."""
    return f"{_GROUP_PREFIX}{group}"


@dataclass(frozen=True)
class Identity:
    """Who a client certificate says its holder is."""

    name: str

    @property
    def admin(self) -> bool:
        return self.name == ADMIN

    @property
    def csi(self) -> bool:
        return self.name == CSI

    @property
    def group(self) -> str | None:
        if self.name.startswith(_GROUP_PREFIX) and len(self.name) > len(_GROUP_PREFIX):
            return self.name[len(_GROUP_PREFIX) :]
        return None


def peer_identity(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> Identity | None:
    """The identity in a verified peer certificate (``None`` without one)."""
    if ssl_object is None:
        return None
    cert = ssl_object.getpeercert()
    if not cert:
        return None
    subject: Any = cert.get("subject", ())
    for rdn in subject:
        for key, value in rdn:
            if key == "commonName":
                return Identity(str(value))
    return None


def _need(directory: Path, *names: str) -> list[str]:
    paths = [directory / n for n in names]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"TLS credentials missing: {', '.join(missing)}")
    return [str(p) for p in paths]


def _stamp(paths: list[str]) -> tuple[tuple[int, int, int], ...]:
    """What changes when a file is replaced (a Secret volume swaps a symlink: the target's
    inode and modification time change; ``stat`` follows the link)."""
    out = []
    for p in paths:
        st = os.stat(p)
        out.append((st.st_ino, st.st_mtime_ns, st.st_size))
    return tuple(out)


def _server_context(ca: str, cert: str, key: str, *, client_auth: bool) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=ca)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    ctx.verify_mode = ssl.CERT_REQUIRED if client_auth else ssl.CERT_NONE
    return ctx


class ServerCredentials:
    """A server's TLS context that follows its credential files.

    ``context`` is handed to the server once (``loop.start_tls``, aiohttp's ``TCPSite``); its
    ``sni_callback`` runs at every ClientHello and, when the files changed since they were
    last read, switches that connection to a context made from the new files (later
    connections too). A half-written or broken set keeps the last good one (logged).
    ``client_auth``: require a client certificate signed by the CA (NBD); without it (the
    HTTPS control APIs, where bearer tokens authenticate) clients show none.
    """

    def __init__(self, directory: str | os.PathLike[str], *, client_auth: bool = True) -> None:
        self.paths = _need(Path(directory), CA_CERT, SERVER_CERT, SERVER_KEY)
        self.client_auth = client_auth
        self._stamp = _stamp(self.paths)
        self.current = _server_context(*self.paths, client_auth=client_auth)
        self.context = _server_context(*self.paths, client_auth=client_auth)
        self.context.sni_callback = self._on_hello
        self.reloads = 0

    def refresh(self) -> ssl.SSLContext:
        """The context of the files as they are now (re-read only when they changed)."""
        try:
            stamp = _stamp(self.paths)
            if stamp != self._stamp:
                self.current = _server_context(*self.paths, client_auth=self.client_auth)
                self._stamp = stamp
                self.reloads += 1
                log.info("TLS: new server credentials loaded from %s", Path(self.paths[1]).parent)
        except (OSError, ssl.SSLError) as exc:
            log.warning("TLS: server credentials unreadable, keeping the last good ones: %s", exc)
        return self.current

    def _on_hello(self, ssl_object: ssl.SSLObject, server_name: str | None, _ctx: ssl.SSLContext) -> None:
        current = self.refresh()
        if ssl_object.context is not current:
            ssl_object.context = current


def server_context(directory: str | os.PathLike[str], *, client_auth: bool = True) -> ssl.SSLContext:
    """A server's context (its certificate; with ``client_auth`` CA-signed client
    certificates required) that reloads its files when they change (``ServerCredentials``)."""
    return ServerCredentials(directory, client_auth=client_auth).context


def client_context(directory: str | os.PathLike[str]) -> ssl.SSLContext:
    """A client's context: its certificate; the server's checked against the CA and host name."""
    ca, cert, key = _need(Path(directory), CA_CERT, CLIENT_CERT, CLIENT_KEY)
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    return ctx


def env_dir() -> str | None:
    """The client credentials directory named by ``NASBLADE_NBD_TLS_DIR`` (or ``None``)."""
    return os.environ.get(ENV_DIR) or None


_default: dict[str, tuple[tuple[tuple[int, int, int], ...], ssl.SSLContext]] = {}


def cached_client_context(directory: str) -> ssl.SSLContext:
    """``client_context(directory)``, made again only when its files changed (rotation)."""
    paths = _need(Path(directory), CA_CERT, CLIENT_CERT, CLIENT_KEY)
    stamp = _stamp(paths)
    have = _default.get(directory)
    if have is None or have[0] != stamp:
        try:
            _default[directory] = (stamp, client_context(directory))
        except ssl.SSLError:
            if have is None:
                raise
            log.warning("TLS: client credentials in %s unreadable, keeping the last good ones", directory)
            return have[1]
    return _default[directory][1]


def default_client_context() -> ssl.SSLContext | None:
    """The client context of ``NASBLADE_NBD_TLS_DIR`` (re-read when its files change), or
    ``None`` when the variable is unset: then TCP connections to the controller are plaintext."""
    directory = env_dir()
    if directory is None:
        return None
    return cached_client_context(directory)
