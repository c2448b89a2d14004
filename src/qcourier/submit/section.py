"""The key's critical section: where a submission decides, and spends, a key's budget.

One process at a time runs from the fold that the budget guard and the queue limits read to
the ledger line of the last job they let through — on this machine by the key's lock
(:func:`~qcourier.submit.dispatch.key_lock`), and, with a team store, on every machine by
the key's budget lease in the bucket (:mod:`qcourier.store.lease`), taken inside the lock
(so one process per machine asks the store). ``qsubmit`` waits for both; a ``qcollect``
draining its deferred queue takes neither if either is held, and leaves the job for later.

A store that cannot be reached means no lease, so nothing is submitted: another machine may
be spending the same budget, and a guard that saw only this machine's ledger could
overspend it. ``qsubmit --no-lease`` submits anyway, against this machine's ledger alone.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from qcourier.errors import QcourierError
from qcourier.ledger.store import Ledger
from qcourier.store.lease import key_label
from qcourier.store.objects import StoreError, StoreUnavailable
from qcourier.submit.dispatch import KEY_LOCK_TIMEOUT_SECONDS, key_lock

if TYPE_CHECKING:
    from filelock import FileLock

    from qcourier.store.lease import Lease, TeamLease


class KeyBusy(QcourierError):
    """Another process on this machine is submitting for the key."""


class LeaseUnavailable(StoreError):
    """The team store cannot be reached, so the key's budget lease cannot be taken."""


@dataclass
class Spending:
    """Inside the section: the lease held (None without a team store) and what to tell."""

    lease: Lease | None = None
    #: One line each: a stale lease taken over, a push that failed.
    notes: list[str] = field(default_factory=list)

    def confirm(self) -> None:
        """Call before each spending act (a submission).

        Raises:
            LeaseLost: the lease was lost (taken over, or not renewed in time).
        """
        if self.lease is not None:
            self.lease.confirm()


@contextmanager
def spending_section(ledger: Ledger, service: str, key_index: int | None, *,
                     team: TeamLease | None = None, wait: bool = True,
                     progress: Callable[[str], None] = lambda _: None) -> Iterator[Spending]:
    """Hold the key's lock and (with ``team``) its budget lease while the block runs.

    Args:
        wait: wait for another holder (saying so through ``progress``), up to
            :data:`KEY_LOCK_TIMEOUT_SECONDS` for the lock and the lease's own bound for the
            lease; False: do not wait at all.

    Raises:
        KeyBusy: the lock is held by another process (after waiting, if ``wait``).
        LeaseBusy: the lease is held by another holder (idem).
        LeaseUnavailable: the store cannot be reached, so the lease cannot be taken.
        StoreError: the store refuses (credentials, no such bucket).
    """
    label = key_label(service, key_index)
    lock = key_lock(ledger, service, key_index,
                    timeout=KEY_LOCK_TIMEOUT_SECONDS if wait else 0)
    _take(lock, label, wait, progress)
    try:
        if team is None:
            yield Spending()
        else:
            with _leased(ledger, service, key_index, team, wait, progress) as spending:
                yield spending
    finally:
        lock.release()


def _take(lock: FileLock, label: str, wait: bool, progress: Callable[[str], None]) -> None:
    from filelock import Timeout

    try:
        lock.acquire(timeout=0)
        return
    except Timeout:
        if not wait:
            raise KeyBusy(f"{label}: another process is submitting for this key") from None
    progress(f"{label}: waiting up to {lock.timeout:.0f} s for another qsubmit or qcollect "
             "submitting for this key")  # say why this run seems to hang, then wait
    try:
        lock.acquire()
    except Timeout:
        raise KeyBusy(f"{label}: another qsubmit or qcollect has been submitting for this "
                      f"key for {lock.timeout:.0f} s") from None


@contextmanager
def _leased(ledger: Ledger, service: str, key_index: int | None, team: TeamLease, wait: bool,
            progress: Callable[[str], None]) -> Iterator[Spending]:
    """Hold the key's lease: pull first (the guard sees what the team spent), push last
    (the next holder sees what this one spent), release."""
    lease = team.lease(service, key_index, writer=ledger.writer_id(create=True))
    if team.unreachable:  # once per run: a drain of many jobs does not wait out each
        raise _unreachable(lease, team)
    try:
        lease.acquire(team.wait if wait else 0.0, progress)
    except StoreUnavailable:
        team.unreachable = True
        raise _unreachable(lease, team) from None
    spending = Spending(lease)
    if lease.took_over:
        spending.notes.append(f"{lease.label}: took over the stale budget lease of "
                              f"{lease.took_over} (it was not renewed in time: its holder "
                              "died or lost the store)")
    try:
        with lease.renewed():
            _pull(ledger, team, lease, spending)
            try:
                yield spending
            finally:
                _push(ledger, team, spending)
    finally:
        lease.release()


def _pull(ledger: Ledger, team: TeamLease, lease: Lease, spending: Spending) -> None:
    from qcourier.store.sync import SYNC_LOCK_SECONDS, SyncBusy, pull

    try:
        result = pull(ledger, team.store, workers=team.workers)
    except SyncBusy:
        raise KeyBusy(f"{lease.label}: another sync of {ledger.directory} has held it for "
                      f"{SYNC_LOCK_SECONDS:.0f} s, so the team's ledger cannot be read") from None
    except StoreUnavailable:
        team.unreachable = True
        raise _unreachable(lease, team) from None
    spending.notes.extend(result.problems)


def _push(ledger: Ledger, team: TeamLease, spending: Spending) -> None:
    """Publish this section's lines; a failure is a note, never an error (they are in the
    local ledger, and the next push takes them)."""
    from qcourier.store.sync import push

    try:
        spending.notes.extend(push(ledger, team.store, workers=team.workers).problems)
    except QcourierError as exc:
        spending.notes.append(f"{exc}; the jobs just recorded reach the team's budget with the "
                              "next push (qcourier sync)")


def _unreachable(lease: Lease, team: TeamLease) -> LeaseUnavailable:
    return LeaseUnavailable(
        f"{lease.label}: store {team.location} cannot be reached, so neither the key's budget "
        "lease nor the team's ledger can be read, and another machine may be spending this "
        "budget")
