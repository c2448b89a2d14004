"""The team store at a command's edges: pull before reading the ledger, push after writing.

Local-first: the local ledger directory stays the source of truth on each machine, and a
command that syncs at its edges never fails because of the store. If the store cannot be
used — unreachable (no connection, a timeout, a 5xx) or refusing (credentials, no bucket) —
the command says so in one line naming the store (never a credential), works on the local
ledger, keeps its own exit code, and makes no further store call in that run; the next run
catches up. Only ``qcourier sync``, asked for by name, fails (exit 1) when the store cannot
be used. An object a pull skips (truncated, foreign, ...) is reported once at the edges,
the first time a command meets it.

With ``QCOURIER_STORE`` unset nothing here runs, and boto3 is never imported.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from qcourier.errors import QcourierError
from qcourier.store.objects import ObjectStore, StoreError, StoreLocation

if TYPE_CHECKING:
    from qcourier.ledger.store import Ledger
    from qcourier.store.sync import Progress, PullResult, PushResult

#: boto3's attempts per store call at a command's edge (its back-off between them).
EDGE_ATTEMPTS = 2


def store_of(settings: Any) -> ObjectStore | None:
    """The team store the settings name (``QCOURIER_STORE``), or None when none is set.

    Raises:
        UsageError: ``QCOURIER_STORE`` or ``QCOURIER_S3_ENDPOINT`` is malformed.
    """
    if not settings.store:
        return None
    location = StoreLocation.parse(settings.store, settings.s3_endpoint)
    return ObjectStore(location, timeout=settings.store_timeout_seconds,
                       attempts=EDGE_ATTEMPTS)


@dataclass
class EdgeSync:
    """One command's syncs with the team store (see the module).

    Attributes:
        store: the store, or None (none configured: every call does nothing).
        lock_timeout: how long a sync waits for another sync of the same ledger.
        workers: objects uploaded or downloaded at once.
        failed: why the store could not be used in this run (then no further call is made).
        warnings: one line per problem met (the store's failure, objects skipped).
    """

    store: ObjectStore | None
    lock_timeout: float = 30.0
    workers: int = 8
    failed: str | None = None
    warnings: list[str] = field(default_factory=list)

    def pull(self, ledger: Ledger, progress: Progress | None = None) -> PullResult | None:
        """Pull, unless no store is set or it already failed in this run."""
        from qcourier.store.sync import pull

        result = self._call(pull, ledger, progress, need_directory=False)
        if result is not None:
            self.warnings.extend(_not_reported_yet(ledger, result.problems))
        return result

    def push(self, ledger: Ledger, progress: Progress | None = None) -> PushResult | None:
        """Push, unless no store is set or it already failed in this run."""
        from qcourier.store.sync import push

        result = self._call(push, ledger, progress, need_directory=True)
        if result is not None:
            self.warnings.extend(result.problems)
        return result

    def _call(self, what: Any, ledger: Ledger, progress: Progress | None,
              need_directory: bool) -> Any:
        if self.store is None or self.failed is not None:
            return None
        if need_directory and not ledger.local_files():
            return None  # nothing written here: nothing to push
        try:
            return what(ledger, self.store, progress=progress, lock_timeout=self.lock_timeout,
                        workers=self.workers)
        except StoreError as exc:
            self.failed = str(exc)
            self.warnings.append(_local_first(str(exc)))
        except QcourierError as exc:  # this machine's side (the push state, a pulled file)
            self.failed = str(exc)
            self.warnings.append(f"team store sync skipped: {exc}; the next run tries again")
        return None

    def take_warnings(self) -> list[str]:
        """The warnings met so far (each once)."""
        taken, self.warnings = self.warnings, []
        return taken


def _local_first(message: str) -> str:
    """A store failure as a command at its edge reports it: it carries on locally."""
    if "working on the local ledger" in message:
        return message
    return f"{message}; working on the local ledger, the next run catches up"


#: The objects a pull at a command's edge skipped last time (derived; safe to delete).
REPORTED_FILE = "store/reported.json"


def _not_reported_yet(ledger: Ledger, problems: list[str]) -> list[str]:
    """The problems a previous pull at an edge did not report: an object skipped is reported
    once at the edges (a cron collector would repeat it every run), while it stays in the
    store; ``qcourier sync`` reports every one every time."""
    import json

    from qcourier.files import atomic_write_bytes

    path = ledger.directory / REPORTED_FILE
    try:
        known = set(json.loads(path.read_bytes()))
    except (OSError, ValueError, TypeError):
        known = set()
    if set(problems) != known:
        try:
            atomic_write_bytes(path, json.dumps(sorted(set(problems))).encode(), durable=False)
        except OSError:
            return problems  # cannot remember: report every time
    return [p for p in problems if p not in known]
