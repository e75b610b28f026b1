"""`ghostface_keras.serve.batching.MicroBatcher` on its own, with stand-in functions: concurrent callers share calls
and get exactly their own rows; an error in a merged call reaches only the request that caused it; a bad request is
refused before it is queued; the queue is bounded; close() answers what is queued, then refuses. Default tier
(threads, no model). The HTTP service's use of it: tests/test_http_app.py."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from ghostface_keras.serve.batching import BatcherBusy, BatcherClosed, MicroBatcher

WAIT = 20.0  # seconds: a generous bound on every wait, so a broken batcher fails the test instead of hanging it


class Gated:
    """A stand-in model: records each call's rows; the first call waits until `release` is set, so the requests
    that arrive meanwhile are queued and must share the next call."""

    def __init__(self, fail_on: float | None = None) -> None:
        self.calls: list[np.ndarray] = []
        self.entered, self.release = threading.Event(), threading.Event()
        self.fail_on = fail_on

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        self.calls.append(rows.copy())
        self.entered.set()
        assert self.release.wait(WAIT)
        if self.fail_on is not None and (rows[:, 0] == self.fail_on).any():
            raise ValueError(f"row {self.fail_on} is poison")
        return rows[:, :1] * 10  # row i -> 10 x its first value: each answer says which rows it came from


def _wait_until(condition, what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


def _rows(request: int, count: int = 2) -> np.ndarray:
    """`count` rows of 3 values whose first value is 100 * request + row: unique across requests."""
    return np.array([[100.0 * request + row, 0.0, 0.0] for row in range(count)])


def test_concurrent_requests_share_one_call_and_each_gets_exactly_its_rows():
    model = Gated()
    with MicroBatcher(model, window_ms=0, max_batch=64) as batcher, ThreadPoolExecutor(8) as pool:
        first = pool.submit(batcher, _rows(0))
        assert model.entered.wait(WAIT)  # the first request is in the model; the next 7 queue up behind it
        others = [pool.submit(batcher, _rows(request, count=request)) for request in range(1, 8)]
        _wait_until(lambda: batcher.pending == 7, "7 queued requests")
        model.release.set()
        answers = [first.result(WAIT)] + [future.result(WAIT) for future in others]
    assert [len(call) for call in model.calls] == [2, sum(range(1, 8))]  # 8 requests, 2 calls; the rows add up
    for request, answer in enumerate(answers):
        expected = _rows(request, count=2 if request == 0 else request)[:, :1] * 10
        np.testing.assert_array_equal(answer, expected)


def test_the_window_gathers_requests_arriving_after_the_first_and_max_batch_bounds_a_call():
    calls: list[int] = []

    def model(rows: np.ndarray) -> np.ndarray:
        calls.append(len(rows))
        return rows[:, :1]

    with MicroBatcher(model, window_ms=300, max_batch=8) as batcher, ThreadPoolExecutor(12) as pool:
        barrier = threading.Barrier(12)

        def request(number: int) -> np.ndarray:
            barrier.wait(WAIT)
            return batcher(_rows(number, count=2))

        answers = list(pool.map(request, range(12)))
        oversized = batcher(_rows(99, count=20))  # more rows than max_batch: one call of its own, not split
    assert sum(calls[:-1]) == 24 and len(calls) - 1 < 12 and max(calls[:-1]) <= 8 and calls[-1] == 20
    for number, answer in enumerate(answers):
        np.testing.assert_array_equal(answer, _rows(number)[:, :1])
    np.testing.assert_array_equal(oversized, _rows(99, count=20)[:, :1])


def test_gathering_stops_once_the_expected_requests_are_in_so_a_lone_request_skips_the_window():
    calls: list[int] = []

    def model(rows: np.ndarray) -> np.ndarray:
        calls.append(len(rows))
        return rows[:, :1]

    # a window far past WAIT: a batcher that waited it out would fail these waits instead of answering
    expected = [1]
    with MicroBatcher(model, window_ms=1e6, max_batch=64, expected=lambda: expected[0]) as batcher, \
            ThreadPoolExecutor(3) as pool:
        np.testing.assert_array_equal(pool.submit(batcher, _rows(0)).result(WAIT), _rows(0)[:, :1])
        expected[0] = 3  # three requests in progress: the first waits for the other two, then one call for all
        first = pool.submit(batcher, _rows(1))
        _wait_until(lambda: batcher.pending == 0 and len(calls) == 1, "the first request taken")
        rest = [pool.submit(batcher, _rows(request)) for request in (2, 3)]
        answers = [future.result(WAIT) for future in [first, *rest]]
    assert calls == [2, 6]
    for request, answer in zip((1, 2, 3), answers):
        np.testing.assert_array_equal(answer, _rows(request)[:, :1])


def test_an_error_in_a_merged_call_goes_to_its_request_only_and_the_batcher_goes_on():
    model = Gated(fail_on=300.0)  # request 3's first row
    with MicroBatcher(model, window_ms=0) as batcher, ThreadPoolExecutor(6) as pool:
        first = pool.submit(batcher, _rows(0))
        assert model.entered.wait(WAIT)
        others = {request: pool.submit(batcher, _rows(request)) for request in range(1, 6)}
        _wait_until(lambda: batcher.pending == 5, "5 queued requests")
        model.release.set()
        np.testing.assert_array_equal(first.result(WAIT), _rows(0)[:, :1] * 10)
        for request, future in others.items():
            if request == 3:
                with pytest.raises(ValueError, match="row 300.0 is poison"):
                    future.result(WAIT)
            else:
                np.testing.assert_array_equal(future.result(WAIT), _rows(request)[:, :1] * 10)
        np.testing.assert_array_equal(batcher(_rows(7)), _rows(7)[:, :1] * 10)  # still serving
    # the merged call of requests 1-5 failed, then each was called alone
    assert [len(call) for call in model.calls] == [2, 10, 2, 2, 2, 2, 2, 2]


def test_a_bad_request_is_refused_on_its_own_thread_and_never_reaches_a_batch():
    seen: list[np.ndarray] = []

    def check(rows: object) -> np.ndarray:
        rows = np.asarray(rows)
        if rows.ndim != 2 or rows.shape[1] != 3:
            raise ValueError(f"rows have shape {rows.shape}: expected (N, 3)")
        return rows

    def model(rows: np.ndarray) -> np.ndarray:
        seen.append(rows)
        return rows[:, :1]

    with MicroBatcher(model, window_ms=50, check=check) as batcher:
        with pytest.raises(ValueError, match=r"rows have shape \(2, 4\)"):
            batcher(np.zeros((2, 4)))
        assert seen == [] and batcher.pending == 0
        # rows of another type are never merged with others (concatenating would change them): separate calls
        with ThreadPoolExecutor(2) as pool:
            floats, integers = pool.submit(batcher, _rows(1)), pool.submit(batcher, np.ones((2, 3), np.int64))
            assert floats.result(WAIT).dtype == np.float64 and integers.result(WAIT).dtype == np.int64
    assert sorted(rows.dtype.name for rows in seen) == ["float64", "int64"]


def test_the_queue_is_bounded_and_a_full_queue_answers_busy():
    model = Gated()
    with MicroBatcher(model, window_ms=0, max_pending=2, wait_s=0.2) as batcher, ThreadPoolExecutor(4) as pool:
        first = pool.submit(batcher, _rows(0))
        assert model.entered.wait(WAIT)
        queued = [pool.submit(batcher, _rows(request)) for request in (1, 2)]
        _wait_until(lambda: batcher.pending == 2, "2 queued requests")
        started = time.monotonic()
        with pytest.raises(BatcherBusy, match="2 requests already wait for the model"):
            batcher(_rows(3))
        assert 0.15 < time.monotonic() - started < WAIT and batcher.pending == 2
        model.release.set()
        assert [len(future.result(WAIT)) for future in [first, *queued]] == [2, 2, 2]
        np.testing.assert_array_equal(batcher(_rows(3)), _rows(3)[:, :1] * 10)  # places free again


def test_close_answers_the_queued_requests_then_refuses_and_ends_its_thread():
    model = Gated()
    batcher = MicroBatcher(model, window_ms=0)
    with ThreadPoolExecutor(4) as pool:
        first = pool.submit(batcher, _rows(0))
        assert model.entered.wait(WAIT)
        queued = [pool.submit(batcher, _rows(request)) for request in (1, 2)]
        _wait_until(lambda: batcher.pending == 2, "2 queued requests")
        closing = pool.submit(batcher.close)
        _wait_until(lambda: batcher.closed, "closed")
        with pytest.raises(BatcherClosed):
            batcher(_rows(3))
        model.release.set()
        closing.result(WAIT)
        for request, future in enumerate([first, *queued]):
            np.testing.assert_array_equal(future.result(WAIT), _rows(request)[:, :1] * 10)
    assert not batcher._thread.is_alive() and batcher.pending == 0
    batcher.close()  # twice is fine
