"""Unit tests of diskarray/areas.py: the DiskArray mirror of its groups' active processor-info areas."""

from __future__ import annotations

from nasblade_operator.diskarray import areas


def test_each_portion_shows_its_groups_area() -> None:
    portions = [{"index": 0, "group": "g1"}, {"index": 1, "group": "g2", "activeArea": "portion"}]
    got = areas.mirrored(portions, {"g1": "backup", "g2": "portion"})
    assert got == [{"index": 0, "group": "g1", "activeArea": "backup"}, {"index": 1, "group": "g2", "activeArea": "portion"}]
    assert areas.summary(got) == "backup"
    back = areas.mirrored(got, {"g1": "portion"})  # g2 not seen: keeps what it had
    assert back == [{"index": 0, "group": "g1", "activeArea": "portion"}, {"index": 1, "group": "g2", "activeArea": "portion"}]
    assert areas.summary(back) == "portion"
    assert portions[0] == {"index": 0, "group": "g1"}  # the input is not changed


def test_unknown_area_names_read_as_portion() -> None:
    assert areas.mirrored([{"index": 0, "group": "g1"}], {"g1": "primary"}) == [{"index": 0, "group": "g1", "activeArea": "portion"}]
    assert areas.summary([]) == "portion"
