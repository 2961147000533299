"""Topology of a DiskArray's CSI volumes: the nodes its blades can be reached from.

An array may be reachable only from some nodes (its network, a zone). Its plugin is then run
with ``--topology``, the segments it is reachable from, each a map of topology keys to values
(``[{"topology.kubernetes.io/zone": "a"}]``, from the DiskArray's ``spec.csi.topology``). The
controller service advertises ``VOLUME_ACCESSIBILITY_CONSTRAINTS``; a CreateVolume answers
with the segments the volume is usable from (a PersistentVolume's node affinity, so pods are
scheduled only where the volume can be mounted), and refuses requirements no segment meets
(``RESOURCE_EXHAUSTED``: the array cannot serve there). The node plugin reports each node's
values of the same keys (``nasblade_csi.node``, ``--topology-keys``).

Pure functions on plain maps, shared by the driver (``nasblade_csi``: the controller service
builds the gRPC messages) and the operator (``spec.csi.topology`` is checked by the same rule).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence

Segment = Mapping[str, str]

#: a label key: an optional DNS-subdomain prefix and a name (Kubernetes' qualified name)
_KEY = re.compile(r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
                  r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
#: a label value (not empty: a segment names where the array is)
_VALUE = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
MAX_SEGMENTS = 64


def check_key(key: object, where: str = "key") -> str:
    """``key`` if it is a label key (an optional DNS-subdomain prefix and a name), else
    ``ValueError`` saying so."""
    if not isinstance(key, str) or not _KEY.match(key) or len(key.partition("/")[0]) > 253:
        raise ValueError(f"{where}: {key!r} is not a label key (e.g. topology.kubernetes.io/zone)")
    return key


def check_segment(segment: object, where: str = "segment") -> dict[str, str]:
    """``segment`` as a map of valid label keys to valid label values, or ``ValueError``
    saying what is wrong."""
    if not isinstance(segment, Mapping) or not segment:
        raise ValueError(f"{where} must be a non-empty map of topology key to value")
    out: dict[str, str] = {}
    for key, value in segment.items():
        key = check_key(key, where)
        if not isinstance(value, str) or not _VALUE.match(value):
            raise ValueError(f"{where}: the value of {key} ({value!r}) is not a label value")
        out[key] = value
    return out


def parse_segments(raw: str) -> tuple[dict[str, str], ...]:
    """The ``--topology`` argument (a JSON list of segments; empty: no topology)."""
    if not raw.strip():
        return ()
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(data, list) or not data or len(data) > MAX_SEGMENTS:
        raise ValueError(f"must be a JSON list of 1 to {MAX_SEGMENTS} segments")
    segments = tuple(check_segment(s, f"segment {i}") for i, s in enumerate(data))
    if len({tuple(sorted(s.items())) for s in segments}) != len(segments):
        raise ValueError("a segment is listed twice")
    return segments


def compatible(segment: Segment, term: Segment) -> bool:
    """True when a node of topology ``term`` (the keys its plugin reports) lies in ``segment``:
    they share a key, and agree on every key they share. Disjoint keys tell nothing, so they
    do not match (the array's segments should use the keys the node plugin reports)."""
    shared = set(segment) & set(term)
    return bool(shared) and all(segment[k] == term[k] for k in shared)


def accessible(segments: Sequence[Segment], requisite: Sequence[Segment]) -> list[dict[str, str]]:
    """The array's ``segments`` a volume may be used from when the CO requires it to be usable
    from one of ``requisite`` (empty: no requirement, every segment). An empty answer for a
    non-empty requirement means the array cannot serve there."""
    if not requisite:
        return [dict(s) for s in segments]
    return [dict(s) for s in segments if any(compatible(s, t) for t in requisite)]
