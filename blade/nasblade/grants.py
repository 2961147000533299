"""Scoped credentials on the controller's control API: what a blade and the CSI driver hold
instead of the array's control token.

The control token (``--token-file`` of ``nasblade controller``) reaches every LU through the
control API: reservations, compare-and-write, copy jobs, creating and deleting LUs. Nothing
but the operator and the terminal needs all of that, so two narrower credentials are derived
from it:

- a *group token*, ``group.<NAME>.<HMAC-SHA256(control token, NAME)>`` (``group_token``),
  what a blade holds: it reaches only the LUs its cluster group may open over NBD
  (``nasblade.nbd.access``);
- the *csi token*, ``csi.<HMAC-SHA256(control token, "csi" context)>`` (``csi_token``), what
  the CSI driver's controller plugin holds: it creates, grows, copies and deletes only the
  LUs of the CSI driver's volumes, snapshots and catalog (``nasblade.lunames.is_csi_lu``).

Both are MACs under different contexts with different prefixes (``group.`` and ``csi.``), so
neither is ever taken for the other. The controller recognises them without a list (it
derives the MAC from its own token), so a new group needs no restart; whoever holds the
control token (the operator, ``nasblade up``) mints them. Rotating the control token
invalidates every derived token with it.

What each may do is decided by ``nasblade.controller.api`` (its ``GROUP_ROUTES`` and
``CSI_ROUTES``, the access file and the CSI LU names); this module only mints and recognises
them.
"""

from __future__ import annotations

import hashlib
import hmac

PREFIX = "group."
_CONTEXT = b"nasblade control-api group token\0"
CSI_PREFIX = "csi."
_CSI_CONTEXT = b"nasblade control-api csi token\0"


def group_token(control_token: str, group: str) -> str:
    """The credential of cluster group ``group``'s blades for an array whose control token
    is ``control_token``."""
    if not group or not control_token:
        raise ValueError("a group token needs a group name and the array's control token")
    mac = hmac.new(control_token.encode(), _CONTEXT + group.encode(), hashlib.sha256).hexdigest()
    return f"{PREFIX}{group}.{mac}"


def group_of(given: str, control_token: str | None) -> str | None:
    """The group ``given`` is a valid group token of (compared in constant time), or ``None``."""
    if not control_token or not given.startswith(PREFIX):
        return None
    group, dot, _mac = given[len(PREFIX):].rpartition(".")
    if not dot or not group:
        return None
    return group if hmac.compare_digest(given.encode(), group_token(control_token, group).encode()) else None


def csi_token(control_token: str) -> str:
    """The credential of the CSI driver's controller plugin for an array whose control token
    is ``control_token``."""
    if not control_token:
        raise ValueError("a csi token needs the array's control token")
    mac = hmac.new(control_token.encode(), _CSI_CONTEXT, hashlib.sha256).hexdigest()
    return f"{CSI_PREFIX}{mac}"


def is_csi_token(token: str) -> bool:
    """Whether ``token`` has the form of a csi token (its prefix; says nothing of its MAC):
    what a holder of either credential checks to tell which one it was given."""
    return token.startswith(CSI_PREFIX)


def is_csi(given: str, control_token: str | None) -> bool:
    """Whether ``given`` is the csi token of ``control_token`` (compared in constant time)."""
    if not control_token or not given or not given.startswith(CSI_PREFIX):
        return False
    return hmac.compare_digest(given.encode(), csi_token(control_token).encode())
