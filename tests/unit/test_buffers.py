"""nasblade.buffers.Spares: a buffer is handed out again only when nothing refers to it."""

from __future__ import annotations

import threading

from nasblade.buffers import Spares


def test_a_buffer_is_reused_only_once_every_view_of_it_is_gone() -> None:
    s = Spares(1 << 20)
    a = s.get(1000)
    view = memoryview(a)[10:20]  # a slice still refers to the buffer
    ident = id(a)
    del a
    b = s.get(1000)
    assert id(b) != ident and s.allocated == 2
    del view
    c = s.get(1000)  # the first one: nothing refers to it now
    assert id(c) == ident and s.reused == 1
    assert s.get(999) is not c  # another size: a new buffer


def test_a_buffer_a_thread_is_writing_from_is_not_handed_out() -> None:
    s = Spares(1 << 20)
    buf = s.get(4096)
    started, release = threading.Event(), threading.Event()

    def device_write(data: memoryview) -> None:  # as a write in the controller's I/O pool
        started.set()
        release.wait(5)

    t = threading.Thread(target=device_write, args=(memoryview(buf),))
    t.start()
    started.wait(5)
    ident = id(buf)
    del buf
    assert id(s.get(4096)) != ident
    release.set()
    t.join()


def test_the_kept_bytes_stay_within_the_limit() -> None:
    s = Spares(3 * 4096)
    held = [s.get(4096) for _ in range(5)]  # all held: five allocations
    assert s.allocated == 5 and s.kept == 3
    big = s.get(1 << 20)  # over the limit: handed out, never kept
    assert len(big) == 1 << 20 and s.kept == 3
    del held
