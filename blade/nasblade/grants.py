"""Group credentials on the controller's control API: what a blade holds instead of the
array's control token.

The control token (``--token-file`` of ``nasblade controller``) reaches every LU through the
control API: reservations, compare-and-write, copy jobs. A blade needs that only for the LUs
its cluster group may open over NBD (``nasblade.nbd.access``), so it is given a *group
token*: ``group.<NAME>.<HMAC-SHA256(control token, NAME)>``. The controller recognises one
without a list of them (it derives the MAC from its own token), so a new group needs no
restart; whoever holds the control token (the operator, ``nasblade up``) mints them.
Rotating the control token invalidates every group token with it.

What a group token may do is decided by ``nasblade.controller.api`` (its ``GROUP_ROUTES``
and the access file); this module only mints and recognises them.
"""

from __future__ import annotations

import hashlib
import hmac

PREFIX = "group."
_CONTEXT = b"nasblade control-api group token\0"


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
