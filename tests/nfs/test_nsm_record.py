"""Unit tests of the NSM record kept in the file system (``nasblade.nfs.nsm.Monitor``): what a
new owner reads back, the state number across restarts, and a damaged record."""

from __future__ import annotations

from nasblade.nfs.nsm import Monitor


def test_round_trip_and_restart() -> None:
    m = Monitor()
    assert m.add(b"alpha", "127.0.0.2") is True
    assert m.add(b"alpha", "127.0.0.2") is False
    assert m.add(b"beta\xff", "127.0.0.3") is True  # any bytes of a caller name survive JSON
    back = Monitor.loads(m.dumps())
    assert back == m
    assert back.restarted() == {"alpha": "127.0.0.2", "beta\xff": "127.0.0.3"}
    assert back.state == 3
    back.restarted()
    assert back.state == 5 and back.state % 2 == 1
    assert back.keep_only({b"alpha"}) is True
    assert back.clients == {"alpha": "127.0.0.2"}
    assert back.remove(b"alpha") is True and back.remove(b"alpha") is False


def test_even_state_moves_to_the_next_odd_one() -> None:
    m = Monitor(state=4)
    m.restarted()
    assert m.state == 7


def test_missing_or_damaged_record_is_a_fresh_one() -> None:
    for text in (None, "", "{", "[1, 2]", '{"state": "x", "clients": {}}', '{"clients": 3}'):
        m = Monitor.loads(text)
        assert m == Monitor(), text
        assert m.restarted() == {}
