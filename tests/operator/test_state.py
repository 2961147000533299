"""The operator state (``state.py``): per-key locks that drop their keys, and per-object
tables emptied when the object is deleted. No API server: ``Kube`` is never called here."""

from __future__ import annotations

import asyncio
from typing import Any

from nasblade_operator import state


def fresh() -> state.OperatorState:
    return state.OperatorState(kube=None)  # type: ignore[arg-type]  # not called in these tests


def test_keyed_locks_serialise_per_key_and_keep_only_keys_in_use() -> None:
    locks = state.KeyedLocks()
    order: list[str] = []

    async def work(key: str, tag: str) -> None:
        async with locks.hold(key):
            order.append(f"{tag}+")
            await asyncio.sleep(0.01)
            order.append(f"{tag}-")

    async def main() -> None:
        await asyncio.gather(work("lu", "a"), work("lu", "b"), work("other", "c"))

    asyncio.run(main())
    assert order.index("a-") < order.index("b+")  # the same key: one at a time
    assert order.index("c+") < order.index("a-")  # another key: side by side
    assert len(locks) == 0


def test_deleted_objects_leave_nothing_behind() -> None:
    st = fresh()
    st.tokens[("ns", "a1")] = "t"
    st.ensured["uid-1"] = 2
    st.group_views[("ns", "a1")] = ("x",)
    st.portions_seen[("ns", "g1")] = 0
    st.forget_array("ns", "a1", uid="uid-1")
    st.forget_group("ns", "g1")
    assert not (st.tokens or st.ensured or st.group_views or st.controller_waits or st.portions_seen)


def test_a_daemon_unregistered_is_no_longer_woken() -> None:
    st = fresh()

    async def main() -> tuple[bool, Any]:
        ev = st.wakeups.register("ns", "g1", array="a1")
        st.wakeups.wake_groups_of("ns", "a1")
        woken = ev.is_set()
        st.wakeups.unregister("ns", "g1")
        ev.clear()
        st.wakeups.wake_groups_of("ns", "a1")
        return woken, ev.is_set()

    assert asyncio.run(main()) == (True, False)


def test_state_is_found_in_kopfs_memo() -> None:
    import kopf

    memo = kopf.Memo()
    st = fresh()
    memo.state = st
    assert state.of(memo) is st
