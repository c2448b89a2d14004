"""Notifications through apprise: what qcollect tells people, each event once.

Events:

- a job reaching a final state, ``job:<record_id>:<status>``: sent once;
- a key's deferred queue stuck, ``stuck:<service>:<key>:<record_id>`` (the oldest deferred
  job): sent once;
- a key's used + reserved QPU time passing 50, 80 or 100 % of its limit: sent once per
  *crossing*. The budget is a rolling 28-day window, so a key's share goes down again as
  old usage drops out of it (or its limit is raised). The n-th crossing of a threshold is the
  event ``budget:<service>:<key>:<threshold>:<n>``: it is created when a run sees the share at
  or above the threshold and the threshold is *armed* (never crossed, or its last crossing
  re-armed); a run that sees the share below ``threshold - BUDGET_REARM_MARGIN`` percentage
  points re-arms it (a ``rearm`` line naming the last crossing). The margin keeps a share
  that hovers at a threshold (an estimate replaced by a slightly smaller real usage) from
  notifying on every wobble. A legacy event ``budget:<service>:<key>:<threshold>`` (no
  ``<n>``) counts as crossing 0.

Events are recorded in ``notifications.jsonl`` in the ledger directory (one JSON line per
step): ``{"event": KEY, "phase": "intent"|"sent"|"rearm", "at": ...}``. One collect run
sends ONE message grouping its unsent events, under a file lock (so two collectors never
both send, and every decision, e.g. "this is crossing 3", is made by one of them at a time):

1. record ``intent`` for each event (so a crash leaves a trace of what was being sent);
2. send the message;
3. on success record ``sent`` for each; on failure nothing more: the next run sends the
   events that have an ``intent`` but no ``sent`` line again, with the new ones.

An event with a ``sent`` line is never sent again (rerun, second collector, kill -9 after step
3). The window that remains: a kill -9 after the target accepted the message but before the
``sent`` lines reach the file (step 2 to 3, a few milliseconds) sends that message again next
run: delivery is at-least-once, deduplicated by record and state.

The file is compacted (under the same lock) when it has more than :data:`COMPACT_LINES` lines
and at least half of them can go: it is rewritten atomically (temp file, fsync, rename; a
kill -9 leaves the old file or the new one, and a stale temp file that the collector removes)
with one line per event kept: every event not yet sent (its ``intent``, with its text), every
event this run still reports (a queue still stuck), the last crossing of every budget
threshold (with its ``rearm``), and every event sent in the last :data:`KEEP_DAYS` days. What
goes is sent events older than that, which no run reports again (a job reaches a final state
once).

apprise is imported only when there is something to send (an idle qcollect stays fast).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qcourier.errors import QcourierError
from qcourier.ledger.status import as_utc

if TYPE_CHECKING:
    from qcourier.collect.run import CollectReport
    from qcourier.ledger.store import Ledger

SENT_FILE = "notifications.jsonl"
LOCK_FILE = ".notifications.lock"
#: Compact notifications.jsonl when it has more lines than this (and half of them can go).
COMPACT_LINES = 5000
#: Sent events are kept this long when compacting: two 28-day budget windows.
KEEP_DAYS = 56
_STAMP = "%Y-%m-%dT%H:%M:%SZ"


class NotifyError(QcourierError):
    """The notification target could not be reached or the URL is not valid."""


@dataclass(frozen=True)
class Event:
    """Something to tell. ``kind``: ``"once"`` (``key`` is the event); ``"crossing"`` (a
    budget threshold passed: ``key`` is the threshold, ``budget:<service>:<key>:<threshold>``,
    and the event is its next crossing unless the last one is not re-armed); ``"below"``
    (the share is under the threshold's re-arm level: re-arms it; nothing is sent)."""

    key: str
    line: str
    kind: str = "once"


def job_events(report) -> list[Event]:
    """Events of a collect report: each job this run saw in a final state."""
    events = []
    for o in report.outcomes:
        r = o.record
        if not r.status.is_final or not o.changed:
            continue
        line = (f"{r.status.value}: {r.experiment_type} on {r.backend}, "
                f"job {r.job_id or '(not submitted)'}" + (f" — {o.message}" if o.message else ""))
        events.append(Event(f"job:{r.record_id}:{r.status.value}", line))
    return events


#: Budget shares of a key's limit whose passing is notified (once per crossing).
BUDGET_THRESHOLDS = (50, 80, 100)
#: A threshold is re-armed when the share falls this many percentage points below it.
BUDGET_REARM_MARGIN = 5.0
#: The default of ``QCOURIER_NOTIFY_STUCK_HOURS``: a key's deferred queue is *stuck* when its
#: oldest deferred job has waited this long (no ledger line for it) without being submitted:
#: qcollect found no free pending slot or budget for it in all that time.
STUCK_HOURS = 24.0


def budget_events(records, limit_of, now) -> list[Event]:
    """A key's used + reserved QPU time against 50/80/100 % of its limit (rolling window):
    a ``crossing`` event per threshold at or above, a ``below`` one per threshold the share
    is more than :data:`BUDGET_REARM_MARGIN` points under."""
    from qcourier.accounting.budget import budget_keys, budget_state

    events = []
    for service, key_index in budget_keys(records):
        state = budget_state(records, service, key_index, limit_of(key_index), now)
        if state.limit_seconds <= 0:
            continue
        share = 100.0 * (state.used_seconds + state.reserved_seconds) / state.limit_seconds
        for threshold in BUDGET_THRESHOLDS:
            base = f"budget:{service}:{key_index}:{threshold}"
            if share >= threshold:
                events.append(Event(
                    base,
                    f"budget: {state.label} passed {threshold}% ({state.used_seconds:.1f} s "
                    f"used + {state.reserved_seconds:.1f} s reserved of "
                    f"{state.limit_seconds:.0f} s)", "crossing"))
            elif share < threshold - BUDGET_REARM_MARGIN:
                events.append(Event(base, "", "below"))
    return events


def stuck_events(records, now, hours: float = STUCK_HOURS) -> list[Event]:
    """One event per key whose oldest deferred job has waited ``hours`` or more."""
    from qcourier.ledger.status import JobStatus

    oldest: dict[tuple, Any] = {}
    for r in records:
        if r.status is JobStatus.DEFERRED:
            key = (r.service, r.api_key_index)
            if key not in oldest or r.updated_at < oldest[key].updated_at:
                oldest[key] = r
    events = []
    for (service, key_index), r in sorted(oldest.items(), key=lambda kv: str(kv[0])):
        at = as_utc(r.updated_at)
        waited = now - at
        if waited >= timedelta(hours=hours):
            name = service if key_index is None else f"{service} key {key_index}"
            events.append(Event(
                f"stuck:{service}:{key_index}:{r.record_id}",
                f"stuck: the deferred queue of {name} has not moved for "
                f"{waited.total_seconds() / 3600:.0f} h (oldest: {r.experiment_type} on "
                f"{r.backend}); see qcourier budget and qcourier status"))
    return events


def _crossing(key: str) -> tuple[str, int] | None:
    """(threshold, n) of a budget crossing event ``budget:<service>:<key>:<threshold>:<n>``
    (a legacy ``budget:<service>:<key>:<threshold>`` is crossing 0); None for other events."""
    parts = key.split(":")
    if parts[0] != "budget":
        return None
    if len(parts) == 4:
        return key, 0
    if len(parts) == 5 and parts[4].isdigit():
        return ":".join(parts[:4]), int(parts[4])
    return None


@dataclass
class _State:
    """What notifications.jsonl says, read under the lock."""

    lines: int = 0
    #: event -> its latest line of each phase, and the position of its first line
    entries: dict[str, dict] = field(default_factory=dict)

    @property
    def done(self) -> set[str]:
        return {k for k, e in self.entries.items() if "sent" in e}

    @property
    def unsent(self) -> dict[str, str]:
        """{event: line} of those with an intent but no sent line: sent again."""
        return {k: str(e["intent"].get("line", "")) for k, e in self.entries.items()
                if "intent" in e and "sent" not in e}

    def last_crossings(self) -> dict[str, tuple[int, str]]:
        """threshold -> (n, event) of its latest crossing."""
        last: dict[str, tuple[int, str]] = {}
        for key in self.entries:
            c = _crossing(key)
            if c is not None and (c[0] not in last or c[1] > last[c[0]][0]):
                last[c[0]] = (c[1], key)
        return last

    def armed(self, threshold: str) -> tuple[bool, int, str | None]:
        """(armed, n of its last crossing (0: none, or only a legacy one), its event)."""
        n, key = self.last_crossings().get(threshold, (0, None))
        return key is None or "rearm" in self.entries[key], n, key


def sent_keys(directory: Path) -> set[str]:
    """Events already sent, from the sent-events file (damaged lines are ignored)."""
    return _read(directory).done


def _read(directory: Path) -> _State:
    state = _State()
    try:
        with open(Path(directory) / SENT_FILE, encoding="utf-8") as fh:
            for line in fh:
                state.lines += 1
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue  # a line torn by a crash mid-write
                if not isinstance(entry, dict) or entry.get("phase") not in (
                        "intent", "sent", "rearm"):
                    continue
                slot = state.entries.setdefault(str(entry.get("event")), {})
                slot[entry["phase"]] = entry
    except FileNotFoundError:
        pass
    return state


def _kept(state: _State, live: set[str], now: datetime) -> list[dict]:
    """The lines a compacted file keeps (see the module's docstring), in first-seen order."""
    latest = {key for _, key in state.last_crossings().values()}
    since = now - timedelta(days=KEEP_DAYS)
    out = []
    for key, e in state.entries.items():
        if "sent" in e:
            try:
                recent = as_utc(datetime.strptime(str(e["sent"].get("at")), _STAMP)) > since
            except ValueError:
                recent = True  # an unreadable time: keep it
            if not (recent or key in live or key in latest):
                continue
            out.append(e["sent"])
        elif "intent" in e:
            out.append(e["intent"])  # never lose an unsent intent
        if "rearm" in e and ("sent" in e or "intent" in e):
            out.append(e["rearm"])
    return out


def _compact(directory: Path, state: _State, live: set[str], now: datetime) -> bool:
    """Rewrite the file with :func:`_kept` lines, atomically, when it is worth it (call under
    the lock: appends happen only under it, so none is lost)."""
    from qcourier.files import atomic_write_bytes

    if state.lines <= COMPACT_LINES:
        return False
    kept = _kept(state, live, now)
    if len(kept) * 2 > state.lines:
        return False  # mostly live: rewriting every run would gain little
    atomic_write_bytes(Path(directory) / SENT_FILE,
                       "".join(json.dumps(line) + "\n" for line in kept).encode())
    return True


def _append(directory: Path, events: list[Event], phase: str) -> None:
    from qcourier.ledger.status import utc_now

    if not events:
        return
    stamp = utc_now().strftime(_STAMP)
    data = "".join(json.dumps({"event": e.key, "phase": phase, "at": stamp}
                              | ({"line": e.line} if phase == "intent" else {})) + "\n"
                   for e in events)
    fd = os.open(Path(directory) / SENT_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        os.write(fd, data.encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def urls_of(setting: str | None) -> list[str]:
    """The apprise URLs of QCOURIER_NOTIFY (separated by spaces or commas)."""
    return [u for u in (setting or "").replace(",", " ").split() if u]


def send(urls: list[str], title: str, body: str) -> None:
    """Send one message to every URL; NotifyError (one line, no secret) if any fails."""
    import logging

    import apprise

    logging.getLogger("apprise").setLevel(logging.CRITICAL)  # our one line says it
    app = apprise.Apprise()
    bad = [i + 1 for i, url in enumerate(urls) if not app.add(url)]
    if bad:
        raise NotifyError(f"QCOURIER_NOTIFY URL number {', '.join(map(str, bad))} is not a valid "
                          "apprise URL; see https://github.com/caronc/apprise/wiki")
    if not app.notify(title=title, body=body):
        raise NotifyError("the notification target did not accept the message (unreachable or "
                          "refused); it is sent again on the next qcollect run")


def notify_events(directory: Path, urls: list[str], events: list[Event],
                  now: datetime | None = None) -> list[Event]:
    """Send the events not sent before as one message; returns those sent. Raises NotifyError
    on a failed send (the events stay unsent, and are retried next run). Budget ``crossing``
    and ``below`` events are resolved here, under the lock (see the module's docstring)."""
    from filelock import FileLock

    from qcourier.ledger.status import utc_now

    if not urls:
        return []
    directory = Path(directory)
    if (not any(e.kind != "below" for e in events)
            and not (directory / SENT_FILE).exists()):
        return []  # nothing to send and nothing ever sent (nothing to re-arm either)
    now = as_utc(now or utc_now())
    with FileLock(str(directory / LOCK_FILE)):
        state = _read(directory)
        if _compact(directory, state, {e.key for e in events if e.kind == "once"}, now):
            state = _read(directory)
        done, unsent = state.done, state.unsent
        todo, seen, rearm = [Event(k, line) for k, line in unsent.items()], set(unsent), []
        for e in events:
            if e.kind == "below":
                armed, _n, last = state.armed(e.key)
                if not armed and last is not None:  # (not armed: there is a last one)
                    rearm.append(Event(last, ""))
                continue
            if e.kind == "crossing":
                armed, n, _last = state.armed(e.key)
                if not armed:
                    continue  # this crossing was recorded: sent, or retried above if not
                e = Event(f"{e.key}:{n + 1}", e.line)
            if e.key not in done and e.key not in seen:
                todo.append(e)
                seen.add(e.key)
        _append(directory, rearm, "rearm")
        if not todo:
            return []
        _append(directory, [e for e in todo if e.key not in unsent], "intent")
        title = f"qcourier: {len(todo)} event{'s' if len(todo) != 1 else ''}"
        send(urls, title, "\n".join(e.line for e in todo))
        _append(directory, todo, "sent")
        return todo


def notify_after_run(ledger: Ledger, report: CollectReport, urls: list[str],
                     limit_of: Callable[[int | None], float],
                     stuck_hours: float = STUCK_HOURS) -> str | None:
    """What ``qcollect`` tells after a run: one message for the jobs it finished, budgets
    passing 50/80/100 %, stuck deferred queues (and what an earlier failed send left).

    Returns:
        Why the notification was not sent (a one-line warning), or None; never raises for a
        failed send: a notification must not fail the collect.
    """
    from qcourier.ledger.status import utc_now

    try:
        records, now = ledger.fold().summaries, utc_now()
        events = (job_events(report) + budget_events(records, limit_of, now)
                  + stuck_events(records, now, stuck_hours))
        notify_events(ledger.directory, urls, events)
    except QcourierError as exc:
        return f"notification not sent: {exc}"
    except Exception as exc:  # noqa: BLE001 - apprise or the network: never fail the collect
        return f"notification not sent: {type(exc).__name__}"
    return None
