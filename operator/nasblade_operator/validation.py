"""Field-path errors shared by the spec parsers.

``diskarray/spec.py`` and ``clustergroup/spec.py`` collect every problem they find as a
``FieldError`` (``spec.fileSystems[1].size: must be ...``) and raise one ``InvalidSpec``; the
handlers turn it into a ``Ready=False`` condition, a Warning Event and ``kopf.PermanentError``.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from nasblade import units

T = TypeVar("T")


def kubernetes_quantity(value: Any) -> int:
    """A custom resource's quantity in whole units (negative ones too: the caller says why not)."""
    return units.parse_size(value, kubernetes=True)


@dataclasses.dataclass(frozen=True)
class FieldError:
    path: str
    problem: str

    def __str__(self) -> str:
        return f"{self.path}: {self.problem}"


class InvalidSpec(ValueError):
    """One or more fields of a spec are invalid; ``errors`` says which and why."""

    def __init__(self, errors: list[FieldError]) -> None:
        self.errors = errors
        super().__init__("; ".join(str(e) for e in errors))


class Collector:
    """Accumulates field errors while a parser walks a spec."""

    def __init__(self) -> None:
        self.errors: list[FieldError] = []

    def add(self, path: str, problem: str) -> None:
        self.errors.append(FieldError(path, problem))

    def check(self) -> None:
        if self.errors:
            raise InvalidSpec(self.errors)

    def convert(self, path: str, value: Any, fn: Callable[[Any], T], default: T) -> T:
        """``fn(value)``; on ValueError/TypeError record the problem and return ``default``."""
        try:
            return fn(value)
        except (ValueError, TypeError) as exc:
            self.add(path, str(exc))
            return default

    def quantity(self, path: str, value: Any, *, positive: bool = True) -> int:
        n = self.convert(path, value, kubernetes_quantity, 0)
        if positive and n <= 0 and not any(e.path == path for e in self.errors):
            self.add(path, f"must be a positive quantity, not {value!r}")
        return n

    def duration(self, path: str, value: Any) -> float:
        d = self.convert(path, value, units.parse_duration, 0.0)
        if d <= 0 and not any(e.path == path for e in self.errors):
            self.add(path, f"must be a positive duration, not {value!r}")
        return d

    def integer(self, path: str, value: Any, *, low: int, high: int) -> int:
        if not isinstance(value, int) or isinstance(value, bool):
            self.add(path, f"must be an integer, not {value!r}")
            return low
        if not low <= value <= high:
            self.add(path, f"must be between {low} and {high}, not {value}")
        return value

    def choice(self, path: str, value: Any, options: tuple[str, ...]) -> str:
        if value not in options:
            self.add(path, f"must be one of {', '.join(options)}, not {value!r}")
            return options[0]
        return str(value)

    def cidr(self, path: str, value: Any) -> str:
        try:
            return str(ipaddress.ip_network(str(value), strict=False))
        except ValueError:
            self.add(path, f"{value!r} is not a CIDR such as 10.0.0.0/8")
            return ""


def section(spec: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    """``spec[key]`` if it is a mapping, else an empty mapping (defaults apply)."""
    value = spec.get(key)
    return value if isinstance(value, Mapping) else {}
