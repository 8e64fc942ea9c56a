"""Handoff: the queue other threads use to give work to a socket-owning thread."""

from __future__ import annotations

import select
import threading

from rmqz.transport.handoff import Handoff


def readable(h: Handoff) -> bool:
    return bool(select.select([h.fileno()], [], [], 0)[0])


def test_put_refuses_beyond_max_items_and_drain_returns_them_in_order():
    h = Handoff(3)
    assert [h.put(i) for i in range(4)] == [True, True, True, False]
    assert h.drain() == [0, 1, 2]
    assert h.put(3) and h.drain() == [3]
    h.close()


def test_owner_is_woken_once_per_burst_and_not_after_the_drain():
    h = Handoff(100)
    assert not readable(h)
    for i in range(10):
        h.put(i)
    assert readable(h)
    assert h.drain() == list(range(10))
    assert not readable(h)  # the one wake byte was read
    assert h.drain() == []  # a drain without a wake-up reads nothing and finds nothing
    h.close()


def test_leftovers_beyond_one_drain_keep_the_owner_readable():
    h = Handoff(100)
    for i in range(10):
        h.put(i)
    assert h.drain(max_items=4) == [0, 1, 2, 3]
    assert readable(h)
    assert h.drain(max_items=4) == [4, 5, 6, 7]
    assert h.drain() == [8, 9] and not readable(h)
    h.close()


def test_no_item_is_stranded_when_producers_race_the_owner():
    h = Handoff(1_000_000)
    n_threads, per_thread = 4, 5_000
    got: list[int] = []
    done = threading.Event()

    def produce(base: int) -> None:
        for i in range(per_thread):
            assert h.put(base + i)

    def own() -> None:
        while len(got) < n_threads * per_thread:
            if select.select([h.fileno()], [], [], 5)[0]:  # only when woken, as the agent's poller
                got.extend(h.drain(max_items=64))
        done.set()

    owner = threading.Thread(target=own)
    owner.start()
    producers = [threading.Thread(target=produce, args=(t * per_thread,)) for t in range(n_threads)]
    for p in producers:
        p.start()
    for p in producers:
        p.join()
    assert done.wait(30), f"owner stalled with {len(got)} of {n_threads * per_thread} items"
    owner.join()
    assert sorted(got) == list(range(n_threads * per_thread))
    for t in range(n_threads):  # each producer's items keep their order
        mine = [x for x in got if t * per_thread <= x < (t + 1) * per_thread]
        assert mine == sorted(mine)
    h.close()


def test_close_is_idempotent_and_later_wakes_are_no_ops():
    h = Handoff(2)
    h.close()
    h.close()
    h.wake()
    assert h.drain() == []
