"""A group's file systems, changed while its blades run.

When the DiskArray gains, loses or changes a file system of this group (an administrator's
edit of ``spec.fileSystems``, a volume of the CSI driver), the blades learn it without a
restart. Each pass of the group's daemon (``daemon.py``), after the heartbeat probe:

1. every blade pod whose cluster-config annotation (``builders.CLUSTER_CONFIG_ANNOTATION``)
   lists other file systems gets the new list, the rest of the annotation as the pod was made
   (members, timing: those change only with a new pod). The kubelet brings the annotation
   into ``/etc/nasblade/cluster.json``, which is what a restarted container reads, and its
   ``serve`` sections win over the pod's ``--fs-spec`` flags (``nasblade.cluster.member``);
2. every Ready blade whose annotation was just changed, or which reports other
   ``knownFileSystems`` than the group has (a container restarted before the kubelet brought
   the new file), is sent the list (``bladeapi.configure_file_systems``:
   ``PUT /v1/cluster/config``). A new file system is taken by its home blade at its next tick
   (nobody owns it yet); one that left the group is released by the blade serving it, with its
   reservation, so its LU is free. A blade that cannot be reached is sent it again after the
   next probe.

Nothing here stops the pass it runs in (failover, moves and status come after it): a patch
or a blade that fails is logged and tried again at the next pass or probe.

Only formatted file systems are handed out (``diskarray/formatting.py``): until the DiskArray
records a new file system's mkfs, no blade knows it. Each change is a ``FileSystemsChanged``
Event on the ClusterGroup.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Collection, Mapping
from typing import Any

import kopf

from nasblade_operator import bladeapi, endpoints, events, state
from nasblade_operator.clustergroup import builders
from nasblade_operator.clustergroup import spec as cg_spec
from nasblade_operator.clustergroup.runtime import Runtime
from nasblade_operator.diskarray import spec as da_spec
from nasblade_operator.kube import KubeError

log = logging.getLogger(__name__)


def annotation_patch(current: Mapping[str, Any], file_systems: list[dict[str, Any]]) -> dict[str, Any]:
    """The pod patch that puts ``file_systems`` into its cluster-config annotation ``current``."""
    text = json.dumps({**current, "fileSystems": file_systems}, sort_keys=True)
    return {"metadata": {"annotations": {builders.CLUSTER_CONFIG_ANNOTATION: text}}}


def to_tell(summaries: Mapping[int, Mapping[str, Any]], *, annotated: Collection[str], known: Mapping[str, frozenset[str]],
            names: frozenset[str]) -> list[Mapping[str, Any]]:
    """The Ready blades to send the file-system list: their annotation lists other file
    systems (it is being changed), or what they report knowing is not the group's list."""
    return [s for s in summaries.values()
            if s["ready"] and not s.get("deleting")
            and (s["name"] in annotated or (s["name"] in known and known[s["name"]] != names))]


async def sync(
    st: state.OperatorState, body: kopf.Body, *, name: str, namespace: str, spec: cg_spec.ClusterGroupSpec,
    da: da_spec.DiskArraySpec, file_systems: tuple[da_spec.FileSystem, ...], slots: Mapping[str, int],
    unformatted: Collection[str], summaries: Mapping[int, Mapping[str, Any]], rt: Runtime,
) -> None:
    """Bring every blade of the group to the group's formatted file systems (module docstring)."""
    portion = body.get("status", {}).get("portion")
    if portion is None or not summaries:
        return
    config = builders.cluster_config(group=name, spec=spec, portion=int(portion), portion_size=da.areas.portion_size,
                                     file_systems=file_systems, slots=slots, unformatted=unformatted)
    wanted: list[dict[str, Any]] = config["fileSystems"]
    names = frozenset(f["name"] for f in wanted)
    annotated: list[str] = []  # pods whose annotation listed other file systems
    patched = 0
    for s in summaries.values():
        current = s.get("clusterConfig")
        if s.get("deleting") or not isinstance(current, Mapping) or current.get("fileSystems") == wanted:
            continue
        annotated.append(str(s["name"]))
        try:
            await st.kube.patch("Pod", str(s["name"]), annotation_patch(current, wanted), namespace=namespace)
            patched += 1
        except KubeError as exc:  # e.g. RBAC without pods/patch: the running blades are still told
            log.warning("group %s: the cluster-config annotation of %s was not updated: %s", name, s["name"], exc)
    targets = to_tell(summaries, annotated=annotated, known=rt.known, names=names)
    told: list[str] = []
    if targets:
        await st.trust(namespace, spec.disk_array)
        token = await st.operator_token(namespace, spec.disk_array)
    for s in targets:
        blade = str(s["name"])
        base = endpoints.blade_api(namespace, blade, s.get("ip"))
        if not base:
            continue
        try:
            answer = await bladeapi.configure_file_systems(st.http, str(base), wanted, blade=blade, token=token)
        except bladeapi.BladeUnavailable as exc:
            log.warning("group %s: %s did not take the file systems %s: %s", name, blade, sorted(names), exc)
            continue
        rt.known[blade] = names
        if answer.get("added") or answer.get("removed") or answer.get("changed"):
            told.append(f"{blade} (added {answer.get('added') or []}, removed {answer.get('removed') or []})")
    if patched or told:
        events.normal(body, "FileSystemsChanged",
                      f"file systems {sorted(names)}: " + ("; ".join(told) if told else "pod configuration updated"))
