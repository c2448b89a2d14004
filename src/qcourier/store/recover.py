"""``qcourier recover --from-store``: rebuild a lost ledger directory from the team store.

The lost directory's writer id names its segments; concatenated in byte order they are its
ledger files again, byte for byte, so the directory takes up its writer id and its push state
says everything is pushed: nothing is uploaded again, nor differently. The blobs its lines
refer to are fetched (sha256-checked), then the other writers' segments are pulled as usual.
A directory that already holds ledger lines is never overwritten.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from qcourier.errors import UsageError
from qcourier.files import atomic_write_bytes
from qcourier.ledger.store import WRITER_PATTERN, Ledger
from qcourier.store.objects import ObjectStore, StoreError
from qcourier.store.sync import (
    DEFAULT_WORKERS,
    SEGMENTS,
    Downloader,
    Progress,
    PullResult,
    PushState,
    Segment,
    blobs_of,
    not_ledger_lines,
    pull,
    run_all,
    sync_lock,
)


@dataclass
class StoreRecovery:
    """What ``recover_from_store`` rebuilt.

    Attributes:
        writer: the writer id taken up.
        files: ledger files written again, by name, with their size in bytes.
        blobs: result, circuit and snapshot files fetched for them.
        pulled: the pull of the other writers that followed.
        problems: what could not be rebuilt (a gap in a file's segments, a damaged blob).
    """

    writer: str
    files: dict[str, int] = field(default_factory=dict)
    blobs: int = 0
    pulled: PullResult | None = None
    problems: list[str] = field(default_factory=list)


def writers_in(store: ObjectStore) -> dict[str, set[str]]:
    """Every writer with segments in the store, and the names of its ledger files."""
    found: dict[str, set[str]] = {}
    for item in store.list(SEGMENTS):
        try:
            segment = Segment.parse(item.key)
        except StoreError:
            continue
        found.setdefault(segment.writer, set()).add(segment.name)
    return found


def recover_from_store(ledger: Ledger, store: ObjectStore, writer: str | None = None, *,
                       workers: int = DEFAULT_WORKERS,
                       progress: Progress | None = None) -> StoreRecovery:
    """Rebuild ``ledger`` from the store (see the module).

    Args:
        writer: the lost directory's writer id; default: the directory's own, if it still has
            one, else the store's only writer.

    Raises:
        UsageError: the directory holds ledger lines, or no writer id was given and the store
            has none or several.
        StoreError: the store cannot be used.
    """
    if any(path.stat().st_size for path in ledger.local_files()):
        raise UsageError(f"refusing to recover into {ledger.directory}: it already holds "
                         "ledger files; give an empty or new --ledger-dir")
    writer = writer or ledger.writer_id() or _only_writer(store)
    if not WRITER_PATTERN.fullmatch(writer):
        raise UsageError(f"--writer {writer!r} is not a writer id (w and 16 hex digits)")
    ledger.set_writer_id(writer)
    report = StoreRecovery(writer)
    with sync_lock(ledger):
        chains = _chains(store, writer, report)
        downloader = Downloader(ledger, store, PullResult())
        for name, data, problem in run_all(lambda item: _assemble(store, *item),
                                           chains.items(), workers, "downloading own segments",
                                           progress):
            if problem:
                report.problems.append(problem)
            if data:
                atomic_write_bytes(ledger.directory / name, data)
                report.files[name] = len(data)
                for blob in blobs_of(data):
                    downloader.blob(blob, name)
        PushState(writer, dict(report.files)).save(ledger)
    report.blobs = downloader.result.blobs
    report.problems += downloader.result.problems
    report.pulled = pull(ledger, store, workers=workers, progress=progress)
    return report


def _only_writer(store: ObjectStore) -> str:
    writers = writers_in(store)
    if len(writers) == 1:
        return next(iter(writers))
    listed = "; ".join(f"{w} ({len(names)} ledger file(s), e.g. {sorted(names)[-1]})"
                       for w, names in sorted(writers.items()))
    raise UsageError("name the lost directory's writer with --writer: "
                     + (listed if writers else "the store has no ledger segments"))


def _chains(store: ObjectStore, writer: str, report: StoreRecovery
            ) -> dict[str, list[Segment]]:
    """Per ledger file of ``writer``: its segments from byte 0 on, in order."""
    by_start: dict[str, dict[int, Segment]] = {}
    for item in store.list(f"{SEGMENTS}{writer}/"):
        try:
            segment = Segment.parse(item.key)
        except StoreError as exc:
            report.problems.append(str(exc))
            continue
        known = by_start.setdefault(segment.name, {}).get(segment.start)
        if known is None or segment.end > known.end:
            by_start[segment.name][segment.start] = segment
    chains = {}
    for name, starts in sorted(by_start.items()):
        chain, position = [], 0
        while position in starts:
            chain.append(starts[position])
            position = starts[position].end
        if any(start >= position for start in starts):
            report.problems.append(f"{name}: segments after byte {position} do not follow on; "
                                   f"recovered up to byte {position}")
        if chain:
            chains[name] = chain
    return chains


def _assemble(store: ObjectStore, name: str, chain: list[Segment]
              ) -> tuple[str, bytes, str | None]:
    """A ledger file from its segments: all of them, or those before the first that is
    missing or damaged (and what is wrong with it)."""
    parts: list[bytes] = []
    for segment in chain:
        found = store.get(segment.key)
        reason = not_ledger_lines(found[0], segment.end - segment.start) if found else "missing"
        if reason or found is None:
            return name, b"".join(parts), (f"{reason} object {segment.key!r}: {name} recovered "
                                           f"up to byte {segment.start} only")
        parts.append(found[0])
    return name, b"".join(parts), None
