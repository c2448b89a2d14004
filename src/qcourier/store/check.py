"""``qcourier store check``: is every object in the team store whole, and is every object a
ledger line refers to there?

First it tries, on a probe object of its own (written and deleted), that the server honours
the conditional writes everything else relies on. Then it reads everything below the
store's prefix (it changes nothing there): each segment must be the
whole lines of ledger records its key's byte range says (this machine's own also the same
bytes as its local file); each blob must hash to its key; each blob a line refers to
(result, circuits through their ref, snapshot) must be there. Each problem is one line, by
key.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass, field

from qcourier.ledger.store import Ledger
from qcourier.store.objects import ObjectStore, StoredObject, StoreError
from qcourier.store.sync import (
    SHA256_PATTERN,
    BLOBS,
    CIRCUIT_REFS,
    DEFAULT_WORKERS,
    SEGMENTS,
    BlobRef,
    Progress,
    Segment,
    not_ledger_lines,
    run_all,
    blobs_of,
)


@dataclass
class StoreCheck:
    """What ``check_store`` found: objects read, and one line per problem."""

    segments: int = 0
    blobs: int = 0
    refs: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return 1 if self.problems else 0


def check_store(ledger: Ledger, store: ObjectStore, *, workers: int = DEFAULT_WORKERS,
                progress: Progress | None = None) -> StoreCheck:
    """Check every object of the store (see the module).

    Raises:
        StoreError: the store cannot be used (unreachable, refused).
    """
    report = StoreCheck()
    conditional = store.conditional_writes_problem()
    if conditional is not None:
        report.problems.append(conditional)
    listing = {item.key: item for item in store.list("") if not item.key.startswith("probe/")}
    lock = threading.Lock()
    referred: dict[str, tuple[BlobRef, str]] = {}
    own = ledger.writer_id()

    def segment(item: StoredObject) -> None:
        problem, refs = _check_segment(ledger, store, item, own)
        with lock:
            report.segments += 1
            if problem:
                report.problems.append(problem)
            for blob in refs:
                referred.setdefault(blob.id, (blob, item.key))

    def blob(item: StoredObject) -> None:
        problem = _check_blob(store, item)
        with lock:
            report.blobs += item.key.startswith(BLOBS)
            report.refs += item.key.startswith(CIRCUIT_REFS)
            if problem:
                report.problems.append(problem)

    segments = [i for i in listing.values() if i.key.startswith(SEGMENTS)]
    others = [i for i in listing.values() if not i.key.startswith(SEGMENTS)]
    for _ in run_all(segment, segments, workers, "checking segments", progress):
        pass
    for _ in run_all(blob, others, workers, "checking blobs", progress):
        pass
    for blob_ref, referrer in referred.values():
        if blob_ref.key not in listing:
            report.problems.append(f"missing object {blob_ref.key!r} (referred to by "
                                   f"{referrer})")
    report.problems.sort()
    return report


def _check_segment(ledger: Ledger, store: ObjectStore, item: StoredObject,
                   own: str | None) -> tuple[str | None, list[BlobRef]]:
    try:
        segment = Segment.parse(item.key)
    except StoreError as exc:
        return str(exc).removesuffix("; skipped"), []
    found = store.get(item.key)
    if found is None:
        return f"object {item.key!r} vanished while checked", []
    data = found[0]
    reason = not_ledger_lines(data, segment.end - segment.start)
    if reason:
        return f"{reason} object {item.key!r} (not the whole ledger lines its name says)", []
    if segment.writer == own:
        local = ledger.directory / segment.name
        try:
            with open(local, "rb") as fh:
                fh.seek(segment.start)
                mine = fh.read(segment.end - segment.start)
        except OSError:
            mine = None
        if mine is not None and len(mine) == len(data) and mine != data:
            return f"damaged object {item.key!r}: not the bytes of {local}", []
    return None, blobs_of(data)


def _check_blob(store: ObjectStore, item: StoredObject) -> str | None:
    name = item.key.rpartition("/")[2]
    if item.key.startswith(BLOBS) or item.key.startswith(CIRCUIT_REFS):
        if not SHA256_PATTERN.fullmatch(name) or item.key.count("/") != 2:
            return f"foreign object {item.key!r}: not named by a sha256"
    else:
        return None  # not sync's (the budget lease, ...): its owner checks it
    found = store.get(item.key)
    if found is None:
        return f"object {item.key!r} vanished while checked"
    if item.key.startswith(BLOBS):
        if hashlib.sha256(found[0]).hexdigest() != name:
            return f"damaged object {item.key!r}: its sha256 does not match its name"
        return None
    target = found[0].decode("ascii", "replace").strip()
    if not SHA256_PATTERN.fullmatch(target):
        return f"damaged object {item.key!r}: not the sha256 of a blob"
    if store.head(f"{BLOBS}{target}") is None:
        return f"missing object '{BLOBS}{target}' (referred to by {item.key})"
    return None
