"""The budget lease: one object per service and key in the team store, held by the one
process, on any machine, that is deciding and making a submission for that key.

``leases/<service>/<key>.json`` (``<key>`` is the key's index, or ``local``) says who holds
it (command, pid, host and a random token), when it was taken and renewed (the holder's
clock, for people to read) and ``ttl_seconds``: how long it stays valid after each write.

- **Acquire**: create it with ``If-None-Match: *``; only one creator wins. If it exists
  and is valid, wait (polling every second, up to a bound) or give up with
  :class:`LeaseBusy`, saying who holds it.
- **Stale**: an object not rewritten for longer than its ``ttl_seconds`` (at most
  :data:`MAX_LEASE_SECONDS`; an unreadable one counts as the maximum) belongs to a holder
  that died. Its age is measured on the *server's* clock (:class:`AgedObject`: the
  answer's ``Date`` minus the object's ``Last-Modified``), and, failing that, as how long
  this process has seen the same ETag, so no client's clock is compared with another's.
  It is taken over with ``If-Match`` on the stale ETag: of two contenders, one wins.
- **Renew**: the holder counts the lease valid until its ttl, less a margin of
  :data:`MARGIN_SECONDS`, after the moment it *sent* its last successful write, so it
  stops believing in it before any contender can see it stale. While held, a thread
  rewrites it (``If-Match`` on the holder's last ETag) every third of that validity.
  :meth:`Lease.confirm` raises :class:`LeaseLost` when another took it over or less than
  half the validity is left (renewals failing): call it before each spending act.
- **Release**: delete it with ``If-Match`` on the holder's ETag: only the holder can.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from qcourier.store.objects import StoreError, StoreLocation, check_key_part

if TYPE_CHECKING:
    from qcourier.config import Settings
    from qcourier.store.objects import AgedObject, ObjectStore

LEASES = "leases"
DEFAULT_LEASE_SECONDS = 120.0
#: The shortest and longest ttl of a lease; an unreadable lease object is stale after the
#: longest.
MIN_LEASE_SECONDS = 5.0
MAX_LEASE_SECONDS = 300.0
#: How long a contender waits at most: enough to outlast any holder that died.
WAIT_SECONDS = MAX_LEASE_SECONDS + 30.0
POLL_SECONDS = 1.0
#: ``Date`` and ``Last-Modified`` are whole seconds: an age is known to about 1 s.
MARGIN_SECONDS = 2.0


class LeaseBusy(StoreError):
    """Another holder keeps the lease longer than this process may wait."""


class LeaseLost(StoreError):
    """The lease was taken over, or could not be renewed in time: stop spending."""


def lease_key(service: str, key_index: int | None) -> str:
    """The lease object of a service's key (below the store's prefix)."""
    which = "local" if service == "local" or key_index is None else str(key_index)
    return f"{LEASES}/{check_key_part(service, 'service name')}/{which}.json"


def key_label(service: str, key_index: int | None) -> str:
    """``local`` or ``ibm key N``, as budget messages name a key."""
    return service if service == "local" or key_index is None else f"{service} key {key_index}"


@dataclass(frozen=True)
class Holder:
    """Who holds a lease: a command, its pid and host, the ledger's writer id in the team
    store, and a token no one else has."""

    command: str
    pid: int
    host: str
    writer: str | None
    token: str

    @classmethod
    def here(cls, command: str, writer: str | None = None) -> Holder:
        return cls(command, os.getpid(), socket.gethostname(), writer, secrets.token_hex(8))


class Lease:
    """The budget lease of one service's key, as one process sees and holds it.

    Args:
        store: the team store.
        service, key_index: whose budget (``key_index`` None: the local service).
        ttl: how long each write keeps it valid, in seconds (at most
            :data:`MAX_LEASE_SECONDS`).
        command, writer: the holder's command and its ledger's writer id, for the message
            others see.
        clock: a monotonic clock; ``sleep`` waits.
    """

    def __init__(self, store: ObjectStore, service: str, key_index: int | None, *,
                 ttl: float = DEFAULT_LEASE_SECONDS, command: str = "qcourier",
                 writer: str | None = None, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep):
        self.store = store
        self.key = lease_key(service, key_index)
        self.label = key_label(service, key_index)
        self.ttl = min(max(float(ttl), MIN_LEASE_SECONDS), MAX_LEASE_SECONDS)
        self.holder = Holder.here(command, writer)
        self._clock, self._sleep = clock, sleep
        self._etag: str | None = None
        self._valid_until = 0.0
        self._renewals = 0
        self._acquired = datetime.now(UTC)
        self._lost: str | None = None
        self._seen: tuple[str, float] | None = None  # (ETag, when first seen) of another's
        self._mutex = threading.Lock()
        #: Whose stale lease :meth:`acquire` took over, if it did (for a message).
        self.took_over: str | None = None

    # -- acquire -----------------------------------------------------------------------------

    def acquire(self, wait: float = WAIT_SECONDS,
                on_wait: Callable[[str], None] = lambda _: None) -> None:
        """Take the lease, waiting up to ``wait`` seconds for its holder (``on_wait`` is
        told once, in one line, whom this process waits for).

        Raises:
            LeaseBusy: it is still held by another after ``wait`` seconds.
            StoreError: the store cannot be used (:class:`StoreUnavailable`: not reached).
        """
        deadline = self._clock() + wait
        announced = False
        while True:
            holder = self._try_once()
            if holder is None:
                return
            left = deadline - self._clock()
            if left <= 0:
                raise LeaseBusy(f"{self.label}: the budget lease in store {self.store.location} "
                                f"is held by {holder}; gave up after {wait:.0f} s")
            if not announced:
                on_wait(f"{self.label}: waiting up to {wait:.0f} s for the budget lease in "
                        f"store {self.store.location}, held by {holder}")
                announced = True
            self._sleep(min(POLL_SECONDS, left))

    def _try_once(self) -> str | None:
        """Take the lease if it is free or stale: None, else who holds it."""
        for _ in range(3):  # a lease released between our create and our read: try again
            sent = self._clock()
            body = self._body(acquired=True)
            if self.store.put_new(self.key, body):
                mine = self.store.get_aged(self.key)  # its ETag, for renewing and releasing
                if mine is not None and self.holder.token.encode() in mine.data:
                    self._hold(mine.etag, sent)
                    return None
            found = self.store.get_aged(self.key)
            if found is None:
                continue
            holder, ttl = _describe(found.data)
            if not self._is_stale(found, ttl):
                return holder
            etag = self.store.put_if_match(self.key, body, found.etag)
            if etag is not None:
                self.took_over = holder
                self._hold(etag, sent)
                return None
        return "another holder (it changed hands while this process looked)"

    def _is_stale(self, found: AgedObject, ttl: float) -> bool:
        """Whether ``found`` was not rewritten for longer than ``ttl`` (server's clock, or
        how long this process has seen the same ETag)."""
        now = self._clock()
        if self._seen is None or self._seen[0] != found.etag:
            self._seen = (found.etag, now)
        unchanged = now - self._seen[1]
        age = found.age_seconds if found.age_seconds is not None else 0.0
        return max(age, unchanged) > ttl + MARGIN_SECONDS

    def _hold(self, etag: str, sent: float) -> None:
        with self._mutex:
            self._etag, self._lost, self._seen = etag, None, None
            self._valid_until = sent + self.valid_for

    @property
    def valid_for(self) -> float:
        """How long after sending a successful write the holder counts on the lease: its ttl
        less the margin a contender's reading of its age may err by."""
        return self.ttl - MARGIN_SECONDS

    def _body(self, acquired: bool = False) -> bytes:
        now = datetime.now(UTC)
        if acquired:
            self._acquired, self._renewals = now, 0
        return json.dumps({
            "holder": {"command": self.holder.command, "pid": self.holder.pid,
                       "host": self.holder.host, "writer": self.holder.writer,
                       "token": self.holder.token},
            "key": self.label, "ttl_seconds": self.ttl,
            "acquired": self._acquired.isoformat(timespec="seconds"),
            "renewed": now.isoformat(timespec="milliseconds"), "renewals": self._renewals,
            "expires": (now + timedelta(seconds=self.ttl)).isoformat(timespec="seconds"),
        }, sort_keys=True).encode()

    # -- while held --------------------------------------------------------------------------

    def renew(self) -> bool:
        """Rewrite the lease, extending it by its ttl; whether it is still held.

        A store that cannot be reached leaves it held until its time runs out; a lease that
        another took over (or that vanished) is lost for good.
        """
        with self._mutex:
            if self._etag is None or self._lost is not None:
                return False
            sent = self._clock()
            self._renewals += 1
            try:
                etag = self.store.put_if_match(self.key, self._body(), self._etag)
            except StoreError:
                return self._clock() < self._valid_until
            if etag is None:
                self._lost = "taken over by another holder"
                return False
            self._etag, self._valid_until = etag, sent + self.valid_for
            return True

    def confirm(self) -> None:
        """Check that the lease is held with at least half its validity to run (renewals
        every third of it keep it above that while the store answers).

        Raises:
            LeaseLost: it is not (taken over, released, or its renewals failed).
        """
        left = self._valid_until - self._clock()
        if self._etag is None or self._lost is not None or left < self.valid_for / 2:
            why = self._lost or ("not held" if self._etag is None else
                                 f"not renewed for {self.valid_for - left:.0f} s")
            raise LeaseLost(f"{self.label}: lost the budget lease in store "
                            f"{self.store.location} ({why}); stopped before spending more")

    @contextmanager
    def renewed(self) -> Iterator[Lease]:
        """Renew the lease every third of its validity (in a thread) while the block runs."""
        stop = threading.Event()

        def keep() -> None:
            while not stop.wait(self.valid_for / 3):
                if not self.renew() and self._lost is not None:
                    return

        thread = threading.Thread(target=keep, name=f"lease {self.key}", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            stop.set()
            thread.join()

    def release(self) -> bool:
        """Delete the lease if this process still holds it; whether it did. Never raises: a
        lease that cannot be deleted now expires by itself after its ttl."""
        with self._mutex:
            etag, self._etag = self._etag, None
            if etag is None or self._lost is not None:
                return False
            try:
                return self.store.delete_if_match(self.key, etag)
            except StoreError:
                return False


def _describe(data: bytes) -> tuple[str, float]:
    """Who holds a lease, in words, and the ttl it states (an unreadable one: the maximum)."""
    try:
        body = json.loads(data)
        holder = body["holder"]
        who = f"{holder['command']} pid {int(holder['pid'])} on {holder['host']}"
        if holder.get("writer"):
            who += f" (writer {holder['writer']})"
        ttl = min(max(float(body["ttl_seconds"]), 0.0), MAX_LEASE_SECONDS)
        since = str(body.get("acquired", "?")).replace("T", " ").replace("+00:00", " UTC")
    except (ValueError, TypeError, KeyError, AttributeError):
        return (f"an unreadable lease object (it counts as stale once {MAX_LEASE_SECONDS:.0f} s "
                "old)", MAX_LEASE_SECONDS)
    return f"{who} since {since}", ttl


class TeamLease:
    """How one run takes budget leases: the store (connected on first use: a run that never
    takes a lease never imports boto3), the ttl, and the command named as holder."""

    def __init__(self, location: StoreLocation, *, ttl: float = DEFAULT_LEASE_SECONDS,
                 timeout: float = 10.0, command: str = "qcourier",
                 wait: float = WAIT_SECONDS, workers: int = 8):
        self.location = location
        self.ttl, self.timeout, self.command, self.wait = ttl, timeout, command, wait
        self.workers = workers
        #: Set once the store could not be reached in this run: no further attempt is made.
        self.unreachable = False
        self._store: ObjectStore | None = None

    @classmethod
    def from_settings(cls, settings: Settings, command: str) -> TeamLease | None:
        """The team store's leases as the settings configure them; None without a store.

        Raises:
            UsageError: ``QCOURIER_STORE`` or ``QCOURIER_S3_ENDPOINT`` is malformed.
        """
        if not settings.store:
            return None
        return cls(StoreLocation.parse(settings.store, settings.s3_endpoint),
                   ttl=settings.lease_seconds, timeout=settings.store_timeout_seconds,
                   command=command, workers=settings.store_workers)

    @property
    def store(self) -> ObjectStore:
        if self._store is None:
            from qcourier.store.objects import ObjectStore

            self._store = ObjectStore(self.location, timeout=self.timeout)
        return self._store

    def lease(self, service: str, key_index: int | None, writer: str | None = None) -> Lease:
        return Lease(self.store, service, key_index, ttl=self.ttl, command=self.command,
                     writer=writer)

