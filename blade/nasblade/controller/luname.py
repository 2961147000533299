"""The rule for LU names: one function, used by everything that creates or names an LU.

The controller checks it when an LU is created (``array.Array.create_lu``) and on every
``/v1/lus/{name}`` path of the control API (``api``); the blade management API checks it on
``/v1/lus/{lu}/takeover|release`` (``nasblade.blockproc.api``). The names the product makes
itself follow it by construction: ``program``, ``procinfo``, ``backup`` and ``fs-NAME`` where
``NAME`` is a file-system name (``nasblade.standalone.config``: ``[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?``;
the DiskArray CRD: ``^[a-z0-9]([-a-z0-9]*[a-z0-9])?$``, at most 40 characters), both
narrower than this rule.

An LU name is 1 to 64 characters of ``A-Z a-z 0-9 . _ -`` that starts with a letter or a
digit: so never ``.``, ``..``, ``-``, empty, with a slash, a space or a control character, and
never taken for an option or a hidden file. It also appears in NBD export names
(``LU;holder=H;epoch=N``), which is why ``;`` and ``=`` are out.
"""

from __future__ import annotations

import re

PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
"""The rule as a regular expression (also the OpenAPI document's ``pattern``)."""

RULE = "an LU name is 1-64 characters of [A-Za-z0-9._-] starting with a letter or digit"
"""The rule in words, the message of every refusal."""

_NAME = re.compile(PATTERN)


def check(name: object) -> str:
    """``name`` if it is a valid LU name; ``ValueError`` naming the rule otherwise."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(f"invalid LU name {name!r}: {RULE}")
    return name
