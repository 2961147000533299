"""Where the operator reaches an array's controller and a group's blades.

Default: cluster DNS of the controller Service (``https://<array>-controller.<ns>.svc:8080``)
and the blade pod's IP (``https://<podIP>:8090``, its certificate checked by the pod's name:
``bladeapi``; both APIs are HTTPS with the array's certificates, ``nbdtls``). ``NASBLADE_ENDPOINT_OVERRIDES`` (see
``settings``) replaces them per object (``{name}`` in a blade URL becomes the pod name), which is how tier-1 tests point the operator at real
processes started on localhost while no kubelet runs the pods. Used by
the DiskArray handlers and the ClusterGroup daemon, actor and backups to build the URLs they
hand ``arrayapi`` and ``bladeapi``; pure functions of the settings.
"""

from __future__ import annotations

from nasblade_operator import naming, settings


def _override(namespace: str, name: str, key: str) -> str | None:
    o = settings.current().endpoint_overrides
    for k in (f"{namespace}/{name}", "*"):
        value = o.get(k, {}).get(key)
        if value:
            return str(value)
    return None


def controller_api(namespace: str, array: str) -> str:
    """Base URL (without ``/v1``) of an array's control API."""
    return _override(namespace, array, "api") or (
        f"https://{naming.controller_name(array)}.{namespace}.{settings.current().cluster_domain}:{naming.CONTROL_PORT}"
    )


def controller_nbd(namespace: str, array: str) -> str:
    """``host:port`` of an array's NBD server."""
    return _override(namespace, array, "nbd") or (
        f"{naming.controller_name(array)}.{namespace}.{settings.current().cluster_domain}:{naming.NBD_PORT}"
    )


def controller_nbd_tls(namespace: str, array: str) -> bool:
    """Whether the operator reaches an array's NBD server over TLS: always, unless an override
    says ``"nbdTLS": "off"`` (tier-1 tests' plaintext controller process)."""
    o = settings.current().endpoint_overrides
    return all(o.get(k, {}).get("nbdTLS") != "off" for k in (f"{namespace}/{array}", "*"))


def blade_api(namespace: str, pod: str, pod_ip: str | None) -> str | None:
    """Base URL of a blade's management API; None while the pod has no IP."""
    override = _override(namespace, pod, "blade")
    if override:
        return override.replace("{name}", pod)
    return f"https://{pod_ip}:{naming.BLADE_API_PORT}" if pod_ip else None
