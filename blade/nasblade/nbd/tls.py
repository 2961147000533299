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
the terminal: every LU) or ``group:NAME`` (the blades of cluster group NAME: the LUs
``nasblade.nbd.access`` gives that group). Anything else is a valid certificate with no rights.

``NASBLADE_NBD_TLS_DIR`` names a client credentials directory for processes that reach the
controller by URL (``nbd://``): blade pods, the operator, the standalone array's children.
The variable holds a path, never a secret.
"""

from __future__ import annotations

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

ADMIN = "admin"
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


def server_context(directory: str | os.PathLike[str]) -> ssl.SSLContext:
    """The controller's context: its certificate, client certificates required (CA-signed)."""
    ca, cert, key = _need(Path(directory), CA_CERT, SERVER_CERT, SERVER_KEY)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=ca)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


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


_default: dict[str, ssl.SSLContext] = {}


def default_client_context() -> ssl.SSLContext | None:
    """The client context of ``NASBLADE_NBD_TLS_DIR`` (made once per directory), or ``None``
    when the variable is unset: then TCP connections to the controller are plaintext."""
    directory = env_dir()
    if directory is None:
        return None
    if directory not in _default:
        _default[directory] = client_context(directory)
    return _default[directory]
