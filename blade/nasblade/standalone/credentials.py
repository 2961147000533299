"""The standalone array's NBD TLS credentials, under ``DATA/tls`` (``nasblade.pki``).

Made on first start and kept across restarts (a restart never changes who trusts whom):

- ``ca/``: the array's CA (``ca-cert.pem``, ``ca-key.pem``); the key never leaves this folder;
- ``controller/``: the controller's server certificate (names: its listen address,
  ``localhost``, ``127.0.0.1``), for ``nasblade controller --tls-dir``;
- ``admin/``: the client certificate of ``nasblade up`` itself and the terminal (identity
  ``admin``: every LU); also what ``nbdinfo``/``nbdcopy`` take as
  ``nbds://HOST:PORT/LU?tls-certificates=DATA/tls/admin``;
- ``group-NAME/``: the client certificate of cluster group NAME's blades (identity
  ``group:NAME``), given to its block processors as ``NASBLADE_NBD_TLS_DIR``;
- ``access.json``: which file-system LUs each group opens (``nasblade.nbd.access``),
  rewritten from the configuration on every start (also without NBD TLS: the control API
  holds the blades' group tokens to it).

Every file is mode 0600 in 0700 folders.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from nasblade import lunames, pki, tls
from nasblade.nbd import access
from nasblade.procinfo.portion import portion_offset
from nasblade.standalone.config import Config


@dataclass(frozen=True)
class Credentials:
    root: Path

    @property
    def controller(self) -> Path:
        return self.root / "controller"

    @property
    def admin(self) -> Path:
        return self.root / "admin"

    def group(self, name: str) -> Path:
        return self.root / f"group-{name}"

    @property
    def access_file(self) -> Path:
        return self.root / "access.json"


def _ca(root: Path) -> pki.KeyPair:
    d = root / "ca"
    cert, key = d / tls.CA_CERT, d / pki.CA_KEY
    if not (cert.is_file() and key.is_file()):
        ca = pki.make_ca(f"nasblade standalone array CA ({root.parent.name})")
        pki.write_dir(d, {tls.CA_CERT: ca.cert, pki.CA_KEY: ca.key})
    return pki.KeyPair(cert.read_bytes(), key.read_bytes())


def ensure(data_dir: Path, config: Config) -> Credentials:
    """Make what is missing under ``DATA/tls`` and write the access file."""
    creds = Credentials(data_dir / "tls")
    creds.root.mkdir(parents=True, exist_ok=True, mode=0o700)
    ca = _ca(creds.root)
    if not (creds.controller / tls.SERVER_CERT).is_file():
        names = sorted({config.network.controller_address, "localhost", "127.0.0.1"})
        leaf = pki.issue(ca, "controller", server_names=names, server=True)
        pki.write_dir(creds.controller, pki.server_files(ca, leaf))
    clients = {creds.admin: tls.ADMIN}
    clients.update({creds.group(g.name): tls.group_identity(g.name) for g in config.groups})
    for directory, identity in clients.items():
        if not (directory / tls.CLIENT_CERT).is_file():
            pki.write_dir(directory, pki.client_files(ca, pki.issue(ca, identity)))
    write_access(creds.access_file, config)
    return creds


def write_access(path: Path, config: Config) -> Path:
    """Write the access file: which LUs (and which portion of ``procinfo`` and ``backup``)
    each group's blades reach, over NBD (with TLS) and
    through the control API (their group tokens, ``nasblade.grants``) -- the second with or
    without NBD TLS."""
    groups: dict[str, list[str]] = {g.name: [] for g in config.groups}
    for fs in config.file_systems:
        groups.setdefault(fs.cluster_group, []).append(lunames.fs_lu(fs.name))
    # each group's portion of procinfo (and its backup area in backup): the blades' --group-index
    portions = {g.name: (portion_offset(i, config.portion_size), config.portion_size)
                for i, g in enumerate(config.groups)}
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    cross = {g.name: g.backup.cross_group for g in config.groups}  # the portions its blades back up too
    access.write(path, access.AccessPolicy.of_groups(groups, portions=portions, cross_group=cross))
    return path
