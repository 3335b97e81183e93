"""The torch thread (engine.device.on_torch_thread): every model job's torch work on one OS thread.

Why it exists (issue 11): libgomp throttles its workers' spin-waiting once more OpenMP workers exist than cores,
and a server that runs each request on whichever of its threads is free soon has several teams; on 2 cores
mini-SD's loop then ran about 2x slower. These tests check the mechanism, not the speed (scripts/bench_serving.py
measures that).
"""

from __future__ import annotations

import contextvars
import threading

import pytest

from engine import device

REQUEST = contextvars.ContextVar("request", default=None)


def test_calls_run_on_one_thread_that_is_not_the_callers():
    idents = {device.on_torch_thread(threading.get_ident) for _ in range(5)}
    out = []
    for _ in range(3):  # callers on other threads, as a server's request threads
        caller = threading.Thread(target=lambda: out.append(device.on_torch_thread(threading.get_ident)))
        caller.start()
        caller.join()
    idents |= set(out)
    assert len(idents) == 1 and threading.get_ident() not in idents


def test_results_exceptions_context_and_nested_calls():
    assert device.on_torch_thread(lambda a, b=0: a + b, 2, b=3) == 5
    with pytest.raises(ZeroDivisionError):
        device.on_torch_thread(lambda: 1 / 0)
    token = REQUEST.set("visitor 7")
    try:
        assert device.on_torch_thread(REQUEST.get) == "visitor 7"  # gradio's request and progress go along
    finally:
        REQUEST.reset(token)
    # a call made on the torch thread runs in place instead of waiting for itself
    assert device.on_torch_thread(lambda: device.on_torch_thread(threading.get_ident)) == \
        device.on_torch_thread(threading.get_ident)


def test_a_generator_advances_on_the_torch_thread_and_closing_it_closes_the_inner_one():
    torch_thread = device.on_torch_thread(threading.get_ident)
    closed = threading.Event()

    def steps():
        try:
            for k in range(100):
                yield k, threading.get_ident()
        finally:
            closed.set()

    outer = device.iterate_on_torch_thread(steps())
    first = [next(outer) for _ in range(3)]
    assert [k for k, _ in first] == [0, 1, 2] and {ident for _, ident in first} == {torch_thread}
    outer.close()  # as gradio does when a job is cancelled: from its event loop, without waiting
    device.on_torch_thread(lambda: None)  # the close was queued before this call
    assert closed.is_set()
    assert list(device.iterate_on_torch_thread(iter([1, 2]))) == [1, 2]
