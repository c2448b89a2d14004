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
- :class:`RateGate` and :func:`call_with_backoff`: when a service answers 429 ("too many
  requests"), every thread waits until the time it named has passed, instead of each
  retrying on its own and keeping the service overloaded.

No click and no qiskit here: the core and the service adapters both use this module.
"""

from __future__ import annotations

import itertools
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from enum import Enum
from queue import SimpleQueue
from typing import Any, Generic, TypeVar

from qcourier.services.base import TransientServiceError

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
            _POOL.submit(lambda item=item: func(item), workers, finished.put, tag=item)
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


def is_rate_limited(error: BaseException) -> bool:
    """Whether ``error`` is a service's HTTP 429 ("too many requests")."""
    return isinstance(error, TransientServiceError) and error.http_status == 429


def call_with_backoff(gate: RateGate, func: Callable[[], R], *, retries: int | None = None,
                      max_wait: float = 120.0, base_delay: float = 0.5,
                      max_delay: float = 60.0) -> R:
    """``func()`` once ``gate`` is open; on HTTP 429, hold the gate and try again.

    The gate is held for the error's ``retry_after`` when the service named one, else for
    ``base_delay`` doubled on each attempt, at most ``max_delay``. Threads released together
    by the gate start a few milliseconds apart, at random, so they do not all meet the limit
    again at once. Only 429 is retried: other transient failures are the caller's to handle
    ("poll again next time").

    Args:
        gate: shared by every thread calling the same service.
        func: the call.
        retries: how many times a 429 is retried before it is raised; ``None``: as many as
            fit in ``max_wait`` seconds (with several threads sharing a limit, one thread can
            lose the race for a freed slot many times in a row).
        max_wait: with ``retries=None``, how long to keep retrying (seconds).
        base_delay: the first back-off when the service named no delay (seconds).
        max_delay: the longest back-off honoured (seconds).

    Raises:
        TransientServiceError: still 429 after the retries or ``max_wait``.
        Exception: whatever else ``func`` raised.
    """
    deadline = time.monotonic() + max_wait
    attempt = 0
    while True:
        if gate.wait() > 0:
            time.sleep(random.uniform(0.0, 0.02))
        try:
            return func()
        except TransientServiceError as err:
            out_of_tries = (attempt >= retries if retries is not None
                            else time.monotonic() >= deadline)
            if not is_rate_limited(err) or out_of_tries:
                raise
            delay = err.retry_after if err.retry_after is not None else base_delay * 2**min(attempt, 10)
            gate.back_off(min(delay, max_delay))
            attempt += 1
