"""A short kill soak in ``make test`` (``soak.run``; ``bench/soak/run`` runs a thousand cycles).

Twenty cycles of a random SIGKILL -- the owner's file processor, its block processor, the
whole blade or the controller -- under a FILE_SYNC writer and an UNSTABLE + COMMIT writer:
every cycle recovered within the failure timeout + 2 s, no acknowledged byte lost, no writer
error, the file system clean for ``nasblade fsck`` at the end.
"""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
import soak
from conftest import ArrayUp, base_config, dump_logs

pytestmark = [pytest.mark.component, pytest.mark.slow]


def test_short_kill_soak(make_array: Any) -> None:
    cfg = base_config()
    group = {**cfg["clusterGroups"][0], "failureTimeout": "1s"}
    arr: ArrayUp = make_array(clusterGroups=[group], array={"devices": {"count": 2, "size": "512M"}, "cacheSize": "32M"},
                              fileSystems=[{**cfg["fileSystems"][0], "size": "256M"}])
    seed = random.randrange(1 << 30)
    print(f"seed {seed}")
    try:
        result = soak.run(arr, cycles=20, seed=seed, failure_timeout=1.0, log=print)
    except (AssertionError, TimeoutError) as exc:  # a cycle that never recovered: say what the blades saw
        pytest.fail(f"seed {seed}: {exc!r}\n{dump_logs(arr)}")
    print(json.dumps(result, indent=1))
    report = f"seed {seed}: {json.dumps(result, indent=1)}\n{dump_logs(arr)}"
    assert not result["writerErrors"], report
    assert not result["lost"], report
    assert not result["late"], report
    assert result["fsck"]["exitCode"] == 0, report
    assert sum(r["count"] for r in result["recovery"].values()) == 20
