"""The name rule of directory volumes, shared by every layer that handles one.

A directory volume is a top-level directory of a file system with a tree quota (the quota
itself is ``FileSystem.set_quota``; the file processor makes, resizes and deletes the volumes,
``nasblade.fileproc.server``; the blade API forwards to it, ``nasblade.blockproc.api``). Its
name is one path component that is also safe, unquoted, in a URL path and a MOUNT path: letters,
digits, ``.``, ``_`` and ``-``, not ``.`` or ``..``, at most 255 bytes. Every layer checks it
before acting, so a bad name is a 400 at the first API it reaches.

Snapshots of directory volumes are copies (``nasblade.fs.treecopy``) kept in one top-level
directory of the file system, ``SNAPSHOTS`` (root's, mode 0700: a squashed client mounting the
whole file system cannot enter it); its name is not a volume name. Snapshot names follow the
same rule.
"""

from __future__ import annotations

NAME_MAX = 255
RULE = "one name of ASCII letters, digits, '.', '_' and '-' (not '.', '..' or '.snapshots'), at most 255 bytes"
SNAPSHOTS = ".snapshots"
"""The top-level directory that holds the snapshots of a file system's directory volumes."""


def check_name(name: str) -> str:
    """``name`` if it is a valid directory-volume name; ``ValueError`` naming the rule otherwise."""
    if (not name or name in (".", "..", SNAPSHOTS) or len(name) > NAME_MAX
            or not all(c.isascii() and (c.isalnum() or c in "._-") for c in name)):
        raise ValueError(f"name {name!r}: expected {RULE}")
    return name
