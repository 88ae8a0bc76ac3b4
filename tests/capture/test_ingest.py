"""The overlapped writer: order, bounded memory, errors on the caller's thread."""

from __future__ import annotations

import threading

import pytest

from actstore.capture.ingest import OrderedWriter


def test_items_are_consumed_in_order_on_another_thread():
    seen, threads = [], set()

    def consume(item):
        seen.append(item)
        threads.add(threading.get_ident())

    with OrderedWriter(consume, depth=2) as writer:
        for item in range(50):
            writer.put(item)
    assert seen == list(range(50))
    assert threads and threading.get_ident() not in threads


def test_put_blocks_while_depth_items_wait():
    release = threading.Event()
    started = threading.Event()

    def consume(item):
        started.set()
        release.wait(10)

    writer = OrderedWriter(consume, depth=1)
    writer.put(0)  # being consumed
    assert started.wait(10)
    writer.put(1)  # waits in the queue
    third = threading.Thread(target=writer.put, args=(2,))
    third.start()
    third.join(0.3)
    assert third.is_alive(), "a third window was accepted while one was written and one waited"
    release.set()
    third.join(10)
    writer.close()


def test_a_writer_error_is_raised_on_the_callers_thread_and_nothing_later_is_written():
    seen = []

    def consume(item):
        if item == 3:
            raise OSError("disk full")
        seen.append(item)

    with pytest.raises(OSError, match="disk full"):
        with OrderedWriter(consume) as writer:
            for item in range(20):
                writer.put(item)
    assert seen == [0, 1, 2]


def test_an_error_of_the_body_still_writes_the_windows_already_queued():
    seen = []
    with pytest.raises(KeyboardInterrupt):
        with OrderedWriter(seen.append, depth=4) as writer:
            for item in range(3):
                writer.put(item)
            raise KeyboardInterrupt
    assert seen == [0, 1, 2]


def test_depth_zero_consumes_on_the_callers_thread_in_order():
    seen, threads = [], set()

    def consume(item):
        if item == 5:
            raise OSError("disk full")
        seen.append(item)
        threads.add(threading.get_ident())

    with pytest.raises(OSError, match="disk full"):
        with OrderedWriter(consume, depth=0) as writer:
            for item in range(20):
                writer.put(item)
    assert seen == [0, 1, 2, 3, 4]
    assert threads == {threading.get_ident()}


def test_capture_writes_in_line_only_when_torch_holds_every_core(monkeypatch):
    import torch

    from actstore.capture.run import writer_depth

    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    assert writer_depth(torch.device("cpu")) == 0
    assert writer_depth(torch.device("meta")) == 1  # any device but the CPU: the CPU is free meanwhile
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert writer_depth(torch.device("cpu")) == 1
