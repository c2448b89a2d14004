"""The union of several writers' ledgers: which line of a record is its latest state.

A team's study is written by several machines ("writers", each a ledger directory with its
own random writer id, see :mod:`qcourier.store.sync`). Every machine folds its own ledger
files together with the segments it pulled from the others, and a record may have lines
from more than one of them: machine A submits a job, the team's cron collector C records it
``completed``.

The rule, the same on every machine whatever order the files are read in:

1. **Within one writer**, the last line wins, as in a single ledger (a writer's lines of a
   record are in one file, in the order they were written; its pulled segments are read in
   byte order).
2. **Across writers**, the writers' latest states are compared:

   a. a final status (``completed``, ``failed``, ``cancelled``, ...) beats one that is not:
      a machine that last saw the job ``queued`` does not undo another's ``completed``,
      whatever the clocks say;
   b. then the later ``updated_at`` (a usage figure recorded after completion, a result
      downloaded again);
   c. then the greater writer id, so that a tie is settled the same way everywhere.

This module knows nothing of qiskit, services or the store.
"""

from __future__ import annotations

from datetime import datetime

from qcourier.ledger.status import as_utc
from qcourier.ledger.summary import Entry, RecordSummary


def rank(summary: RecordSummary, writer: str) -> tuple[bool, datetime, str]:
    """What the rule compares: a greater rank is a later state (see the module)."""
    return (summary.status.is_final, as_utc(summary.updated_at), writer)


def union(by_writer: dict[str, dict[str, Entry]]) -> dict[str, Entry]:
    """The latest entry of every record over all writers, by the rule of the module.

    Args:
        by_writer: each writer's own fold (its latest entry per record), in the order the
            result should follow (records keep the position of their first appearance).
    """
    if len(by_writer) == 1:
        return next(iter(by_writer.values()))
    result: dict[str, Entry] = {}
    ranks: dict[str, tuple[bool, datetime, str]] = {}
    for writer, entries in by_writer.items():
        for record_id, entry in entries.items():
            candidate = rank(entry.summary, writer)
            known = ranks.get(record_id)
            if known is None or candidate > known:
                result[record_id] = entry
                ranks[record_id] = candidate
    return result
