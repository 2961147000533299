"""Sizes and durations, parsed in one place for the operator, the terminal, the daemons and the
standalone configuration.

Sizes come in two dialects; both accept ``1Gi``, ``1GiB``, ``1G`` and plain byte counts:

- **Kubernetes quantities** (``parse_size(text, kubernetes=True)``): the DiskArray and
  ClusterGroup fields, read by the operator and by the terminal's Kubernetes source. ``Ki Mi Gi
  Ti Pi Ei`` are binary, ``k M G T P E`` decimal (``500M`` is 500,000,000 bytes, as
  ``kubectl`` reads it), ``m`` is milli, exponents are allowed, fractions round up.
- **nasblade sizes** (the default): the standalone configuration, the daemons' flags and the
  bench scripts. ``Ki Mi Gi ...`` are binary and so are the bare letters ``K M G T P`` (any case,
  with an optional ``B`` or ``iB``), as qemu-img and dd read them: ``512M`` is 512 MiB.

Durations are Go durations (``200ms``, ``2.5s``, ``1h30m``, ``us``, ``ns``) or a bare number of
seconds; numbers pass through. Every parse error is a ``UnitError`` (a ``ValueError``) that
quotes the text and gives examples; callers add which field it was.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18}
_QUANTITY = re.compile(r"^([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)(Ki|Mi|Gi|Ti|Pi|Ei|m|k|M|G|T|P|E)?$")
_NASBLADE = re.compile(r"^(\d+)\s*([KMGTP]?)(?:I|IB|B)?$")
_LETTERS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40, "P": 2**50}
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ns|us|µs|ms|s|m|h)")
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_SECONDS = re.compile(r"^[0-9]+(?:\.[0-9]+)?$")


class UnitError(ValueError):
    """A size or duration that does not parse."""


def parse_size(value: str | int, *, kubernetes: bool = False) -> int:
    """Bytes from a size (see the module docstring for the two dialects)."""
    if isinstance(value, bool):
        raise UnitError(f"{value!r} is not a size")
    if isinstance(value, int):
        if value < 0:
            raise UnitError(f"{value} is negative")
        return value
    text = str(value).strip()
    if kubernetes:
        return _quantity(text)
    m = _NASBLADE.match(text.upper())
    if not m:
        raise UnitError(f"{value!r} is not a size (examples: 512M, 1Gi, 1GiB, 1073741824)")
    return int(m.group(1)) * _LETTERS[m.group(2)]


def _quantity(text: str) -> int:
    m = _QUANTITY.match(text)
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
    return int(scaled.to_integral_value(rounding="ROUND_CEILING"))


def format_size(n: int) -> str:
    """``3221225472`` → ``3G`` (binary letters, the nasblade dialect; one decimal if not whole)."""
    for unit in ("P", "T", "G", "M", "K"):
        if n >= _LETTERS[unit] and n % _LETTERS[unit] == 0:
            return f"{n // _LETTERS[unit]}{unit}"
    for unit in ("P", "T", "G", "M", "K"):
        if n >= _LETTERS[unit]:
            return f"{n / _LETTERS[unit]:.1f}{unit}"
    return str(n)


def parse_duration(value: str | float) -> float:
    """Seconds from a Go duration (``200ms``, ``1h30m``) or a bare number of seconds."""
    if isinstance(value, bool):
        raise UnitError(f"{value!r} is not a duration")
    if isinstance(value, int | float):
        if value < 0:
            raise UnitError(f"{value} is negative")
        return float(value)
    s = str(value).strip()
    if _SECONDS.match(s):
        return float(s)
    pos = 0
    total = 0.0
    for m in _DURATION_PART.finditer(s):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        pos = m.end()
    if not s or pos != len(s):
        raise UnitError(f"{value!r} is not a duration (examples: 200ms, 3s, 10m, 1h30m)")
    return total
