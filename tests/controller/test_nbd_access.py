"""Unit tests of the NBD access rule (``nasblade.nbd.access``) and certificate identities."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from nasblade import pki, tls
from nasblade.nbd import access

POLICY = access.AccessPolicy.of_groups({"g1": ["fs-a"], "g2": ["fs-b"]})


@pytest.mark.parametrize("who, lu, allowed", [
    ("admin", "fs-b", True), ("admin", "anything", True),
    ("group:g1", "fs-a", True), ("group:g1", "fs-b", False),
    ("group:g1", "procinfo", True), ("group:g1", "program", True), ("group:g1", "backup", True),
    ("group:g2", "fs-a", False), ("group:g3", "fs-a", False), ("group:g3", "procinfo", True),
    ("group:", "procinfo", False), ("g1", "fs-a", False), ("Admin", "fs-a", False),
])
def test_the_rule(who: str, lu: str, allowed: bool) -> None:
    assert POLICY.permits(tls.Identity(who), lu) is allowed


def test_groups_read_the_program_lu_only() -> None:
    g1, admin = tls.Identity("group:g1"), tls.Identity("admin")
    assert POLICY.read_only_for(g1, "program") and POLICY.permits(g1, "program")
    assert not POLICY.read_only_for(admin, "program")
    assert not POLICY.read_only_for(g1, "procinfo") and not POLICY.read_only_for(g1, "fs-a")
    # an access file written before the rule had the key: the default applies
    old = POLICY.to_json()
    del old["readOnly"]
    assert access.AccessPolicy.from_json(old).read_only_for(g1, "program")
    assert not access.AccessPolicy.from_json({**old, "readOnly": []}).read_only_for(g1, "program")


def test_windows_narrow_the_shared_lus_to_a_groups_portion() -> None:
    policy = access.AccessPolicy.of_groups({"g1": ["fs-a"]}, portions={"g1": (0, 4096), "g2": (4096, 4096)})
    g1, g2, admin = tls.Identity("group:g1"), tls.Identity("group:g2"), tls.Identity("admin")
    assert policy.window(g1, "procinfo") == ((0, 4096),) and policy.window(g2, "backup") == ((4096, 4096),)
    assert policy.window(g1, "fs-a") is None and policy.window(admin, "procinfo") is None
    assert policy.window(tls.Identity("group:g3"), "procinfo") is None  # no portion recorded: all of it
    assert access.inside(policy.window(g1, "procinfo"), 0, 4096)
    assert not access.inside(policy.window(g1, "procinfo"), 4096, 1)
    assert not access.inside(policy.window(g1, "procinfo"), 4000, 200)
    assert access.inside(None, 1 << 40, 1)
    assert access.AccessPolicy.from_json(policy.to_json()) == policy
    for bad in ({"windows": {"g1": {"procinfo": [[0]]}}}, {"windows": {"g1": {"procinfo": [[-1, 2]]}}},
                {"windows": {"g1": ["procinfo"]}}, {"windows": []}):
        with pytest.raises(ValueError):
            access.AccessPolicy.from_json(bad)


def test_a_group_that_backs_up_another_reaches_that_groups_portion_too() -> None:
    """Cross-group backup (the invention's claims 8, 9): g1's blades copy g2's portion into
    g2's backup area, so g1's window holds both portions; g2 still reaches only its own."""
    policy = access.AccessPolicy.of_groups({}, portions={"g1": (0, 4096), "g2": (4096, 4096), "g3": (8192, 4096)},
                                           cross_group={"g1": ["g2", "nope", "g1"]})
    g1, g2 = tls.Identity("group:g1"), tls.Identity("group:g2")
    assert policy.window(g1, "procinfo") == ((0, 4096), (4096, 4096)) == policy.window(g1, "backup")
    assert policy.window(g2, "backup") == ((4096, 4096),)
    assert access.inside(policy.window(g1, "backup"), 4096, 4096)
    assert not access.inside(policy.window(g1, "backup"), 8192, 1)
    assert not access.inside(policy.window(g1, "procinfo"), 2048, 4096)  # one request, one window


def test_no_identity_opens_nothing() -> None:
    assert not POLICY.permits(None, "procinfo")


def test_round_trip_and_bad_files(tmp_path: Path) -> None:
    assert access.AccessPolicy.from_json(POLICY.to_json()) == POLICY
    for bad in ([], {"groups": {"g1": "fs-a"}}, {"groups": [], "shared": []}, {"shared": [1]},
                {"readOnly": "program"}):
        with pytest.raises(ValueError):
            access.AccessPolicy.from_json(bad)


def test_access_file_follows_changes_and_keeps_the_last_good_policy(tmp_path: Path) -> None:
    path = tmp_path / "access.json"
    f = access.AccessFile(path)
    g1 = tls.Identity("group:g1")
    assert not f.policy().permits(g1, "fs-a")  # missing file: shared LUs only
    assert f.policy().permits(g1, "procinfo")
    access.write(path, POLICY)
    assert f.policy().permits(g1, "fs-a")
    path.write_text("{not json")
    os.utime(path, ns=(1, 1))
    assert f.policy().permits(g1, "fs-a")  # a broken file keeps the last good policy
    access.write(path, access.AccessPolicy.of_groups({"g1": []}))
    assert not f.policy().permits(g1, "fs-a")


def test_certificates_carry_the_identity(tmp_path: Path) -> None:
    ca = pki.make_ca("ca")
    leaf = pki.issue(ca, tls.group_identity("g1"))
    assert pki.common_name(leaf.cert) == "group:g1"
    assert tls.Identity(pki.common_name(leaf.cert)).group == "g1"
    d = pki.write_dir(tmp_path / "c", pki.client_files(ca, leaf))
    assert (d / tls.CLIENT_KEY).stat().st_mode & 0o077 == 0
    tls.client_context(d)  # loads: the key matches the certificate
    with pytest.raises(FileNotFoundError):
        tls.server_context(d)


@pytest.mark.parametrize("lu, allowed", [
    ("pv-0123456789abcdef01234567", True), ("fs-pv-0123456789abcdef01234567", True),
    ("sn-0123456789abcdef01234567", True), ("csi-catalog", True),
    ("fs-home", False), ("fs-a", False), ("procinfo", False), ("program", False), ("backup", False),
])
def test_the_csi_plugin_opens_the_csi_drivers_lus_only(lu: str, allowed: bool) -> None:
    csi = tls.Identity(tls.CSI)
    assert csi.csi and not csi.admin and csi.group is None
    # whatever the access file says: not even a group's file system that is a CSI volume's
    # makes a difference, nor one listed for a group named like the identity
    policy = access.AccessPolicy.of_groups({"g1": ["fs-home", "fs-pv-0123456789abcdef01234567"], "csi": ["fs-home"]},
                                           portions={"g1": (0, 4096)})
    for p in (POLICY, policy, access.AccessPolicy()):
        assert p.permits(csi, lu) is allowed
        assert p.read_only_for(csi, lu) is False
        assert p.window(csi, lu) is None


def test_csi_is_neither_admin_nor_a_group() -> None:
    assert tls.CSI == "csi"
    assert not tls.Identity("admin").csi and not tls.Identity("group:csi").csi
    assert tls.Identity("group:csi").group == "csi"
    assert not tls.Identity("group:csi").csi and not POLICY.permits(tls.Identity("group:csi"), "pv-x")
    assert not POLICY.permits(tls.Identity("CSI"), "pv-x")


def test_the_csi_certificate_carries_its_identity(tmp_path: Path) -> None:
    ca = pki.make_ca("ca")
    leaf = pki.issue(ca, tls.CSI)
    assert tls.Identity(pki.common_name(leaf.cert)).csi
