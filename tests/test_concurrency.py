"""The worker pool, map_unordered, the rate gate and call_with_backoff (qcourier.services.workers)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from qcourier.services.base import ServiceError, TransientServiceError
from qcourier.services.local import LocalService, LocalServiceConfig, SlidingWindowLimiter
from qcourier.services.workers import (
    RateGate,
    WorkerPool,
    call_with_backoff,
    is_rate_limited,
    map_unordered,
)


class Peak:
    """Counts calls in flight at once."""

    def __init__(self) -> None:
        self.now = self.peak = self.calls = 0
        self._lock = threading.Lock()

    def __enter__(self) -> Peak:
        with self._lock:
            self.now += 1
            self.calls += 1
            self.peak = max(self.peak, self.now)
        return self

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self.now -= 1


def pool_threads() -> set[str]:
    return {t.name for t in threading.enumerate() if t.name.startswith("qcourier-worker-")}


# ------------------------------------------------------------------------------ map_unordered


def test_every_item_comes_back_with_its_result_or_its_exception():
    def square_unless_five(n: int) -> int:
        if n % 5 == 0:
            raise ValueError(f"no {n}")
        return n * n

    results = dict(map_unordered(square_unless_five, range(23), workers=4))
    assert set(results) == set(range(23))
    for n, value in results.items():
        if n % 5 == 0:
            assert isinstance(value, ValueError) and str(value) == f"no {n}"
        else:
            assert value == n * n


def test_at_most_workers_calls_run_at_once_and_they_do_overlap():
    peak = Peak()

    def work(n: int) -> int:
        with peak:
            time.sleep(0.02)
        return n

    assert sorted(n for n, _ in map_unordered(work, range(30), workers=3)) == list(range(30))
    assert peak.calls == 30
    assert 2 <= peak.peak <= 3


def test_eight_slow_calls_run_in_parallel():
    start = time.monotonic()
    results = list(map_unordered(lambda n: time.sleep(0.1) or n, range(8), workers=8))
    assert len(results) == 8
    assert time.monotonic() - start < 0.6  # one after another: 0.8 s


def test_one_worker_runs_in_order_on_the_calling_thread():
    seen = []

    def work(n: int) -> int:
        seen.append((n, threading.current_thread().name))
        return n

    assert [n for n, _ in map_unordered(work, range(5), workers=1)] == [0, 1, 2, 3, 4]
    assert {name for _, name in seen} == {threading.current_thread().name}


def test_threads_are_made_once_and_reused():
    list(map_unordered(lambda n: n, range(40), workers=6))
    names, count = pool_threads(), threading.active_count()
    for _ in range(25):
        assert len(list(map_unordered(lambda n: time.sleep(0.001) or n, range(40), workers=6))) == 40
    assert threading.active_count() <= count  # (other tests' threads may end meanwhile)
    assert pool_threads() == names  # the same threads, none torn down or added
    assert len(names) <= max(6, 8)  # never more than the largest size asked for (8 elsewhere)


def test_a_nested_map_runs_inline_instead_of_deadlocking():
    def inner(n: int) -> int:
        return sum(v for _, v in map_unordered(lambda m: m, range(n), workers=8))

    results = dict(map_unordered(inner, range(20), workers=8))
    assert results == {n: n * (n - 1) // 2 for n in range(20)}


def test_stopping_early_starts_no_more_calls():
    started = Peak()

    def work(n: int) -> int:
        with started:
            time.sleep(0.05)
        return n

    for _ in map_unordered(work, range(100), workers=4):
        break
    time.sleep(0.2)
    assert started.calls <= 5  # the four in flight, and at most one started as the first ended


# ------------------------------------------------------------------------------ WorkerPool


def test_a_call_that_times_out_is_abandoned_and_its_thread_replaced():
    pool = WorkerPool("test-timeout")
    release = threading.Event()
    with pytest.raises(TimeoutError):
        pool.call(lambda: release.wait(5), timeout=0.1, size=2)
    assert pool.threads <= 2
    start = time.monotonic()
    assert pool.call(lambda: "answer", timeout=2, size=2) == "answer"
    assert time.monotonic() - start < 1
    release.set()
    time.sleep(0.2)  # the abandoned thread finished its call and left
    alive = [t for t in threading.enumerate() if t.name.startswith("test-timeout-")]
    assert 1 <= len(alive) <= 2
    assert pool.call(lambda: 1 + 1, timeout=2, size=2) == 2


def test_a_call_that_times_out_while_queued_never_runs():
    pool = WorkerPool("test-queued")
    release = threading.Event()
    blocker = pool.submit(lambda: release.wait(5), size=1)  # takes the only thread
    ran = threading.Event()
    with pytest.raises(TimeoutError):
        pool.call(ran.set, timeout=0.1, size=1)
    release.set()
    assert blocker.done.wait(2)
    assert pool.call(lambda: "next", timeout=2, size=1) == "next"
    assert not ran.is_set()


def test_a_pool_call_from_its_own_thread_runs_inline():
    pool = WorkerPool("test-inline")
    assert pool.call(lambda: pool.call(lambda: "inner", timeout=1, size=1), timeout=2, size=1) == "inner"


def test_errors_reach_the_caller():
    pool = WorkerPool("test-errors")
    with pytest.raises(KeyError, match="lost"):
        pool.call(lambda: {}["lost"], timeout=2, size=1)


# ------------------------------------------------------------------------------ RateGate


def test_the_gate_holds_calls_until_the_back_off_has_passed():
    gate = RateGate()
    assert gate.wait() == 0 and gate.remaining() == 0
    gate.back_off(0.2)
    gate.back_off(0.05)  # never brings the time earlier
    assert 0.1 < gate.remaining() <= 0.2
    start = time.monotonic()
    gate.wait()
    assert time.monotonic() - start >= 0.15
    assert gate.remaining() == 0


def test_the_gate_holds_every_thread():
    gate = RateGate()
    gate.back_off(0.3)
    released = []

    def waiter() -> None:
        gate.wait()
        released.append(time.monotonic())

    start = time.monotonic()
    threads = [threading.Thread(target=waiter) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert len(released) == 4 and min(released) - start >= 0.25


# ------------------------------------------------------------------------------ call_with_backoff


def too_many(retry_after: float | None = None) -> TransientServiceError:
    return TransientServiceError("slow down (HTTP 429)", http_status=429, retry_after=retry_after)


def test_429_is_retried_after_the_named_delay():
    answers = [too_many(0.05), too_many(0.05), "ok"]
    calls = []

    def func() -> str:
        calls.append(time.monotonic())
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    gate = RateGate()
    assert call_with_backoff(gate, func) == "ok"
    assert len(calls) == 3 and calls[2] - calls[0] >= 0.09


def test_429_without_a_delay_backs_off_exponentially_then_gives_up():
    sleeps: list[float] = []
    clock = [0.0]

    def sleep(seconds: float) -> None:
        sleeps.append(round(seconds, 6))
        clock[0] += seconds

    gate = RateGate(clock=lambda: clock[0], sleep=sleep)
    calls = []

    def always_429() -> None:
        calls.append(1)
        raise too_many()

    with pytest.raises(TransientServiceError) as caught:
        call_with_backoff(gate, always_429, retries=3, base_delay=0.5)
    assert is_rate_limited(caught.value)
    assert len(calls) == 4 and sleeps == [0.5, 1.0, 2.0]


def test_only_429_is_retried():
    calls = []

    def unavailable() -> None:
        calls.append(1)
        raise TransientServiceError("server error (HTTP 503)", http_status=503)

    with pytest.raises(TransientServiceError, match="503"):
        call_with_backoff(RateGate(), unavailable)
    with pytest.raises(ServiceError, match="gone"):
        call_with_backoff(RateGate(), lambda: (_ for _ in ()).throw(ServiceError("gone")))
    assert len(calls) == 1


# ------------------------------------------------------------------------------ with the local service


def test_the_sliding_window_limiter():
    now = [100.0]
    limiter = SlidingWindowLimiter(3, clock=lambda: now[0])
    assert [limiter.admit() for _ in range(3)] == [None, None, None]
    assert limiter.admit() == pytest.approx(1.0)
    now[0] += 0.4
    assert limiter.admit() == pytest.approx(0.6)  # refused calls are not counted
    now[0] += 0.6
    assert limiter.admit() is None
    half = SlidingWindowLimiter(0.5, clock=lambda: now[0])  # one call per two seconds
    assert half.admit() is None and half.admit() == pytest.approx(2.0)


def test_local_rate_limit_answers_429_with_retry_after(tmp_path: Path):
    service = LocalService(LocalServiceConfig(root=tmp_path, rate_limit_per_second=2))
    service.usage()
    service.usage()
    expected = r"rate limit of 2 calls/s exceeded \(HTTP 429\)"
    with pytest.raises(TransientServiceError, match=expected) as caught:
        service.usage()
    assert caught.value.http_status == 429 and 0 < caught.value.retry_after <= 1


def test_threads_backing_off_get_through_the_rate_limit_without_exceeding_it(tmp_path: Path):
    limit, calls = 20, 50
    service = LocalService(LocalServiceConfig(root=tmp_path, rate_limit_per_second=limit))
    gate = RateGate()
    admitted: list[float] = []
    refused = []
    lock = threading.Lock()

    def call(_: int) -> float:
        def once() -> float:
            try:
                usage = service.usage().usage_seconds
            except TransientServiceError:
                with lock:
                    refused.append(1)
                raise
            with lock:
                admitted.append(time.monotonic())
            return usage

        return call_with_backoff(gate, once, retries=20)

    results = [value for _, value in map_unordered(call, range(calls), workers=8)]
    assert results == [0.0] * calls  # every call got through
    assert len(admitted) == calls and refused  # the limit was met and waited out
    assert len(refused) < 3 * calls  # backing off, not hammering
    admitted.sort()
    for i in range(len(admitted) - limit):
        # No window of one second saw more than `limit` calls (a little slack for the clock
        # read after the service admitted each call).
        assert admitted[i + limit] - admitted[i] > 0.95
