"""The worker pool, map_unordered, the rate gate and the retry loop (qcourier.services.workers)."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import pytest
from clocks import FakeTime, HeldClock, RecordingLimiter, wait_until

from qcourier.services.base import (
    AuthenticationError,
    CallTime,
    DeadlineExceededError,
    ServiceError,
    TransientServiceError,
)
from qcourier.services.local import LocalService, LocalServiceConfig, SlidingWindowLimiter
from qcourier.services.workers import (
    RateGate,
    RetryPolicy,
    Timing,
    WorkerPool,
    map_unordered,
    retry_call,
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
    # Each call waits until all eight are in flight: one after another, the first would
    # wait alone and the barrier break (an error result), however fast the machine.
    barrier = threading.Barrier(8, timeout=120)
    results = dict(map_unordered(lambda n: (barrier.wait(), n)[1], range(8), workers=8))
    assert sorted(results) == list(range(8))
    assert not any(isinstance(r, BaseException) for r in results.values()), results


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
    release = threading.Event()
    taken: list[int] = []

    def items():
        for n in range(100):
            taken.append(n)
            yield n

    def work(n: int) -> int:
        with started:
            if n:  # the first call answers; the others stay in flight until released
                assert release.wait(60)
        return n

    try:
        for _ in map_unordered(work, items(), workers=4):
            break
        # The four in flight, and at most one more taken as the first ended; and nothing
        # is taken once the caller stopped (the generator is closed by the break).
        assert len(taken) <= 5
        assert wait_until(lambda: started.now == len(taken) - 1)  # all the held ones started
    finally:
        release.set()
    assert wait_until(lambda: started.now == 0)
    assert started.calls == len(taken) <= 5  # every call taken ran, and no other


# ------------------------------------------------------------------------------ WorkerPool


def test_a_call_that_times_out_is_abandoned_and_its_thread_replaced():
    pool = WorkerPool("test-timeout")
    release, finished = threading.Event(), threading.Event()

    hung_threads: list[threading.Thread] = []

    def hung() -> None:
        hung_threads.append(threading.current_thread())
        release.wait(60)
        finished.set()

    with pytest.raises(TimeoutError):
        pool.call(hung, timeout=0.1, size=2)
    assert pool.threads <= 2
    # Answered while the abandoned call still hangs: another thread served it.
    assert pool.call(lambda: "answer", timeout=60, size=2) == "answer"
    assert not finished.is_set()
    release.set()
    [abandoned] = hung_threads
    abandoned.join(10)  # the abandoned thread finishes its call and leaves the pool
    assert finished.is_set() and not abandoned.is_alive()
    alive = [t for t in threading.enumerate() if t.name.startswith("test-timeout-")]
    assert 1 <= len(alive) <= 2 and abandoned not in alive
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
    now = [100.0]  # the gate's clock; its sleep moves it

    def sleep(seconds: float) -> None:
        now[0] += seconds

    gate = RateGate(clock=lambda: now[0], sleep=sleep)
    assert gate.wait() == 0 and gate.remaining() == 0
    gate.back_off(0.2)
    now[0] += 0.05
    gate.back_off(0.05)  # never brings the time earlier
    assert gate.remaining() == pytest.approx(0.15)
    assert gate.wait() == pytest.approx(0.15)
    assert now[0] == pytest.approx(100.2) and gate.remaining() == 0


def test_the_gate_holds_every_thread():
    held = HeldClock()
    gate = held.gate()
    gate.back_off(0.3)
    waited: dict[str, float] = {}

    def waiter() -> None:
        waited[threading.current_thread().name] = gate.wait()

    threads = [threading.Thread(target=waiter, name=f"waiter-{n}") for n in range(4)]
    try:
        for t in threads:
            t.start()
        for t in threads:  # each thread is held at the gate for the whole back-off...
            assert held.waiting(t.name) == [pytest.approx(0.3)]
        assert waited == {} and all(t.is_alive() for t in threads)  # ...and none gets past it
    finally:
        held.release.set()
    for t in threads:
        t.join(10)
    assert waited == {t.name: pytest.approx(0.3) for t in threads}
    assert gate.remaining() == 0


# ------------------------------------------------------------------------------ retry_call


def too_many(retry_after: float | None = None) -> TransientServiceError:
    return TransientServiceError("slow down (HTTP 429)", http_status=429, retry_after=retry_after,
                                 nothing_done=True)


def scripted(answers: list, calls: list[float], clock) -> object:
    """An attempt that gives ``answers`` in turn (raising the exceptions), noting its times."""
    def attempt(_seconds_left: float):
        calls.append(clock())
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    return attempt


def run(attempt, fake: FakeTime, gate: RateGate | None = None, policy: RetryPolicy | None = None,
        budget: float = 1000.0, idempotent: bool = True):
    return retry_call(attempt, what="status of job x",
                      policy=policy or RetryPolicy(attempts=4, jitter_seconds=0.0),
                      gate=gate or fake.gate(), budget=CallTime(budget), idempotent=idempotent,
                      deadline_error=lambda last: DeadlineExceededError(f"gave up; last: {last}"),
                      timing=Timing(clock=fake.clock, sleep=fake.sleep))


def test_429_is_retried_after_the_named_delay_at_the_gate():
    fake, calls = FakeTime(), []
    gate = fake.gate()
    attempt = scripted([too_many(2.0), too_many(3.0), "ok"], calls, fake.clock)
    assert run(attempt, fake, gate) == "ok"
    assert calls == [0.0, 2.0, 5.0]  # each Retry-After waited out, no more
    assert gate.remaining() == 0


def test_a_429_storm_is_tried_exactly_attempts_times():
    fake, calls = FakeTime(), []
    attempt = scripted([too_many(1.0) for _ in range(10)], calls, fake.clock)
    with pytest.raises(TransientServiceError, match="HTTP 429") as caught:
        run(attempt, fake)
    assert caught.value.http_status == 429 and len(calls) == 4


def test_without_a_delay_the_backoff_doubles_then_gives_up():
    fake, calls = FakeTime(), []
    unavailable = TransientServiceError("server error (HTTP 503)", http_status=503)
    attempt = scripted([unavailable] * 10, calls, fake.clock)
    with pytest.raises(TransientServiceError, match="503"):
        run(attempt, fake, policy=RetryPolicy(attempts=4, backoff_seconds=0.5, jitter_seconds=0))
    assert len(calls) == 4 and fake.sleeps == [0.5, 1.0, 2.0]


def test_the_backoff_has_jitter_within_its_bound():
    fake, calls = FakeTime(), []
    unavailable = TransientServiceError("server error (HTTP 503)", http_status=503)
    attempt = scripted([unavailable] * 3 + ["ok"], calls, fake.clock)
    assert run(attempt, fake, policy=RetryPolicy(backoff_seconds=1.0, jitter_seconds=0.5)) == "ok"
    assert [1.0, 2.0, 4.0] <= fake.sleeps <= [1.5, 2.5, 4.5] and len(set(fake.sleeps)) == 3
    for base, slept in zip([1.0, 2.0, 4.0], fake.sleeps):
        assert base <= slept <= base + 0.5


def test_the_retry_stops_at_the_deadline():
    fake, calls = FakeTime(), []
    unavailable = TransientServiceError("server error (HTTP 503)", http_status=503)
    attempt = scripted([unavailable] * 10, calls, fake.clock)
    with pytest.raises(DeadlineExceededError, match="gave up; last: server error"):
        run(attempt, fake, policy=RetryPolicy(attempts=10, backoff_seconds=1.0,
                                              jitter_seconds=0), budget=2.5)
    assert calls == [0.0, 1.0] and fake.now == pytest.approx(2.5)  # never past the deadline


def test_a_gate_held_past_the_deadline_gives_up_at_the_deadline():
    fake, calls = FakeTime(), []
    gate = fake.gate()
    gate.back_off(30)
    with pytest.raises(DeadlineExceededError):
        run(scripted(["ok"], calls, fake.clock), fake, gate, budget=5)
    assert calls == [] and fake.now == pytest.approx(5)


def test_only_transient_failures_are_retried():
    for error in (ServiceError("refused (HTTP 400)", http_status=400),
                  AuthenticationError("refused the credentials (HTTP 401)", http_status=401),
                  ServiceError("forbidden (HTTP 403)", http_status=403)):
        fake, calls = FakeTime(), []
        with pytest.raises(ServiceError) as caught:
            run(scripted([error, "ok"], calls, fake.clock), fake)
        assert caught.value is error and len(calls) == 1


def test_a_call_that_is_not_idempotent_is_retried_only_when_nothing_was_done():
    fake, calls = FakeTime(), []
    after_post = TransientServiceError("server error (HTTP 503)", http_status=503)
    with pytest.raises(TransientServiceError, match="503"):
        run(scripted([after_post, "ok"], calls, fake.clock), fake, idempotent=False)
    assert len(calls) == 1
    calls.clear()
    refused = TransientServiceError("connection refused", http_status=-1, nothing_done=True)
    assert run(scripted([too_many(1.0), refused, "job"], calls, fake.clock), fake,
               idempotent=False) == "job"
    assert len(calls) == 3


def test_statuses_limit_what_is_retried():
    fake, calls = FakeTime(), []
    policy = RetryPolicy(attempts=None, statuses=frozenset({429}), jitter_seconds=0)
    unavailable = TransientServiceError("server error (HTTP 503)", http_status=503)
    with pytest.raises(TransientServiceError, match="503"):
        run(scripted([too_many(1.0), unavailable, "ok"], calls, fake.clock), fake, policy=policy)
    assert len(calls) == 2


def test_retries_and_waits_are_logged_without_the_message(caplog):
    fake, calls = FakeTime(), []
    secret = TransientServiceError("token good-token-0 in a message", http_status=503)
    caplog.set_level(logging.DEBUG, logger="qcourier.retry")
    attempt = scripted([too_many(2.0), secret, secret], calls, fake.clock)
    with pytest.raises(TransientServiceError):
        run(attempt, fake, policy=RetryPolicy(attempts=3, backoff_seconds=1.0, jitter_seconds=0))
    records = [r for r in caplog.records if r.name == "qcourier.retry"]
    lines = [r.getMessage() for r in records]
    assert lines[0] == ("status of job x: attempt 1 of 3 failed (TransientServiceError, HTTP "
                        "429); retrying in 2.00 s (Retry-After)")
    assert "status of job x: waiting 2.00 s at the rate gate" in lines
    assert ("status of job x: attempt 2 of 3 failed (TransientServiceError, HTTP 503); retrying "
            "in 2.00 s") in lines
    assert lines[-1] == ("status of job x: giving up after 3 attempt(s) (TransientServiceError, "
                         "HTTP 503): attempts spent")
    assert {r.levelname for r in records} == {"INFO", "DEBUG"}
    assert not any("good-token" in line for line in lines)


def test_the_retry_log_is_silent_by_default(capfd):
    fake, calls = FakeTime(), []
    assert run(scripted([too_many(1.0), "ok"], calls, fake.clock), fake) == "ok"
    assert capfd.readouterr().err == ""


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
    # One fake time line for the service's limiter, the gate and the retry loop: the limit is
    # checked on exactly the times the limiter admitted the calls at, with no wall clock.
    limit, calls = 20, 50
    fake = FakeTime()
    service = LocalService(LocalServiceConfig(root=tmp_path, rate_limit_per_second=limit))
    service._limiter = limiter = RecordingLimiter(limit, clock=fake.clock)
    gate = fake.gate()
    refused = []
    lock = threading.Lock()

    def call(_: int) -> float:
        def once() -> float:
            try:
                return service.usage().usage_seconds
            except TransientServiceError:
                with lock:
                    refused.append(1)
                raise

        return retry_call(lambda _: once(), what="usage", gate=gate, budget=CallTime(60),
                          policy=RetryPolicy(attempts=21, backoff_seconds=0.5, jitter_seconds=0.02),
                          deadline_error=lambda last: last,
                          timing=Timing(clock=fake.clock, sleep=fake.sleep))

    results = [value for _, value in map_unordered(call, range(calls), workers=8)]
    assert results == [0.0] * calls  # every call got through
    assert len(limiter.admitted) == calls and refused  # the limit was met and waited out
    assert len(refused) < 3 * calls  # backing off, not hammering
    # No window of one second saw more than `limit` calls.
    assert limiter.most_in_a_window() == limit
