"""Concurrent calls to a service: long-lived worker threads, and backing off on HTTP 429.

- :class:`WorkerPool` runs calls on daemon threads that live as long as the process. Threads
  are made lazily, up to the largest size ever asked for, and are never torn down (except one
  abandoned to a call that timed out, which ends once that call returns). Long-lived, not a
  thread per call or per run: qiskit's compiled core (its mimalloc allocator) has crashed
  when threads were created and torn down call after call, and ``qcollect --watch`` polls
  every few seconds for weeks. Daemon, not a ``ThreadPoolExecutor``: a call stuck on a hung
  socket must not keep the process from exiting.
- :func:`map_unordered` runs a function over many items on the process-wide pool, at most
  ``workers`` at once, yielding each result as it completes.
- :class:`RateGate`: when a service answers 429 ("too many requests"), every thread waits
  until the time it named has passed, instead of each retrying on its own and keeping the
  service overloaded. One gate per service.
- :class:`RetryPolicy` and :func:`retry_call`: the one retry loop a service call goes
  through (the IBM adapter runs every call in it; the collector runs a service that does not
  retry on its own, the local one, in it), driven by tenacity. Each back-off and retry is
  logged on the ``qcourier.retry`` logger (INFO; waits at a gate DEBUG), silent unless the
  application configures logging.

No click and no qiskit here: the core and the service adapters both use this module.
"""

from __future__ import annotations

import functools
import itertools
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from enum import Enum
from queue import SimpleQueue
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from qcourier.services.base import (
    CallTime,
    DeadlineExceededError,
    ServiceError,
    TransientServiceError,
)

if TYPE_CHECKING:
    from tenacity import RetryCallState

T = TypeVar("T")
R = TypeVar("R")

DEFAULT_WORKERS = 8

#: Held around simulation and analysis (stim, Aer, PyMatching): they run one at a time in a
#: process. stim 1.16 deadlocks when several threads first use it at once (it imports numpy
#: from C++ while holding the GIL; seen under a concurrent collector), and the work is
#: CPU-bound, so running it in parallel threads would gain little.
CPU_LOCK = threading.Lock()

# Which pool, if any, the current thread serves: a call into the same pool from one of its
# own threads runs inline, since waiting for a thread of that pool could wait forever.
_current = threading.local()


class _TaskState(Enum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    CANCELLED = "cancelled"  # timed out before any thread took it: it never runs
    ABANDONED = "abandoned"  # timed out while running: its thread leaves the pool


class _Task(Generic[R]):
    __slots__ = ("func", "done", "value", "error", "state", "worker", "on_done", "tag")

    def __init__(self, func: Callable[[], R], on_done: Callable[[_Task[R]], None] | None = None,
                 tag: Any = None):
        self.func = func
        self.done = threading.Event()
        self.value: R | None = None
        self.error: BaseException | None = None
        self.state = _TaskState.QUEUED
        self.worker: _Worker | None = None
        self.on_done = on_done
        self.tag = tag


class _Worker:
    __slots__ = ("retired",)

    def __init__(self) -> None:
        self.retired = False


class WorkerPool:
    """Long-lived daemon threads fed by one queue (see the module docstring).

    Args:
        name: the threads' name prefix (seen in tracebacks and thread dumps).
    """

    def __init__(self, name: str):
        self.name = name
        self._queue: SimpleQueue[_Task[Any]] = SimpleQueue()
        self._lock = threading.Lock()
        self._size = 0      # the most threads ever asked for
        self._usable = 0    # threads serving the queue (abandoned ones are not counted)
        self._idle = 0      # of those, how many wait for a task
        self._queued = 0    # tasks put and not yet taken
        self._numbers = itertools.count(1)

    @property
    def threads(self) -> int:
        """How many threads serve the pool now (abandoned ones excluded)."""
        with self._lock:
            return self._usable

    def serves_current_thread(self) -> bool:
        """Whether the calling thread is one of this pool's."""
        return getattr(_current, "pool", None) is self

    def submit(self, func: Callable[[], R], size: int,
               on_done: Callable[[_Task[R]], None] | None = None, tag: Any = None) -> _Task[R]:
        """Queue ``func()``; the pool grows to ``size`` threads if it has fewer and needs them.

        ``on_done(task)`` is called on the worker thread once the task has a value or error.
        """
        task = _Task(func, on_done, tag)
        with self._lock:
            self._size = max(self._size, size)
            self._queued += 1
            # A new thread only when the queued tasks outnumber the idle threads: a pool used
            # by one caller at a time stays at one thread.
            if self._queued > self._idle and self._usable < self._size:
                self._start_thread()
        self._queue.put(task)
        return task

    def call(self, func: Callable[[], R], timeout: float, size: int) -> R:
        """``func()`` on a pool thread, waited for at most ``timeout`` seconds.

        A call that times out while running is abandoned to its thread, which leaves the pool
        (a fresh thread replaces it; the pool never has more than ``size`` usable threads); a
        call that timed out before any thread took it never runs.

        Raises:
            TimeoutError: no answer within ``timeout`` seconds.
            BaseException: whatever ``func`` raised.
        """
        if self.serves_current_thread():
            return func()
        task = self.submit(func, size)
        if not task.done.wait(timeout) and self._abandon(task):
            raise TimeoutError
        if task.error is not None:
            raise task.error
        return task.value  # type: ignore[return-value]

    def _abandon(self, task: _Task[Any]) -> bool:
        """Give up on a task that timed out; False if it finished meanwhile."""
        with self._lock:
            if task.state is _TaskState.QUEUED:
                task.state = _TaskState.CANCELLED
                return True
            if task.state is _TaskState.RUNNING:
                task.state = _TaskState.ABANDONED
                if task.worker is not None:  # a running task always has its worker
                    task.worker.retired = True
                self._usable -= 1
                if self._queued > self._idle and self._usable < self._size:
                    self._start_thread()
                return True
            return False

    def _start_thread(self) -> None:
        # Called with the lock held.
        worker = _Worker()
        self._usable += 1
        thread = threading.Thread(target=self._serve, args=(worker,), daemon=True,
                                  name=f"{self.name}-{next(self._numbers)}")
        thread.start()

    def _serve(self, worker: _Worker) -> None:
        _current.pool = self
        while True:
            with self._lock:
                self._idle += 1
            task = self._queue.get()
            with self._lock:
                self._idle -= 1
                self._queued -= 1
                if task.state is _TaskState.CANCELLED:
                    continue
                task.state = _TaskState.RUNNING
                task.worker = worker
            try:
                task.value = task.func()
            except BaseException as exc:  # handed to the caller's thread
                task.error = exc
            with self._lock:
                if task.state is _TaskState.RUNNING:
                    task.state = _TaskState.DONE
                retired = worker.retired
            task.done.set()
            if task.on_done is not None:
                task.on_done(task)
            if retired:  # a replacement already serves the queue
                return


_POOL = WorkerPool("qcourier-worker")


def map_unordered(func: Callable[[T], R], items: Iterable[T],
                  workers: int = DEFAULT_WORKERS) -> Iterator[tuple[T, R | BaseException]]:
    """``func(item)`` for every item, at most ``workers`` at once, as they complete.

    Yields ``(item, result)``, or ``(item, exception)`` when ``func`` raised: one failure never
    stops the others. The calls run on a process-wide pool of long-lived threads that grows
    to the largest ``workers`` asked for and is reused by every later call. ``workers=1``
    runs the calls one after another, in order, on the calling thread; so does a call made
    from one of the pool's own threads (a nested map). Items are taken from ``items`` only as
    workers free up. If the caller stops iterating early, no more calls start; those running
    finish in the background and their results are dropped.

    Args:
        func: called once per item, from a pool thread (it must be thread-safe).
        items: the inputs.
        workers: the most calls in flight at once (at least 1).
    """
    if workers <= 1 or _POOL.serves_current_thread():
        for item in items:
            try:
                yield item, func(item)
            except Exception as exc:  # reported with its item, like a pooled call's
                yield item, exc
        return
    finished: SimpleQueue[_Task[R]] = SimpleQueue()
    pending = iter(items)
    in_flight = 0

    def start_next() -> bool:
        for item in pending:
            _POOL.submit(functools.partial(func, item), workers, finished.put, tag=item)
            return True
        return False

    while in_flight < workers and start_next():
        in_flight += 1
    while in_flight:
        task = finished.get()
        in_flight -= 1
        if start_next():
            in_flight += 1
        yield task.tag, (task.error if task.error is not None else task.value)  # type: ignore[misc]


class RateGate:
    """The earliest time calls to one service may go out again (thread-safe).

    A thread that gets HTTP 429 calls :meth:`back_off`; every thread calls :meth:`wait`
    before each call, so the whole process waits out the service's ``Retry-After`` together.

    Args:
        clock: a monotonic clock (for tests).
        sleep: how to wait (for tests).
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep):
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._open_at = float("-inf")

    def remaining(self) -> float:
        """Seconds until calls may go out (0 when they may now)."""
        with self._lock:
            return max(0.0, self._open_at - self._clock())

    def wait(self) -> float:
        """Block until calls may go out; return the seconds waited."""
        waited = 0.0
        while True:
            delay = self.remaining()
            if delay <= 0:
                return waited
            # Sleep, then look again: another thread may have pushed the time further.
            self._sleep(delay)
            waited += delay

    def back_off(self, seconds: float) -> None:
        """Hold every call for ``seconds`` from now (never brings the time earlier)."""
        with self._lock:
            self._open_at = max(self._open_at, self._clock() + max(0.0, seconds))



#: Every back-off and retry of a service call: INFO for a retry and a give-up, DEBUG for a
#: wait at a rate gate that another call closed. Nothing here names a token: only the call
#: ("status of job x"), the attempt, the wait, the HTTP status and the error's type.
retry_log = logging.getLogger("qcourier.retry")


@dataclass(frozen=True)
class RetryPolicy:
    """Which failed service calls are tried again, how often, and after how long.

    The one policy of qcourier's one retry loop (:func:`retry_call`), driven by tenacity
    rather than stamina: the loop needs a stop that reads a shared, per-scope time budget
    (``QCOURIER_IBM_DEADLINE``), a wait taken from the failure (``Retry-After``) and, for a
    429, spent at a gate shared by every thread; tenacity's stop, wait, sleep and hook
    callables give exactly that, where stamina (built on tenacity) fixes its own backoff and
    wall-clock timeout per call.

    Retried: a :class:`TransientServiceError` — HTTP 429, 5xx, a connection that failed, a
    call that timed out — but not a spent deadline; with ``statuses``, only those HTTP
    statuses. A call that is not idempotent (a submission) is retried only after a failure
    that proves nothing was done (``nothing_done``: a 429, a connection never made, a failed
    request before the POST): after a 5xx or a timeout of the POST the job may exist, and a
    retry could make a second one. Never retried: 401/403 and every other 4xx (plain
    :class:`ServiceError` and :class:`~qcourier.services.base.AuthenticationError`).

    The wait before a retry is the failure's ``retry_after`` when the service named one, else
    ``backoff_seconds`` doubled on each retry plus up to ``jitter_seconds`` at random; either
    at most ``max_wait_seconds``. A 429's wait is spent at the service's :class:`RateGate`,
    which holds every thread calling that service; the threads it releases together start
    up to ``jitter_seconds`` apart, so they do not all meet the limit again at once.

    Attributes:
        attempts: the most attempts in all, the first one included; ``None``: as many as
            the time budget allows (threads sharing a rate limit can lose the race for a
            freed slot many times in a row).
        backoff_seconds: the first retry's wait when the service named none.
        max_wait_seconds: the longest wait, ``Retry-After`` included.
        jitter_seconds: the most random time added to a back-off, and between threads
            released by a gate.
        statuses: retry only failures with these HTTP statuses (``None``: every transient
            failure).
    """

    attempts: int | None = 4
    backoff_seconds: float = 1.0
    max_wait_seconds: float = 60.0
    jitter_seconds: float = 0.05
    statuses: frozenset[int] | None = None

    def retryable(self, error: BaseException, idempotent: bool = True) -> bool:
        """Whether ``error`` is worth another attempt under this policy."""
        if not isinstance(error, TransientServiceError) or isinstance(error, DeadlineExceededError):
            return False
        if self.statuses is not None and error.http_status not in self.statuses:
            return False
        return idempotent or error.nothing_done

    def wait_seconds(self, error: ServiceError, retry_state: RetryCallState) -> float:
        """The wait after ``error``: its ``retry_after``, else the jittered back-off."""
        if error.retry_after is not None:
            return min(error.retry_after, self.max_wait_seconds)
        from tenacity import wait_exponential, wait_random

        backoff = (wait_exponential(multiplier=self.backoff_seconds, max=self.max_wait_seconds)
                   + wait_random(0, self.jitter_seconds))
        return min(backoff(retry_state), self.max_wait_seconds)


@dataclass(frozen=True)
class Timing:
    """The clock a retry loop reads and how it waits: the real ones, or a test's.

    Attributes:
        clock: a monotonic clock.
        sleep: how to wait.
    """

    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep


def retry_call(func: Callable[[float], R], *, what: str, policy: RetryPolicy, gate: RateGate,
               budget: CallTime,
               deadline_error: Callable[[ServiceError | None], ServiceError],
               idempotent: bool = True, timing: Timing = Timing()) -> R:
    """``func(seconds_left)`` until it succeeds or ``policy`` says stop: the one retry loop.

    Each attempt first waits while ``gate`` is held (another thread's 429), then runs. A 429
    holds the gate for its wait (see :class:`RetryPolicy`), whether or not it is retried.
    Every attempt, gate wait and back-off is paid from ``budget``; the loop never waits past
    it, and once it is spent the call fails with ``deadline_error(last failure)``.

    Args:
        func: one attempt, given the seconds left in ``budget`` so it can bound itself. It
            raises a :class:`ServiceError` when it fails, or ``TimeoutError`` when it ran out
            of those seconds.
        what: the call, for the log ("status of job x").
        policy: which failures are retried, how often, and the waits.
        gate: the service's rate gate.
        budget: the time the call may take, shared by every call of the scope.
        deadline_error: the error raised when ``budget`` runs out, given the last failure.
        idempotent: whether a retry after an ambiguous failure is safe (a submission's is not).
        timing: the clock the loop reads and the sleep it waits with (for tests; ``gate``
            has its own).

    Raises:
        ServiceError: the last failure, once retries are spent or not allowed; or
            ``deadline_error(...)``.
    """
    from tenacity import Retrying, retry_if_exception, stop_after_attempt, stop_any, stop_never

    loop = _RetryLoop(func, what, policy, gate, budget, deadline_error, timing.sleep, timing.clock)
    attempts = stop_after_attempt(policy.attempts) if policy.attempts is not None else stop_never
    retrying = Retrying(
        retry=retry_if_exception(lambda error: policy.retryable(error, idempotent)),
        stop=stop_any(attempts, lambda _: budget.remaining() <= 0),  # type: ignore[arg-type]
        wait=loop.wait,
        sleep=loop.pause,
        before_sleep=loop.announce,
        retry_error_callback=loop.give_up,
    )
    try:
        return retrying(loop.attempt)
    except _OutOfTime:
        raise deadline_error(loop.last) from None


@dataclass
class _RetryLoop(Generic[R]):
    """The callbacks tenacity runs for one :func:`retry_call` (see there)."""

    func: Callable[[float], R]
    what: str
    policy: RetryPolicy
    gate: RateGate
    budget: CallTime
    deadline_error: Callable[[ServiceError | None], ServiceError]
    sleep: Callable[[float], None]
    clock: Callable[[], float]
    #: The latest failure, for the deadline's message.
    last: ServiceError | None = None

    def attempt(self) -> R:
        """One attempt: wait while the gate is held, then call, paying both from the budget."""
        budget, gate = self.budget, self.gate
        if budget.remaining() <= 0:
            raise _OutOfTime
        started = self.clock()
        try:
            held = gate.remaining()
            if held > 0:
                if held >= budget.remaining():  # the gate opens after the deadline
                    self.sleep(max(budget.remaining(), 0.0))
                    raise _OutOfTime
                retry_log.debug("%s: waiting %.2f s at the rate gate", self.what, held)
                if gate.wait() > 0:
                    self.sleep(random.uniform(0.0, self.policy.jitter_seconds))
            return self.func(max(budget.remaining() - (self.clock() - started), 0.0))
        except TimeoutError:  # the seconds left ran out
            raise _OutOfTime from None
        except ServiceError as error:
            self.last = error
            if error.http_status == 429:  # every thread of this service waits it out
                gate.back_off(min(error.retry_after if error.retry_after is not None
                                  else self.policy.backoff_seconds, self.policy.max_wait_seconds))
            raise
        finally:
            budget.spend(self.clock() - started)

    def wait(self, retry_state: RetryCallState) -> float:
        error = retry_state.outcome.exception()  # type: ignore[union-attr]
        if not isinstance(error, ServiceError) or error.http_status == 429:
            return 0.0  # a 429: the gate holds the next attempt (and every other thread's)
        return min(self.policy.wait_seconds(error, retry_state),
                   max(self.budget.remaining(), 0.0))

    def pause(self, seconds: float) -> None:
        if seconds > 0:
            self.sleep(seconds)
            self.budget.spend(seconds)

    def announce(self, retry_state: RetryCallState) -> None:
        error = retry_state.outcome.exception()  # type: ignore[union-attr]
        seconds = retry_state.next_action.sleep  # type: ignore[union-attr]
        if getattr(error, "http_status", None) == 429:
            seconds = max(seconds, self.gate.remaining())
        retry_log.info("%s: attempt %d of %s failed (%s, HTTP %s); retrying in %.2f s%s",
                       self.what, retry_state.attempt_number, self.policy.attempts or "unlimited",
                       type(error).__name__, getattr(error, "http_status", None), seconds,
                       " (Retry-After)" if getattr(error, "retry_after", None) is not None
                       else "")

    def give_up(self, retry_state: RetryCallState) -> R:
        error = retry_state.outcome.exception()  # type: ignore[union-attr]
        if not isinstance(error, ServiceError):  # only ServiceErrors are retried
            raise error  # type: ignore[misc]
        attempts = self.policy.attempts
        spent = attempts is not None and retry_state.attempt_number >= attempts
        retry_log.info("%s: giving up after %d attempt(s) (%s, HTTP %s): %s", self.what,
                       retry_state.attempt_number, type(error).__name__, error.http_status,
                       "attempts spent" if spent else "deadline reached")
        if spent:
            raise error
        raise self.deadline_error(error) from None


class _OutOfTime(Exception):
    """Inside :func:`retry_call`: the budget ran out before or during an attempt."""
