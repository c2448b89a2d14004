"""Injected clocks for the tests, and waiting for an observed point instead of a guessed time.

- :class:`FakeTime`: a clock and a sleep that only moves it (thread-safe), for a
  :class:`~qcourier.services.workers.RateGate`, :func:`~qcourier.services.workers.retry_call`
  and a :class:`~qcourier.services.local.SlidingWindowLimiter` sharing one time line.
- :class:`HeldClock`: a gate's clock whose sleep records each wait and blocks until released.
- :class:`RecordingLimiter`: a sliding-window limiter that notes the time of every call it
  admits, read from its own clock.
- :func:`wait_until`: poll a condition in a bounded loop.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from qcourier.services.local import SlidingWindowLimiter
from qcourier.services.workers import RateGate


def wait_until(condition: Callable[[], object], timeout: float = 30.0) -> bool:
    """Whether ``condition()`` became true within ``timeout`` seconds (polled)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


class FakeTime:
    """A clock and a sleep that only move the clock: ``sleep(d)`` returns at once, ``d``
    later on the clock. Thread-safe, so threads sharing a RateGate on it see one monotonic
    time line (a sleep moves it for every thread)."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []
        self._lock = threading.Lock()

    def clock(self) -> float:
        with self._lock:
            return self.now

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.sleeps.append(round(seconds, 6))
            self.now += seconds

    def gate(self) -> RateGate:
        return RateGate(clock=self.clock, sleep=self.sleep)


class HeldClock:
    """A rate gate's clock and sleep that move only when the test says: ``sleep(d)`` records
    who waits and for how long, blocks until :attr:`release` is set, then moves the clock
    on by ``d``. So a test sees every wait at a gate, at the point it starts, and reads no
    wall clock."""

    def __init__(self) -> None:
        self.now = 0.0
        self.waits: list[tuple[str, float]] = []
        self.release = threading.Event()
        self._changed = threading.Condition()

    def clock(self) -> float:
        with self._changed:
            return self.now

    def sleep(self, seconds: float) -> None:
        with self._changed:
            self.waits.append((threading.current_thread().name, seconds))
            self._changed.notify_all()
        assert self.release.wait(30), "the test never released the gate"
        with self._changed:
            self.now += seconds

    def gate(self) -> RateGate:
        return RateGate(clock=self.clock, sleep=self.sleep)

    def waiting(self, thread: str, timeout: float = 10.0) -> list[float]:
        """The waits ``thread`` began, once it began one (``[]`` if none within ``timeout``)."""
        def found() -> list[float]:
            return [s for name, s in self.waits if name == thread]

        with self._changed:
            self._changed.wait_for(found, timeout)
            return found()


class RecordingLimiter(SlidingWindowLimiter):
    """A :class:`SlidingWindowLimiter` that notes, in :attr:`admitted`, the time of every
    call it admits: its own clock's reading when it admitted the call, so a test checks the
    window on exactly the times the limiter decided on."""

    def __init__(self, per_second: float, clock: Callable[[], float]):
        self._read = threading.local()

        def reading() -> float:
            self._read.now = clock()
            return self._read.now

        super().__init__(per_second, clock=reading)
        self.admitted: list[float] = []
        self._noted = threading.Lock()

    def admit(self) -> float | None:
        wait = super().admit()
        if wait is None:
            with self._noted:
                self.admitted.append(self._read.now)
        return wait

    def most_in_a_window(self) -> int:
        """The most admitted calls in any window of the limiter's length, by its own rule (a
        call at ``t`` counts those admitted in ``(t - window, t]``)."""
        times = sorted(self.admitted)
        return max((sum(1 for s in times if t - self.window < s <= t) for t in times), default=0)
