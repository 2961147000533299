"""The TLS credentials of an array, as Secrets: who may reach which LU over NBD, and the keys of
the HTTPS control and blade APIs. Issued, renewed and rotated here.

Per DiskArray (all in its namespace):

- ``<array>-nbd-ca``: the array's CA (``ca-cert.pem``, ``ca-key.pem``; ``ca-previous.pem``: the
  CAs it replaced, still trusted until they expire), made with ``nasblade.pki``; only the
  operator reads it;
- ``<array>-nbd-controller``: the controller's server certificate (names: the controller
  Service's DNS names, ``localhost``), mounted at ``/etc/nasblade-nbd/tls`` (``--tls-dir``):
  NBD over TLS and the HTTPS control API (``--api-tls``);
- ``<array>-nbd-access``: ``access.json`` (``nasblade.nbd.access``: each cluster group's
  file-system LUs, from ``spec.fileSystems[].clusterGroup``, and its portion of ``procinfo``
  and ``backup``, from ``status.portions``), mounted at
  ``/etc/nasblade-nbd/access`` (``--nbd-access``); replaced when a file system changes group,
  and the kubelet brings the new file to the running controller (which re-reads it);
- ``<array>-nbd-admin``: the operator's client certificate (identity ``admin``), used for
  seeding the program LU and formatting file systems;
- ``<array>-nbd-csi``: the CSI controller plugin's client certificate (identity ``csi``: the
  LUs of the driver's volumes, snapshots and catalog only, ``nasblade.nbd.access``);
- ``<array>-tls-trust``: the CA bundle alone, for scrapers of the HTTPS metrics endpoints.

Per ClusterGroup (owned by it): ``<group>-group-token``, the group's control-API credential
(``nasblade.grants``: the controller holds it to the LUs this access file gives the group),
projected into its blade pods as their ``token`` instead of the array's control token
(``ensure_group_token``).

Per blade pod (owned by its ClusterGroup): ``<array>-nbd-<pod>``, one certificate that is the
blade's NBD client identity (``group:<group>``: the LUs of its group) and the server
certificate of its HTTPS blade API (names: the pod name and ``<array>-blades``), mounted into
the block processor at ``/etc/nasblade-nbd/tls`` with ``NASBLADE_NBD_TLS_DIR`` naming it.
A blade scaled away takes its certificate with it.

Lifetimes and rotation (``settings``: ``cert_lifetime``, ``ca_lifetime``, ``cert_propagation``):
every check (``ensure_array`` on each generation and on the status timer, ``ensure_blade`` on
each blade's creation and on the group's timer) renews a leaf with less than a third of its
life left, in place (the Secret keeps its name; the kubelet brings the new files into the
running pods, and every process re-reads them at its next TLS handshake, ``nasblade.tls``).
A CA with less than a third left is replaced by a new one; the old one stays in every
bundle until it expires, so each peer trusts both. Leaves first receive the new bundle
("rebundled": same key and certificate), and are issued from the new CA only after
``cert_propagation``, when every pod has had time to receive the bundle that trusts it.
The builders and decisions here are pure; ``ensure_*`` do the API calls.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal, cast

import kopf
from nasblade import grants, pki, tls
from nasblade.nbd import access

from nasblade_operator import kube, naming, settings
from nasblade_operator.diskarray import spec as da_spec

log = logging.getLogger(__name__)

TLS_DIR = "/etc/nasblade-nbd/tls"
ACCESS_DIR = "/etc/nasblade-nbd/access"
ACCESS_FILE = "access.json"
CA_PREVIOUS = "ca-previous.pem"


def _labels(array: str) -> dict[str, str]:
    return {**naming.common_labels(component="nbd-tls", instance=array), naming.L_ARRAY: array}


def secret(name: str, array: str, files: Mapping[str, bytes]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "labels": _labels(array)},
        "type": "Opaque",
        "data": _data(files),
    }


def _data(files: Mapping[str, bytes]) -> dict[str, str]:
    return {k: base64.b64encode(v).decode() for k, v in sorted(files.items())}


def files_of(obj: Mapping[str, Any]) -> dict[str, bytes]:
    return {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()}


def server_names(array: str, namespace: str, domain: str) -> list[str]:
    """DNS names clients dial the controller by (blades: ``<ctrl>.<ns>.svc``; tools inside the
    controller's pod: ``localhost``)."""
    ctrl = naming.controller_name(array)
    names = [ctrl, f"{ctrl}.{namespace}", f"{ctrl}.{namespace}.svc", f"{ctrl}.{namespace}.{domain}",
             "localhost", "127.0.0.1"]
    return list(dict.fromkeys(names))


def blade_names(array: str, blade: str) -> list[str]:
    """Names in a blade's certificate: its pod name (the operator checks it) and the array's
    blades name (``naming.blades_server_name``: the PodMonitor's)."""
    return [blade, naming.blades_server_name(array)]


def access_policy(file_systems: Iterable[tuple[str, str]], *, portions: Iterable[tuple[str, int]] = (),
                  portion_size: int = 0, backup_targets: Mapping[str, Iterable[str]] | None = None,
                  ) -> access.AccessPolicy:
    """The access file of (file system, cluster group) pairs; with the groups' (group, portion
    index) pairs, each group reaches only its portion of the processor-information LU and its
    backup area in the backup LU, and those of the groups it backs up (``backup_targets``:
    group → ``spec.backup.targets``)."""
    groups: dict[str, list[str]] = {}
    for fs, group in file_systems:
        groups.setdefault(group, []).append(naming.filesystem_lu(fs))
    return access.AccessPolicy.of_groups(
        groups, shared=(naming.LU_PROGRAM, naming.LU_PROCESSOR_INFO, naming.LU_BACKUP),
        portions={g: (i * portion_size, portion_size) for g, i in portions} if portion_size else None,
        cross_group=backup_targets)


def array_access(da: Mapping[str, Any], groups: Iterable[Mapping[str, Any]] = ()) -> access.AccessPolicy:
    """The access file of a DiskArray object: its file systems' groups (``spec.fileSystems``),
    the groups' portions (``status.portions``, which ClusterGroups claim) and, from the
    ClusterGroup objects ``groups`` of the array, whose portions each backs up
    (``spec.backup.targets``)."""
    parsed = da_spec.parse(da.get("spec") or {})
    claimed = [(str(p["group"]), int(p["index"])) for p in (da.get("status") or {}).get("portions", [])
               if p.get("group") is not None and p.get("index") is not None]
    targets: dict[str, list[str]] = {}
    for g in groups:
        wanted = ((g.get("spec") or {}).get("backup") or {}).get("targets") or []
        if isinstance(wanted, list):
            targets[str(g["metadata"]["name"])] = [str(t) for t in wanted]
    return access_policy([(f.name, f.cluster_group) for f in parsed.file_systems], portions=claimed,
                         portion_size=parsed.areas.portion_size, backup_targets=targets)


def access_secret(array: str, policy: access.AccessPolicy) -> dict[str, Any]:
    body = (json.dumps(policy.to_json(), indent=1, sort_keys=True) + "\n").encode()
    return secret(naming.nbd_access_secret_name(array), array, {ACCESS_FILE: body})


def controller_args() -> list[str]:
    return ["--tls-dir", TLS_DIR, "--api-tls", "--nbd-access", f"{ACCESS_DIR}/{ACCESS_FILE}"]


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


def blade_volume(array: str, blade: str) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(pod volume, block-processor mount, env entry) of a blade's certificate."""
    return ({"name": "nbd-tls", "secret": {"secretName": naming.nbd_blade_secret_name(array, blade),
                                           "defaultMode": 0o400}},
            {"name": "nbd-tls", "mountPath": TLS_DIR, "readOnly": True},
            {"name": tls.ENV_DIR, "value": TLS_DIR})


# --- the decisions (pure) ----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Authority:
    """An array's CA: the one that signs (``signer``) and those it replaced (``previous``)."""

    signer: pki.KeyPair
    previous: tuple[bytes, ...] = ()

    def bundle(self, now: datetime.datetime) -> bytes:
        """What every peer trusts: the signer and every replaced CA not yet expired."""
        return b"".join([self.signer.cert, *(c for c in self.previous if pki.expires(c) > now)])

    def signing_since(self) -> datetime.datetime:
        return pki.not_before(self.signer.cert) + pki.BACKDATE

    @classmethod
    def of(cls, files: Mapping[str, bytes]) -> Authority:
        previous = pki.split_pem(files[CA_PREVIOUS]) if files.get(CA_PREVIOUS) else []
        return cls(pki.KeyPair(files[tls.CA_CERT], files[pki.CA_KEY]), tuple(previous))

    def files(self, now: datetime.datetime) -> dict[str, bytes]:
        live = b"".join(c for c in self.previous if pki.expires(c) > now)
        return {tls.CA_CERT: self.signer.cert, pki.CA_KEY: self.signer.key, CA_PREVIOUS: live}


def _due(not_before: datetime.datetime, not_after: datetime.datetime, now: datetime.datetime) -> bool:
    """A third of the certificate's life or less is left (its life counted from its making,
    ``pki.BACKDATE`` after its ``not_before``)."""
    made = min(not_before + pki.BACKDATE, not_after)
    return now >= not_after - (not_after - made) / 3


def rotate_ca(authority: Authority, *, name: str, now: datetime.datetime, lifetime: float) -> Authority | None:
    """A new authority when the signer is due (the old signer kept as previous), else None."""
    cert = authority.signer.cert
    if not _due(pki.not_before(cert), pki.expires(cert), now):
        return None
    new = pki.make_ca(name, days=lifetime / 86400)
    return Authority(new, (cert, *(c for c in authority.previous if pki.expires(c) > now)))


LeafAction = Literal["reissue", "rebundle"]


def leaf_action(files: Mapping[str, bytes], authority: Authority, *, now: datetime.datetime,
                propagation: float) -> LeafAction | None:
    """What a leaf Secret needs: a new certificate, the current bundle only, or nothing.

    While the signing CA is younger than ``propagation`` seconds, some pods may not trust it
    yet: a leaf then only receives the new bundle, and is issued from the new CA (because it
    is due, or was issued by a replaced CA) once that time has passed. A leaf with no
    certificate, or an expired one, is issued at once (nothing can trust it anyway)."""
    cert = files.get(tls.SERVER_CERT) or files.get(tls.CLIENT_CERT)
    if cert is None:
        return "reissue"
    info = pki.leaf_info(cert)
    if now >= info.not_after:
        return "reissue"
    bundled = files.get(tls.CA_CERT) == authority.bundle(now)
    settled = now - authority.signing_since() >= datetime.timedelta(seconds=propagation)
    if not settled:
        return None if bundled else "rebundle"
    if _due(info.not_before, info.not_after, now) or info.issuer_key_id != pki.key_id(authority.signer.cert):
        return "reissue"
    return None if bundled else "rebundle"


@dataclasses.dataclass(frozen=True)
class LeafSpec:
    """The certificate one Secret holds: identity, names, usages."""

    name: str
    identity: str
    server_names: tuple[str, ...] = ()
    server: bool = False
    client: bool = True


def leaf_files(spec: LeafSpec, authority: Authority, *, now: datetime.datetime, lifetime: float,
               have: Mapping[str, bytes] | None = None) -> dict[str, bytes]:
    """A leaf Secret's files: a new certificate, or (``have``, rebundling) the same one with the
    current bundle."""
    if have is not None:
        return {**have, tls.CA_CERT: authority.bundle(now)}
    leaf = pki.issue(authority.signer, spec.identity, server_names=spec.server_names, server=spec.server,
                     client=spec.client, days=lifetime / 86400)
    files = {tls.CA_CERT: authority.bundle(now)}
    if spec.server:
        files |= {tls.SERVER_CERT: leaf.cert, tls.SERVER_KEY: leaf.key}
    if spec.client:
        files |= {tls.CLIENT_CERT: leaf.cert, tls.CLIENT_KEY: leaf.key}
    return files


def array_leaves(array: str, namespace: str, domain: str) -> list[LeafSpec]:
    return [LeafSpec(naming.nbd_server_secret_name(array), "controller",
                     tuple(server_names(array, namespace, domain)), server=True, client=False),
            LeafSpec(naming.nbd_admin_secret_name(array), tls.ADMIN),
            LeafSpec(naming.nbd_csi_secret_name(array), tls.CSI)]


def blade_leaf(array: str, group: str, blade: str) -> LeafSpec:
    return LeafSpec(naming.nbd_blade_secret_name(array, blade), tls.group_identity(group),
                    tuple(blade_names(array, blade)), server=True, client=True)


def check_interval() -> float:
    """Seconds between certificate checks: a thirtieth of a leaf's life, at most an hour, and
    often enough to follow a CA rotation's propagation step."""
    cfg = settings.current()
    return max(1.0, min(3600.0, cfg.cert_lifetime / 30, cfg.cert_propagation / 4))


# --- API calls -------------------------------------------------------------------------------


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


async def _authority(k: kube.Kube, owner: kopf.Body | None, array: str, namespace: str,
                     made: list[str]) -> Authority | None:
    """The array's CA, rotated when due; made when ``owner`` (the DiskArray) is given and it is
    missing; None when missing otherwise."""
    cfg = settings.current()
    name = naming.nbd_ca_secret_name(array)
    now = _now()
    obj = await k.get("Secret", name, namespace=namespace)
    if obj is None:
        if owner is None:
            return None
        authority = Authority(pki.make_ca(f"nasblade array {namespace}/{array} CA", days=cfg.ca_lifetime / 86400))
        obj = secret(name, array, authority.files(now))
        kopf.adopt(obj, owner=owner)
        obj, created = await k.create(obj)
        if created:
            made.append(f"Secret {name}")
    authority = Authority.of(files_of(obj))
    if owner is None:
        return authority
    rotated = rotate_ca(authority, name=f"nasblade array {namespace}/{array} CA", now=now, lifetime=cfg.ca_lifetime)
    if rotated is not None:
        authority = rotated
    want = _data(authority.files(now))
    if want != (obj.get("data") or {}):
        await k.patch("Secret", name, {"data": _nulls(obj, want)}, namespace=namespace)
        made.append(f"Secret {name} (new CA)" if rotated is not None else f"Secret {name} (expired CA dropped)")
    return authority


def _nulls(obj: Mapping[str, Any], data: Mapping[str, str]) -> dict[str, str | None]:
    """A merge patch's ``data``: the new keys, and null for keys the Secret should lose."""
    return {**{k: None for k in (obj.get("data") or {}) if k not in data}, **data}


async def _leaf(k: kube.Kube, owner: kopf.Body, authority: Authority, spec: LeafSpec, *, array: str,
                namespace: str) -> str | None:
    """Make, renew or rebundle one certificate Secret; what was done (None: nothing)."""
    cfg = settings.current()
    now = _now()
    obj = await k.get("Secret", spec.name, namespace=namespace)
    if obj is None:
        new = secret(spec.name, array, leaf_files(spec, authority, now=now, lifetime=cfg.cert_lifetime))
        kopf.adopt(new, owner=owner)
        _, created = await k.create(new)
        return f"Secret {spec.name}" if created else None
    have = files_of(obj)
    action = leaf_action(have, authority, now=now, propagation=cfg.cert_propagation)
    if action is None:
        return None
    files = leaf_files(spec, authority, now=now, lifetime=cfg.cert_lifetime,
                       have=have if action == "rebundle" else None)
    await k.patch("Secret", spec.name, {"data": _nulls(obj, _data(files))}, namespace=namespace)
    return f"Secret {spec.name} ({'renewed' if action == 'reissue' else 'new CA bundle'})"


async def ensure_array(k: kube.Kube, owner: kopf.Body, *, array: str, namespace: str, domain: str) -> list[str]:
    """CA, controller and admin certificates, the trust bundle and the access file, each made,
    renewed or rotated as due; what was done."""
    made = await renew_array(k, owner, array=array, namespace=namespace, domain=domain)
    return made + await ensure_access(k, array=array, namespace=namespace)


async def ensure_access(k: kube.Kube, *, array: str, namespace: str) -> list[str]:
    """The access file of the DiskArray as the API server holds it now (``array_access``: read
    afresh, so a portion claimed a moment ago is in it), written if it changed and brought to
    the controller at once (``_nudge_controller``): on each generation, when a ClusterGroup
    claims or releases a portion, and on the status timer. Callers hold the array's claim lock
    (``OperatorState.claim_locks``), so an older view never overwrites a newer one."""
    da = await k.get("DiskArray", array, namespace=namespace)
    if da is None:
        return []
    groups = [g for g in await k.list("ClusterGroup", namespace=namespace)
              if ((g.get("spec") or {}).get("diskArrayRef") or {}).get("name") == array]
    want = access_secret(array, array_access(da, groups))
    changed = await _put(k, da, want, namespace=namespace, what="new access file")
    if changed:
        await _nudge_controller(k, array=array, namespace=namespace, data=want["data"])
    return changed


async def _nudge_controller(k: kube.Kube, *, array: str, namespace: str, data: Mapping[str, str]) -> None:
    """Annotate the controller pod with the new access file's digest: the kubelet syncs an
    updated pod at once, and with it the pod's Secret volumes, so a new file system's LU opens
    for its blades in seconds instead of at the kubelet's next periodic sync (about a minute).
    The controller re-reads the file when it changes. Best effort: no pod yet is fine."""
    digest = hashlib.sha256(json.dumps(dict(data), sort_keys=True).encode()).hexdigest()[:16]
    try:
        await k.patch("Pod", f"{naming.controller_name(array)}-0",
                      {"metadata": {"annotations": {naming.A_NBD_ACCESS: digest}}}, namespace=namespace)
    except kube.KubeError as exc:
        log.warning("controller pod of %s/%s not annotated (the kubelet brings the access file at its "
                    "next sync): %s", namespace, array, exc)


async def renew_array(k: kube.Kube, owner: kopf.Body, *, array: str, namespace: str, domain: str) -> list[str]:
    """CA, controller, admin and CSI certificates and the trust bundle, each made, renewed or
    rotated as due (the DiskArray's status timer, every ``check_interval``); what was done."""
    made: list[str] = []
    authority = await _authority(k, owner, array, namespace, made)
    assert authority is not None
    for spec in array_leaves(array, namespace, domain):
        done = await _leaf(k, owner, authority, spec, array=array, namespace=namespace)
        if done:
            made.append(done)
    trust = secret(naming.tls_trust_secret_name(array), array, {tls.CA_CERT: authority.bundle(_now())})
    return made + await _put(k, owner, trust, namespace=namespace, what="new CA bundle")


async def _put(k: kube.Kube, owner: Mapping[str, Any], want: dict[str, Any], *, namespace: str,
               what: str = "new content") -> list[str]:
    name = want["metadata"]["name"]
    have = await k.get("Secret", name, namespace=namespace)
    if have is None:
        kopf.adopt(want, owner=cast(kopf.Body, owner))  # a DiskArray or ClusterGroup object
        await k.create(want)
        return [f"Secret {name}"]
    if have.get("data") != want["data"]:
        # the kubelet brings the new file into the running pods' volumes
        await k.patch("Secret", name, {"data": _nulls(have, want["data"])}, namespace=namespace)
        return [f"Secret {name} ({what})"]
    return []


async def ensure_blade(k: kube.Kube, owner: kopf.Body, *, array: str, group: str, blade: str,
                       namespace: str) -> str | None:
    """A blade's certificate, made (before its pod) or renewed; what was done. Nothing while
    the array's CA does not exist yet (the pod waits in ContainerCreating for its Secret,
    which the group's next certificate check makes)."""
    authority = await _authority(k, None, array, namespace, [])
    if authority is None:
        return None
    return await _leaf(k, owner, authority, blade_leaf(array, group, blade), array=array, namespace=namespace)


async def ensure_group_token(k: kube.Kube, owner: kopf.Body, *, array: str, control_token: str, group: str,
                             namespace: str) -> list[str]:
    """The Secret with ``group``'s control-API credential for ``array``, made (before its
    blade pods) or replaced when the array's control token changed; what was done."""
    want = secret(naming.group_token_secret_name(group), array,
                  {"token": grants.group_token(control_token, group).encode()})
    return await _put(k, owner, want, namespace=namespace, what="new group token")


async def forget_blade(k: kube.Kube, *, array: str, blade: str, namespace: str) -> None:
    """A blade scaled away: its certificate goes with it."""
    await k.delete("Secret", naming.nbd_blade_secret_name(array, blade), namespace=namespace)


async def trust_bundle(k: kube.Kube, *, array: str, namespace: str) -> bytes | None:
    """The CAs the operator trusts for ``array``'s HTTPS APIs (None while there is no CA)."""
    obj = await k.get("Secret", naming.nbd_ca_secret_name(array), namespace=namespace)
    if obj is None:
        return None
    return Authority.of(files_of(obj)).bundle(_now())


async def admin_dir(k: kube.Kube, *, array: str, namespace: str, cache: dict[tuple[str, str], Path]) -> Path | None:
    """A private directory with the operator's client certificate for ``array``, written from
    its Secret and kept in ``cache`` (``OperatorState.admin_dirs``, emptied when the array
    goes); rewritten when the Secret changed (renewal), ``None`` while it does not exist."""
    key = (namespace, array)
    obj = await k.get("Secret", naming.nbd_admin_secret_name(array), namespace=namespace)
    if obj is None:
        return None
    files = files_of(obj)
    d = cache.get(key)
    if d is None or not (d / tls.CLIENT_CERT).is_file():
        d = Path(tempfile.mkdtemp(prefix=f"nbd-{namespace}-{array}-"))
        os.chmod(d, 0o700)
        cache[key] = d
    if any(not (d / n).is_file() or (d / n).read_bytes() != v for n, v in files.items()):
        pki.write_dir(d, files)
    return d
