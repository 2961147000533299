"""The child objects of a DiskArray, built as plain dicts from a parsed ``DiskArraySpec``.

Consumed by ``diskarray/handlers.py``, which adopts them (``kopf.adopt``: owner reference,
namespace) and creates them through ``kube.Kube``. Pure functions: unit tests compare their
output, and the same input always gives the same object (so a restarted operator finds
exactly what it created before).

The controller pod runs ``nasblade controller`` (flags: docs/control-api.md) with one device
file per PVC, mounted at ``/devices/dev-<i>``, and NBD over TLS only: its server certificate
and access file are Secrets (``nasblade_operator.nbdtls``) mounted read-only.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from typing import Any

from nasblade import grants

from nasblade_operator import naming, nbdtls, podspec
from nasblade_operator.diskarray.spec import DiskArraySpec

TOKEN_DIR = "/etc/nasblade/token"
ADMIN_TOKEN_KEY = "admin-token"
#: the read-only scrape credential: GET /v1/metrics of the controller and the blades, nothing else
METRICS_TOKEN_KEY = "metrics-token"
#: the operator's credential for the blades' management APIs (takeover, release, backups); the
#: blades hold only its SHA-256 (``OPERATOR_TOKEN_SHA256_KEY``), so no blade can drive another
OPERATOR_TOKEN_KEY = "operator-token"
OPERATOR_TOKEN_SHA256_KEY = "operator-token-sha256"
#: the CSI controller plugin's credential (``nasblade.grants.csi_token`` of ``token``): the
#: control API for its own LUs alone, and the directory-volume routes of the blades, which hold
#: only its SHA-256 (``CSI_TOKEN_SHA256_KEY``)
CSI_TOKEN_KEY = "csi-token"
CSI_TOKEN_SHA256_KEY = "csi-token-sha256"
#: Annotation on the StatefulSet: digest of the pod template the operator built, so a changed
#: spec (cache size, resources, image) is noticed without comparing server-defaulted fields.
TEMPLATE_HASH = "nasblade.io/template-hash"
DEVICE_DIR = "/devices"


def labels(array: str) -> dict[str, str]:
    """Labels of the controller's objects (the Service selects on them)."""
    return {**naming.common_labels(component="controller", instance=array), naming.L_ARRAY: array}


def selector(array: str) -> dict[str, str]:
    return {naming.L_ARRAY: array, naming.L_COMPONENT: "controller"}


def device_file_size(pvc_size: int) -> int:
    """Size of the device file on a PVC: 97 % of it (file-system slack), in whole MiB."""
    return (pvc_size * 97 // 100) // 2**20 * 2**20


def token_secret(array: str, *, token: str, admin_token: str, metrics_token: str,
                 operator_token: str | None = None) -> dict[str, Any]:
    """The Secret with the control-API tokens, one per role:

    - ``token``: the data path (LUs, reservations at the controller): the blades, and the
      operator's own controller calls;
    - ``admin-token``: what only an administrator does (fault injection, device fail/replace,
      cache hold): the controller pod alone mounts it;
    - ``metrics-token``: scrapers (``GET /v1/metrics`` of the controller and the blades, nothing
      else: the chart's monitors use it);
    - ``operator-token``: the operator's calls to the blades' management APIs; a blade pod gets
      only ``operator-token-sha256`` (the hex SHA-256 it checks a caller's token against), so a
      blade cannot take over, release or back up through another blade;
    - ``csi-token``: the CSI controller plugin's (derived from ``token``, ``nasblade.grants``):
      at the controller its own LUs alone, at the blades the directory-volume routes, which
      check it against ``csi-token-sha256``.

    A blade pod's volume projects ``metrics-token``, ``operator-token-sha256`` and
    ``csi-token-sha256`` (and its group's token). ``operator_token`` defaults to a value made
    here (the operator reads it back)."""
    op = operator_token if operator_token is not None else secrets.token_urlsafe(32)
    csi = grants.csi_token(token)
    values = {"token": token, ADMIN_TOKEN_KEY: admin_token, METRICS_TOKEN_KEY: metrics_token,
              OPERATOR_TOKEN_KEY: op, OPERATOR_TOKEN_SHA256_KEY: hashlib.sha256(op.encode()).hexdigest(),
              CSI_TOKEN_KEY: csi, CSI_TOKEN_SHA256_KEY: hashlib.sha256(csi.encode()).hexdigest()}
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": naming.token_secret_name(array), "labels": labels(array)},
        "type": "Opaque",
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in values.items()},
    }


def controller_service(array: str) -> dict[str, Any]:
    """ClusterIP Service in front of the controller: control API and NBD."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": naming.controller_name(array), "labels": labels(array)},
        "spec": {
            "selector": selector(array),
            "ports": [
                {"name": "api", "port": naming.CONTROL_PORT, "targetPort": "api", "protocol": "TCP"},
                {"name": "nbd", "port": naming.NBD_PORT, "targetPort": "nbd", "protocol": "TCP"},
            ],
        },
    }


def controller_statefulset(
    array: str, spec: DiskArraySpec, *, image: str, defaults: podspec.PodDefaults = podspec.DEFAULTS,
) -> dict[str, Any]:
    """One-replica StatefulSet; one volumeClaimTemplate per device. Placement, pulling and
    hardening: ``podspec.finish``."""
    dev_size = device_file_size(spec.devices.size)
    args = ["controller"]
    for i in range(spec.devices.count):
        args += ["--device", f"{DEVICE_DIR}/dev-{i}/device.img:{dev_size}"]
    # the level a new array is made with; a lost PVC comes back blank and is rebuilt
    args += ["--protection", spec.devices.protection]
    args += [
        "--nbd-listen", f"0.0.0.0:{naming.NBD_PORT}",
        "--api-listen", f"0.0.0.0:{naming.CONTROL_PORT}",
        "--token-file", f"{TOKEN_DIR}/token",
        "--admin-token-file", f"{TOKEN_DIR}/{ADMIN_TOKEN_KEY}",
        "--metrics-token-file", f"{TOKEN_DIR}/{METRICS_TOKEN_KEY}",
        "--cache-size", str(spec.controller.cache_size),
        *nbdtls.controller_args(),
        # fault injection only when the DiskArray asks for it (tests); off, /v1/faults is 403
        *(["--faults"] if spec.controller.fault_injection else []),
    ]
    tls_volumes, tls_mounts = nbdtls.controller_volumes(array)
    claims = []
    for i in range(spec.devices.count):
        pvc_spec: dict[str, Any] = {
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": spec.devices.size_text}},
        }
        if spec.devices.storage_class:
            pvc_spec["storageClassName"] = spec.devices.storage_class
        claims.append({"metadata": {"name": f"dev-{i}", "labels": labels(array)}, "spec": pvc_spec})
    container: dict[str, Any] = {
        "name": "controller",
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "args": args,
        "ports": [
            {"name": "api", "containerPort": naming.CONTROL_PORT},
            {"name": "nbd", "containerPort": naming.NBD_PORT},
        ],
        "readinessProbe": {"httpGet": {"path": "/healthz", "port": "api", "scheme": "HTTPS"}, "periodSeconds": 2},
        "volumeMounts": [{"name": "token", "mountPath": TOKEN_DIR, "readOnly": True}, *tls_mounts]
        + [{"name": f"dev-{i}", "mountPath": f"{DEVICE_DIR}/dev-{i}"} for i in range(spec.devices.count)],
        "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
    }
    if spec.controller.resources:
        container["resources"] = dict(spec.controller.resources)
    elif not defaults.controller.resources:  # (else podspec.finish gives the installation's)
        # the cache lives in the controller's memory: request it, and cap the process at the
        # cache and 1 GiB more (it runs at 80-120 MiB besides the cache: docs/performance.md)
        cache_mib = spec.controller.cache_size // 2**20
        container["resources"] = {
            "requests": {"cpu": "50m", "memory": f"{cache_mib + 64}Mi"},
            "limits": {"cpu": podspec.DEFAULT_LIMITS["controller"]["cpu"], "memory": f"{cache_mib + 1024}Mi"},
        }
    template: dict[str, Any] = {
        "metadata": {"labels": labels(array)},
        "spec": {
            "terminationGracePeriodSeconds": 60,
            "securityContext": {"runAsNonRoot": True, "runAsUser": 10001, "fsGroup": 10001,
                                "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [container],
            "volumes": [{"name": "token", "secret": {"secretName": naming.token_secret_name(array)}},
                        *tls_volumes],
        },
    }
    podspec.finish(template["spec"], placement=spec.controller.placement, defaults=defaults, role="controller")
    digest = hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:16]
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {
            "name": naming.controller_name(array),
            "labels": labels(array),
            "annotations": {TEMPLATE_HASH: digest},
        },
        "spec": {
            "replicas": 1,
            "serviceName": naming.controller_name(array),
            "selector": {"matchLabels": selector(array)},
            "persistentVolumeClaimRetentionPolicy": {
                "whenDeleted": spec.deletion_policy,
                "whenScaled": "Retain",
            },
            "template": template,
            "volumeClaimTemplates": claims,
        },
    }


def pvc_names(array: str, spec: DiskArraySpec) -> list[str]:
    """Names the StatefulSet controller gives the device PVCs (template-statefulset-ordinal)."""
    sts = naming.controller_name(array)
    return [f"dev-{i}-{sts}-0" for i in range(spec.devices.count)]


def desired_lus(spec: DiskArraySpec) -> dict[str, int]:
    """Every LU the array needs, name -> size in bytes, in creation order."""
    lus = {
        naming.LU_PROGRAM: spec.areas.program_size,
        naming.LU_PROCESSOR_INFO: spec.areas.processor_info_size,
        naming.LU_BACKUP: spec.areas.backup_size,
    }
    for fs in spec.file_systems:
        lus[naming.filesystem_lu(fs.name)] = fs.size
    return lus
