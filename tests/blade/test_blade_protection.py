"""The standalone configuration's ``array.protection``: device-count rules and capacity."""

from __future__ import annotations

import pytest
from nasblade.standalone.config import ConfigError, parse


def test_protection_defaults_to_none_and_is_validated() -> None:
    assert parse({}).protection == "none"
    assert parse({"array": {"protection": "mirror"}}).protection == "mirror-2"
    cfg = parse({"array": {"protection": "mirror-3", "devices": {"count": 3}}})
    assert cfg.protection == "mirror-3"
    assert parse({"array": {"protection": "parity", "devices": {"count": 3}}}).protection == "parity-1"
    assert parse({"array": {"protection": "parity-2", "devices": {"count": 4}}}).protection == "parity-2"
    for data, message in [
        ({"array": {"protection": "mirror-3"}},
         "array.protection: mirror-3 needs a multiple of 3 devices (mirror sets of 3); got 2"),
        ({"array": {"protection": "raid5"}}, "array.protection: unknown protection level 'raid5'"),
        ({"array": {"protection": "mirror", "devices": {"count": 3}}}, "needs a multiple of 2 devices"),
        ({"array": {"protection": "mirror-4"}}, "mirror keeps 2 or 3 copies"),
        ({"array": {"protection": "parity-1"}}, "parity-1 needs at least 3 devices"),
        ({"array": {"protection": "parity-2", "devices": {"count": 3}}}, "parity-2 needs at least 4 devices"),
        ({"array": {"protection": "parity-3", "devices": {"count": 5}}}, "parity keeps 1 or 2 parity shares"),
    ]:
        with pytest.raises(ConfigError) as err:
            parse(data)
        assert message in str(err.value)


def test_capacity_reflects_the_copies() -> None:
    none = parse({"array": {"devices": {"count": 4, "size": "1G"}}})
    mirror = parse({"array": {"devices": {"count": 4, "size": "1G"}, "protection": "mirror"}})
    assert mirror.usable * 2 == none.usable
    # a file system that fits without protection does not fit with two copies
    fs = {"fileSystems": [{"size": "3G"}]}
    parse({"array": {"devices": {"count": 4, "size": "1G"}}, **fs})
    with pytest.raises(ConfigError, match="larger than the array's free space"):
        parse({"array": {"devices": {"count": 4, "size": "1G"}, "protection": "mirror"}, **fs})


def test_capacity_with_parity_counts_the_data_devices() -> None:
    none = parse({"array": {"devices": {"count": 4, "size": "1G"}}})
    p1 = parse({"array": {"devices": {"count": 4, "size": "1G"}, "protection": "parity-1"}})
    p2 = parse({"array": {"devices": {"count": 4, "size": "1G"}, "protection": "parity-2"}})
    assert p1.usable * 4 == none.usable * 3 and p2.usable * 2 == none.usable
