"""Certificates of an array: a CA per array, a server certificate for its controller (NBD and
the HTTPS control API), client certificates for the operator/terminal (``admin``), and one
per blade (client of NBD as its group, server of its HTTPS blade API).

Made with the ``cryptography`` package (PyPI); no hand-made crypto. Keys are ECDSA P-256.
The operator keeps the results in Secrets (``nasblade_operator.diskarray`` and
``clustergroup`` builders); ``nasblade up`` keeps them under ``DATA_DIR/tls``
(``nasblade.standalone``). ``write_dir`` writes the file layout of ``nasblade.tls``.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from nasblade import tls

CA_KEY = "ca-key.pem"
#: certificates are valid from this long before they are made (peers' clocks may lag)
BACKDATE = datetime.timedelta(minutes=5)
CA_DAYS = 3650
LEAF_DAYS = 90


@dataclass(frozen=True)
class KeyPair:
    """A PEM certificate and its PEM private key."""

    cert: bytes
    key: bytes


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def make_ca(name: str, *, days: float = CA_DAYS) -> KeyPair:
    """A self-signed CA certificate (path length 0: it signs leaves only)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = _now()
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, key_cert_sign=True, crl_sign=True,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    return KeyPair(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def issue(ca: KeyPair, common_name: str, *, server_names: Iterable[str] = (),
          server: bool = False, client: bool | None = None, days: float = LEAF_DAYS) -> KeyPair:
    """A leaf certificate signed by ``ca``: a server's (``server=True``, with ``server_names``
    as DNS or IP subject alternative names), a client's (its identity is ``common_name``), or
    both (``server=True, client=True``: a blade, client of NBD and server of its API)."""
    ca_cert = x509.load_pem_x509_certificate(ca.cert)
    ca_key = serialization.load_pem_private_key(ca.key, password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ValueError("the CA key is not an EC key")
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    if client is None:
        client = not server
    usages = [u for u, on in ((ExtendedKeyUsageOID.SERVER_AUTH, server),
                              (ExtendedKeyUsageOID.CLIENT_AUTH, client)) if on]
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
               .issuer_name(ca_cert.subject).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - BACKDATE)
               .not_valid_after(now + datetime.timedelta(days=days))
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                            key_encipherment=False, data_encipherment=False,
                                            key_agreement=True, key_cert_sign=False, crl_sign=False,
                                            encipher_only=False, decipher_only=False), critical=True)
               .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                   ca_key.public_key()), critical=False))
    names = list(server_names)
    if names:
        alt: list[x509.GeneralName] = []
        for n in names:
            try:
                alt.append(x509.IPAddress(ipaddress.ip_address(n)))
            except ValueError:
                alt.append(x509.DNSName(n))
        builder = builder.add_extension(x509.SubjectAlternativeName(alt), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    return KeyPair(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def expires(cert_pem: bytes) -> datetime.datetime:
    """When a PEM certificate stops being valid."""
    return x509.load_pem_x509_certificate(cert_pem).not_valid_after_utc


@dataclass(frozen=True)
class LeafInfo:
    """What a leaf certificate says, enough to issue its successor: identity, names, usages,
    lifetime, issuer."""

    common_name: str
    server_names: tuple[str, ...]
    server: bool
    client: bool
    not_before: datetime.datetime
    not_after: datetime.datetime
    issuer_key_id: bytes | None

    @property
    def lifetime(self) -> datetime.timedelta:
        return self.not_after - self.not_before


def leaf_info(cert_pem: bytes) -> LeafInfo:
    cert = x509.load_pem_x509_certificate(cert_pem)
    names: list[str] = []
    try:
        alt = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = [*alt.get_values_for_type(x509.DNSName), *(str(a) for a in alt.get_values_for_type(x509.IPAddress))]
    except x509.ExtensionNotFound:
        pass
    try:
        eku = list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    except x509.ExtensionNotFound:
        eku = []
    try:
        aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier
    except x509.ExtensionNotFound:
        aki = None
    return LeafInfo(common_name(cert_pem), tuple(names), ExtendedKeyUsageOID.SERVER_AUTH in eku,
                    ExtendedKeyUsageOID.CLIENT_AUTH in eku, cert.not_valid_before_utc, cert.not_valid_after_utc, aki)


def key_id(cert_pem: bytes) -> bytes:
    """A CA certificate's subject key identifier (what its leaves name as their issuer)."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    return cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest


def not_before(cert_pem: bytes) -> datetime.datetime:
    return x509.load_pem_x509_certificate(cert_pem).not_valid_before_utc


def split_pem(bundle: bytes) -> list[bytes]:
    """The certificates of a PEM bundle, each as its own PEM."""
    return [c.public_bytes(serialization.Encoding.PEM) for c in x509.load_pem_x509_certificates(bundle)]


def common_name(cert_pem: bytes) -> str:
    """The subject common name of a PEM certificate."""
    attrs = x509.load_pem_x509_certificate(cert_pem).subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(attrs[0].value) if attrs else ""


def server_files(ca: KeyPair, leaf: KeyPair) -> dict[str, bytes]:
    """A server credentials directory's files (also the keys of its Secret)."""
    return {tls.CA_CERT: ca.cert, tls.SERVER_CERT: leaf.cert, tls.SERVER_KEY: leaf.key}


def client_files(ca: KeyPair, leaf: KeyPair) -> dict[str, bytes]:
    """A client credentials directory's files (also the keys of its Secret)."""
    return {tls.CA_CERT: ca.cert, tls.CLIENT_CERT: leaf.cert, tls.CLIENT_KEY: leaf.key}


def write_dir(directory: str | os.PathLike[str], files: dict[str, bytes]) -> Path:
    """Write credential files, keys readable by the owner only."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    for name, data in files.items():
        path = d / name
        tmp = path.with_name(name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    return d
