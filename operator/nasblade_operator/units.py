"""Kubernetes quantities and Go-style durations, parsed into plain numbers.

The CRDs (crds/*.yaml) validate these strings with CEL (``isQuantity``, ``duration``); the
spec parsers (``diskarray/spec.py``, ``clustergroup/spec.py``) parse them again here, so the
operator never trusts a value it did not check and can say which field is wrong.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18}
_QUANTITY = re.compile(r"^([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)(Ki|Mi|Gi|Ti|Pi|Ei|m|k|M|G|T|P|E)?$")
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ns|us|µs|ms|s|m|h)")
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


class UnitError(ValueError):
    """A quantity or duration string that does not parse."""


def parse_quantity(text: str | int) -> int:
    """Return a Kubernetes quantity (``10Gi``, ``500M``, ``1e3``, ``4096``) in whole units.

    Fractions are rounded up, as Kubernetes does for byte sizes.
    """
    if isinstance(text, int):
        return text
    m = _QUANTITY.match(text.strip())
    if not m:
        raise UnitError(f"{text!r} is not a quantity (examples: 10Gi, 512Mi, 1G)")
    number, suffix = m.group(1), m.group(2) or ""
    try:
        value = Decimal(number)
    except InvalidOperation as exc:
        raise UnitError(f"{text!r} is not a quantity") from exc
    if suffix == "m":
        scaled = value / 1000
    elif suffix in _BINARY:
        scaled = value * _BINARY[suffix]
    else:
        scaled = value * _DECIMAL[suffix]
    whole = int(scaled.to_integral_value(rounding="ROUND_CEILING"))
    return whole


def parse_duration(text: str) -> float:
    """Return a Go duration (``200ms``, ``1h30m``, ``2.5s``) in seconds."""
    s = text.strip()
    if not s:
        raise UnitError("empty duration")
    pos = 0
    total = 0.0
    for m in _DURATION_PART.finditer(s):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        pos = m.end()
    if pos != len(s) or s == "0":
        if s == "0":
            return 0.0
        raise UnitError(f"{text!r} is not a duration (examples: 200ms, 3s, 1h30m)")
    return total
