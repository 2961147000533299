"""Unit tests of the scoped control-API credentials (``nasblade.grants``) and of the names of
the CSI driver's LUs (``nasblade.lunames.is_csi_lu``)."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from nasblade import grants, lunames

TOKEN = "the-array's-control-token"


def test_the_csi_token_is_an_hmac_of_the_control_token_under_its_own_context() -> None:
    token = grants.csi_token(TOKEN)
    mac = hmac.new(TOKEN.encode(), b"nasblade control-api csi token\0", hashlib.sha256).hexdigest()
    assert token == f"csi.{mac}"
    assert grants.is_csi(token, TOKEN)
    assert grants.is_csi_token(token)
    # another array's csi token is not this array's
    assert grants.csi_token("another array's token") != token
    assert not grants.is_csi(grants.csi_token("another array's token"), TOKEN)


def test_the_csi_token_needs_a_control_token() -> None:
    with pytest.raises(ValueError):
        grants.csi_token("")


@pytest.mark.parametrize("given", [
    "", "csi.", "csi", TOKEN, "csi." + "0" * 64,
    "group.g1.x", "CSI." + grants.csi_token(TOKEN)[4:],
])
def test_what_is_not_a_csi_token(given: str) -> None:
    assert not grants.is_csi(given, TOKEN)


def test_a_wrong_mac_is_refused() -> None:
    good = grants.csi_token(TOKEN)
    flipped = good[:-1] + ("0" if good[-1] != "0" else "1")
    assert not grants.is_csi(flipped, TOKEN)
    assert not grants.is_csi(good[:-1], TOKEN)
    assert not grants.is_csi(good + "0", TOKEN)


def test_without_a_control_token_nothing_is_a_csi_token() -> None:
    good = grants.csi_token(TOKEN)
    assert not grants.is_csi(good, None)
    assert not grants.is_csi(good, "")


def test_group_and_csi_tokens_are_never_taken_for_each_other() -> None:
    group = grants.group_token(TOKEN, "g1")
    csi = grants.csi_token(TOKEN)
    assert not grants.is_csi(group, TOKEN) and not grants.is_csi_token(group)
    assert grants.group_of(csi, TOKEN) is None
    # not even a group named "csi", nor the MAC of one under the other's prefix
    assert not grants.is_csi(grants.group_token(TOKEN, "csi"), TOKEN)
    assert grants.group_of("group.csi." + csi[len("csi."):], TOKEN) is None
    assert not grants.is_csi("csi." + group.rsplit(".", 1)[1], TOKEN)
    # and the control token is neither
    assert not grants.is_csi(TOKEN, TOKEN) and grants.group_of(TOKEN, TOKEN) is None


@pytest.mark.parametrize("name, csi", [
    ("csi-catalog", True), ("pv-0123456789abcdef01234567", True), ("fs-pv-0123456789abcdef01234567", True),
    ("sn-0123456789abcdef01234567", True), ("pv-x", True),
    ("fs-home", False), ("procinfo", False), ("program", False), ("backup", False),
    ("csi-catalog2", False), ("fs-sn-x", False), ("xpv-1", False), ("fs-csi-catalog", False), ("pv", False),
])
def test_the_lus_of_the_csi_driver(name: str, csi: bool) -> None:
    assert lunames.is_csi_lu(name) is csi


def test_csi_lu_names_follow_the_lu_name_rule() -> None:
    from nasblade.controller import luname

    for name in (lunames.CSI_CATALOG, lunames.CSI_VOLUME_PREFIX + "a" * 24,
                 lunames.fs_lu(lunames.CSI_VOLUME_PREFIX + "a" * 24), lunames.CSI_SNAPSHOT_PREFIX + "a" * 24):
        assert luname.check(name) == name
