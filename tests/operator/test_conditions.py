"""Condition bookkeeping per the API conventions (no API server)."""

from __future__ import annotations

import datetime

from nasblade_operator import conditions

T0 = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
T1 = T0 + datetime.timedelta(minutes=5)


def test_transition_time_moves_only_on_status_change() -> None:
    c = conditions.set_condition([], type="Ready", status="False", reason="Waiting", message="m", generation=1, now=T0)
    assert c[0]["lastTransitionTime"] == "2026-01-01T00:00:00Z"
    c = conditions.set_condition(c, type="Ready", status="False", reason="Other", message="n", generation=2, now=T1)
    assert c[0]["lastTransitionTime"] == "2026-01-01T00:00:00Z" and c[0]["reason"] == "Other"
    assert c[0]["observedGeneration"] == 2
    c = conditions.set_condition(c, type="Ready", status="True", reason="Ready", message="", generation=2, now=T1)
    assert c[0]["lastTransitionTime"] == "2026-01-01T00:05:00Z"
    assert conditions.is_true(c, "Ready") and not conditions.is_true(c, "Degraded")


def test_other_conditions_are_kept_in_order() -> None:
    c = conditions.set_condition([], type="Ready", status="True", reason="r", message="", generation=1, now=T0)
    c = conditions.set_condition(c, type="Degraded", status="False", reason="r", message="", generation=1, now=T0)
    c = conditions.set_condition(c, type="Ready", status="False", reason="r", message="", generation=1, now=T1)
    assert [x["type"] for x in c] == ["Ready", "Degraded"]
    assert conditions.parse_time(c[0]["lastTransitionTime"]) == T1
