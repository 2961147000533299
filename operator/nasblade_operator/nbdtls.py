"""The NBD TLS credentials of an array, as Secrets: who may reach which LU over NBD.

Per DiskArray (all in its namespace, owned by it):

- ``<array>-nbd-ca``: the array's CA (``ca-cert.pem``, ``ca-key.pem``), made once with
  ``nasblade.nbd.pki``; only the operator reads it;
- ``<array>-nbd-controller``: the controller's server certificate (names: the controller
  Service's DNS names), mounted at ``/etc/nasblade-nbd/tls`` (``--tls-dir``);
- ``<array>-nbd-access``: ``access.json`` (``nasblade.nbd.access``: each cluster group's
  file-system LUs, from ``spec.fileSystems[].clusterGroup``), mounted at
  ``/etc/nasblade-nbd/access`` (``--nbd-access``); replaced when a file system changes group,
  and the kubelet brings the new file to the running controller (which re-reads it);
- ``<array>-nbd-admin``: the operator's client certificate (identity ``admin``), used for
  seeding the program LU and formatting file systems;
- ``<array>-nbd-group-<group>``: a cluster group's client certificate (identity
  ``group:<group>``), mounted into its blades' block processor at ``/etc/nasblade-nbd/tls``
  with ``NASBLADE_NBD_TLS_DIR`` naming it (not under ``/etc/nasblade``, where the blade pod
  mounts its read-only cluster configuration).

Certificates are made only when their Secret is missing: deleting a Secret (or the CA
Secret, then all of them) is how they are renewed. The builders here are pure; ``ensure_*``
do the API calls.
"""

from __future__ import annotations

import base64
import json
import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import kopf
from nasblade.nbd import access, pki, tls

from nasblade_operator import kube, naming

TLS_DIR = "/etc/nasblade-nbd/tls"
ACCESS_DIR = "/etc/nasblade-nbd/access"
ACCESS_FILE = "access.json"


def _labels(array: str) -> dict[str, str]:
    return {**naming.common_labels(component="nbd-tls", instance=array), naming.L_ARRAY: array}


def secret(name: str, array: str, files: Mapping[str, bytes]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "labels": _labels(array)},
        "type": "Opaque",
        "data": {k: base64.b64encode(v).decode() for k, v in sorted(files.items())},
    }


def files_of(obj: Mapping[str, Any]) -> dict[str, bytes]:
    return {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()}


def server_names(array: str, namespace: str, domain: str) -> list[str]:
    """DNS names clients dial the controller by (blades: ``<ctrl>.<ns>.svc``)."""
    ctrl = naming.controller_name(array)
    names = [ctrl, f"{ctrl}.{namespace}", f"{ctrl}.{namespace}.svc", f"{ctrl}.{namespace}.{domain}"]
    return list(dict.fromkeys(names))


def access_policy(file_systems: Iterable[tuple[str, str]]) -> access.AccessPolicy:
    """The access file of (file system, cluster group) pairs."""
    groups: dict[str, list[str]] = {}
    for fs, group in file_systems:
        groups.setdefault(group, []).append(naming.filesystem_lu(fs))
    return access.AccessPolicy.of_groups(
        groups, shared=(naming.LU_PROGRAM, naming.LU_PROCESSOR_INFO, naming.LU_BACKUP))


def access_secret(array: str, policy: access.AccessPolicy) -> dict[str, Any]:
    body = (json.dumps(policy.to_json(), indent=1, sort_keys=True) + "\n").encode()
    return secret(naming.nbd_access_secret_name(array), array, {ACCESS_FILE: body})


def controller_args() -> list[str]:
    return ["--tls-dir", TLS_DIR, "--nbd-access", f"{ACCESS_DIR}/{ACCESS_FILE}"]


def controller_volumes(array: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(pod volumes, container mounts) of the controller's server certificate and access file."""
    volumes = [
        {"name": "nbd-tls", "secret": {"secretName": naming.nbd_server_secret_name(array),
                                       "defaultMode": 0o400}},
        {"name": "nbd-access", "secret": {"secretName": naming.nbd_access_secret_name(array),
                                          "defaultMode": 0o444}},
    ]
    mounts = [{"name": "nbd-tls", "mountPath": TLS_DIR, "readOnly": True},
              {"name": "nbd-access", "mountPath": ACCESS_DIR, "readOnly": True}]
    return volumes, mounts


def blade_volume(array: str, group: str) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(pod volume, block-processor mount, env entry) of a group's client certificate."""
    return ({"name": "nbd-tls", "secret": {"secretName": naming.nbd_group_secret_name(array, group),
                                           "defaultMode": 0o400}},
            {"name": "nbd-tls", "mountPath": TLS_DIR, "readOnly": True},
            {"name": tls.ENV_DIR, "value": TLS_DIR})


# --- API calls -------------------------------------------------------------------------------


async def _ca(k: kube.Kube, owner: kopf.Body | None, array: str, namespace: str) -> pki.KeyPair | None:
    """The array's CA; made when ``owner`` (the DiskArray) is given and it is missing."""
    name = naming.nbd_ca_secret_name(array)
    obj = await k.get("Secret", name, namespace=namespace)
    if obj is None:
        if owner is None:
            return None
        ca = pki.make_ca(f"nasblade array {namespace}/{array} NBD CA")
        obj = secret(name, array, {tls.CA_CERT: ca.cert, pki.CA_KEY: ca.key})
        kopf.adopt(obj, owner=owner)
        obj, _ = await k.create(obj)
    files = files_of(obj)
    return pki.KeyPair(files[tls.CA_CERT], files[pki.CA_KEY])


async def _leaf(k: kube.Kube, owner: kopf.Body, ca: pki.KeyPair, *, name: str, array: str,
                namespace: str, identity: str, server: Iterable[str] | None = None) -> bool:
    """Make a certificate Secret when missing; True when it was made."""
    if await k.get("Secret", name, namespace=namespace) is not None:
        return False
    if server is not None:
        files = pki.server_files(ca, pki.issue(ca, identity, server_names=server, server=True))
    else:
        files = pki.client_files(ca, pki.issue(ca, identity))
    obj = secret(name, array, files)
    kopf.adopt(obj, owner=owner)
    _, created = await k.create(obj)
    return created


async def ensure_array(k: kube.Kube, owner: kopf.Body, *, array: str, namespace: str, domain: str,
                       file_systems: Iterable[tuple[str, str]]) -> list[str]:
    """CA, controller, admin and group certificates and the access file; names of what was made."""
    ca = await _ca(k, owner, array, namespace)
    assert ca is not None
    made: list[str] = []
    fss = list(file_systems)
    leaves: list[tuple[str, str, list[str] | None]] = [
        (naming.nbd_server_secret_name(array), "controller", server_names(array, namespace, domain)),
        (naming.nbd_admin_secret_name(array), tls.ADMIN, None),
    ]
    leaves += [(naming.nbd_group_secret_name(array, g), tls.group_identity(g), None)
               for g in sorted({g for _, g in fss})]
    for name, identity, names in leaves:
        if await _leaf(k, owner, ca, name=name, array=array, namespace=namespace, identity=identity,
                       server=names):
            made.append(f"Secret {name}")
    want = access_secret(array, access_policy(fss))
    have = await k.get("Secret", want["metadata"]["name"], namespace=namespace)
    if have is None:
        kopf.adopt(want, owner=owner)
        await k.create(want)
        made.append(f"Secret {want['metadata']['name']}")
    elif have.get("data") != want["data"]:
        # replaced, not patched (the operator's role may get, create and delete Secrets only);
        # the kubelet brings the new file into the running controller's volume
        await k.delete("Secret", want["metadata"]["name"], namespace=namespace)
        kopf.adopt(want, owner=owner)
        await k.create(want)
        made.append(f"Secret {want['metadata']['name']} (new access file)")
    return made


async def ensure_group(k: kube.Kube, owner: kopf.Body, *, array: str, group: str,
                       namespace: str) -> bool:
    """A cluster group's client certificate (before its blade pods); False while the array's
    CA does not exist yet."""
    ca = await _ca(k, None, array, namespace)
    if ca is None:
        return False
    await _leaf(k, owner, ca, name=naming.nbd_group_secret_name(array, group), array=array,
                namespace=namespace, identity=tls.group_identity(group))
    return True


async def admin_dir(k: kube.Kube, *, array: str, namespace: str, cache: dict[tuple[str, str], Path]) -> Path | None:
    """A private directory with the operator's client certificate for ``array`` (written from
    its Secret once per array and kept in ``cache``: ``OperatorState.admin_dirs``, emptied when
    the array goes), or ``None`` while the Secret does not exist."""
    key = (namespace, array)
    if key in cache and (cache[key] / tls.CLIENT_CERT).is_file():
        return cache[key]
    obj = await k.get("Secret", naming.nbd_admin_secret_name(array), namespace=namespace)
    if obj is None:
        return None
    d = Path(tempfile.mkdtemp(prefix=f"nbd-{namespace}-{array}-"))
    os.chmod(d, 0o700)
    pki.write_dir(d, files_of(obj))
    cache[key] = d
    return d
