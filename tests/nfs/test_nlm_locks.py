"""Unit tests of the NLM lock table (``nasblade.nfs.locks``): conflicts, ranges, owners, waiters,
hosts and the grace period, plus a model check against a byte-by-byte POSIX lock model."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st
from nasblade.nfs.locks import EOF, Grace, Lock, LockTable, Owner, Share, ShareTable, Waiter, span

A = Owner(b"alpha", 1, b"1@alpha")
A2 = Owner(b"alpha", 2, b"2@alpha")
B = Owner(b"beta", 1, b"1@beta")
F = ("fs", 7)


def ranges(t: LockTable, owner: Owner | None = None) -> list[tuple[bool, int, int]]:
    return [(lk.exclusive, lk.start, lk.end) for lk in t.locks(F) if owner is None or lk.owner == owner]


def test_span_length_zero_runs_to_eof() -> None:
    assert span(10, 0) == (10, EOF)
    assert span(10, 5) == (10, 15)
    assert span(2**64 - 2, 5) == (2**64 - 2, EOF)
    assert Lock(A, True, 10, EOF).length == 0
    assert Lock(A, True, 10, 15).length == 5


def test_exclusive_conflicts_with_any_other_owner() -> None:
    t = LockTable()
    assert t.lock(F, A, True, 0, 100) is None
    assert t.lock(F, B, False, 50, 60) == Lock(A, True, 0, 100)
    assert t.lock(F, B, True, 99, 200) == Lock(A, True, 0, 100)
    assert t.lock(F, B, True, 100, 200) is None  # adjacent, no overlap
    assert t.lock(F, A2, False, 0, 1) is not None  # another process of the same host conflicts
    assert t.lock(("fs", 8), B, True, 0, EOF) is None  # another file


def test_shared_locks_share() -> None:
    t = LockTable()
    assert t.lock(F, A, False, 0, EOF) is None
    assert t.lock(F, B, False, 0, EOF) is None
    assert t.conflict(F, B, True, 5, 6) == Lock(A, False, 0, EOF)
    assert t.conflict(F, A, False, 0, EOF) is None


def test_same_owner_never_conflicts_and_upgrades_in_place() -> None:
    t = LockTable()
    assert t.lock(F, A, False, 0, 100) is None
    assert t.lock(F, A, True, 0, 100) is None
    assert ranges(t) == [(True, 0, 100)]


def test_shared_inside_exclusive_splits_in_three() -> None:
    t = LockTable()
    t.lock(F, A, True, 0, 100)
    assert t.lock(F, A, False, 40, 60) is None
    assert ranges(t) == [(True, 0, 40), (False, 40, 60), (True, 60, 100)]
    assert t.lock(F, B, False, 45, 55) is None  # the shared middle admits a reader
    assert t.lock(F, B, False, 30, 45) is not None


def test_adjacent_and_overlapping_ranges_of_one_owner_merge() -> None:
    t = LockTable()
    t.lock(F, A, True, 0, 10)
    t.lock(F, A, True, 20, 30)
    t.lock(F, A, True, 10, 20)
    assert ranges(t) == [(True, 0, 30)]
    t.lock(F, A, True, 25, EOF)
    assert ranges(t) == [(True, 0, EOF)]
    t.lock(F, A, False, 40, 50)
    t.lock(F, A, False, 50, 60)
    assert ranges(t) == [(True, 0, 40), (False, 40, 60), (True, 60, EOF)]


def test_unlock_splits_and_releases_only_the_owner() -> None:
    t = LockTable()
    t.lock(F, A, True, 0, 100)
    t.lock(F, B, True, 200, 300)
    assert t.unlock(F, A, 40, 60) is True
    assert ranges(t, A) == [(True, 0, 40), (True, 60, 100)]
    assert t.unlock(F, A, 40, 60) is False  # nothing left there
    assert t.unlock(F, A, 0, EOF) is True
    assert ranges(t) == [(True, 200, 300)]
    assert t.unlock(F, A, 0, EOF) is False
    assert t.unlock(("fs", 99), A, 0, EOF) is False


def test_waiters_are_granted_in_order_when_the_holder_unlocks() -> None:
    t = LockTable()
    t.lock(F, A, True, 0, EOF)
    w1 = Waiter(B, True, 0, 10, "127.0.0.2", b"c1")
    w2 = Waiter(A2, True, 5, 20, "127.0.0.1", b"c2")
    t.block(F, w1)
    t.block(F, w2)
    t.block(F, w1)  # a repeated LOCK replaces its earlier copy
    assert t.waiters(F) == [w2, w1]
    assert t.wake(F) == []
    t.unlock(F, A, 0, EOF)
    assert t.wake(F) == [w2]  # w1 now conflicts with w2's fresh lock
    assert t.waiters(F) == [w1]
    assert t.cancel(F, B, True, 0, 10) is True
    assert t.cancel(F, B, True, 0, 10) is False
    assert t.waiters(F) == []


def test_free_host_drops_locks_and_waiters_of_that_host_only() -> None:
    t = LockTable()
    t.lock(F, A, True, 0, 10)
    t.lock(F, A2, True, 10, 20)
    t.lock(F, B, True, 20, 30)
    t.block(F, Waiter(A, True, 20, 30, "x"))
    t.block(("fs", 8), Waiter(B, True, 0, 1, "y"))
    assert t.hosts() == {b"alpha", b"beta"}
    assert t.free_host(b"alpha") == [F]
    assert ranges(t) == [(True, 20, 30)]
    assert t.waiters(F) == []
    assert len(t.waiters(("fs", 8))) == 1
    assert t.hosts() == {b"beta"}
    assert t.count() == 1


def test_empty_range_is_refused() -> None:
    t = LockTable()
    try:
        t.lock(F, A, True, 5, 5)
    except ValueError:
        pass
    else:
        raise AssertionError("an empty range was accepted")


def test_grace_period() -> None:
    g = Grace()
    assert not g.active(100.0)
    g.start(100.0, 20.0)
    assert g.active(100.0) and g.active(119.9)
    assert not g.active(120.0)
    assert g.remaining(110.0) == 10.0
    g.end()
    assert not g.active(101.0)


def test_grace_period_ends_once_every_client_told_to_reclaim_has() -> None:
    """Named hosts: the period ends ``settle`` seconds after the last reclaim once every one
    of them reclaimed; until then (and with one missing) it runs its full length."""
    g = Grace(settle=5.0)
    g.start(100.0, 90.0, hosts=["a", "b"])
    g.reclaimed("a", 101.0)
    assert g.active(110.0) and g.awaiting == {"b"}  # b is not back: the full length
    g.reclaimed("b", 111.0)
    g.reclaimed("b", 112.0)  # its second lock
    assert g.active(116.9) and g.remaining(116.9) > 70
    assert not g.active(117.0) and g.remaining(117.0) == 0.0
    g.reclaimed("a", 118.0)  # too late to open it again
    assert not g.active(118.5)

    g.start(200.0, 90.0, hosts=["a", "b"])
    g.reclaimed("a", 201.0)
    assert g.active(289.9) and not g.active(290.0)  # b never came back
    assert g.awaiting == {"b"} and g.expected == 2

    g.start(300.0, 20.0)  # no names: the whole period even after reclaims
    g.reclaimed("a", 301.0)
    assert g.active(319.0)


OWNERS = [A, A2, B]
ops = st.lists(st.tuples(st.sampled_from(["lock", "unlock"]), st.integers(0, 2), st.booleans(),
                         st.integers(0, 12), st.integers(1, 6)), max_size=40)


@settings(max_examples=300, deadline=None)
@given(ops)
def test_table_matches_a_byte_by_byte_model(seq: list[tuple[str, int, bool, int, int]]) -> None:
    """Every operation gives the answer, and leaves the state, of a per-byte POSIX model; each
    owner's ranges stay disjoint and maximal (no two adjacent ranges of one type)."""
    t = LockTable()
    model: dict[int, dict[Owner, bool]] = {b: {} for b in range(20)}  # byte -> owner -> exclusive
    for op, who, excl, start, length in seq:
        owner = OWNERS[who]
        end = start + length
        if op == "lock":
            blocked = any(o != owner and (e or excl) for b in range(start, end) for o, e in model[b].items())
            got = t.lock(F, owner, excl, start, end)
            assert (got is not None) == blocked
            if not blocked:
                for b in range(start, end):
                    model[b][owner] = excl
        else:
            t.unlock(F, owner, start, end)
            for b in range(start, end):
                model[b].pop(owner, None)
        for o in OWNERS:
            mine = sorted((lk.start, lk.end, lk.exclusive) for lk in t.locks(F) if lk.owner == o)
            for (_s1, e1, x1), (s2, _e2, x2) in itertools.pairwise(mine):
                assert e1 <= s2 and not (e1 == s2 and x1 == x2), mine
            per_byte = {b: x for s, e, x in mine for b in range(s, e)}
            assert per_byte == {b: held[o] for b, held in model.items() if o in held}


def test_share_reservations_conflict_on_access_against_deny() -> None:
    t = ShareTable()
    assert t.share(F, Share(A, access=1, deny=2)) is None  # read, deny write
    assert t.share(F, Share(B, access=2, deny=0)) == Share(A, 1, 2)  # write is denied
    assert t.share(F, Share(B, access=1, deny=1)) == Share(A, 1, 2)  # denies A's read
    assert t.share(F, Share(B, access=1, deny=0)) is None
    assert t.share(F, Share(A, access=3, deny=0)) is None  # one owner replaces its share
    assert t.shares(F) == [Share(B, 1, 0), Share(A, 3, 0)]
    assert t.unshare(F, A) and not t.unshare(F, A)
    t.free_host(b"beta")
    assert t.shares(F) == []
