"""Notifications through apprise: what qcollect tells people, each event once.

An *event* is a job reaching a final state, keyed ``job:<record_id>:<status>``. Events are
recorded in ``notifications.jsonl`` in the ledger directory (append-only, one JSON line per
step): ``{"event": KEY, "phase": "intent"|"sent", "at": ...}``. One collect run sends ONE
message grouping its unsent events, under a file lock (so two collectors never both send):

1. record ``intent`` for each event (so a crash leaves a trace of what was being sent);
2. send the message;
3. on success record ``sent`` for each; on failure nothing more: the next run sends the
   events that have an ``intent`` but no ``sent`` line again, with the new ones.

An event with a ``sent`` line is never sent again (rerun, second collector, kill -9 after step
3). The window that remains: a kill -9 after the target accepted the message but before the
``sent`` lines reach the file (step 2 to 3, a few milliseconds) sends that message again next
run: delivery is at-least-once, deduplicated by record and state.

apprise is imported only when there is something to send (an idle qcollect stays fast).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from qcourier.errors import QcourierError
from qcourier.ledger.record import as_utc

SENT_FILE = "notifications.jsonl"
LOCK_FILE = ".notifications.lock"


class NotifyError(QcourierError):
    """The notification target could not be reached or the URL is not valid."""


@dataclass(frozen=True)
class Event:
    key: str
    line: str


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


#: Budget shares of a key's limit whose passing is notified (once per key and threshold).
BUDGET_THRESHOLDS = (50, 80, 100)
#: A key's deferred queue is *stuck* when its oldest deferred job has waited this long
#: (no ledger line for it) without being submitted: qcollect found no free pending slot or
#: budget for it in all that time.
STUCK_HOURS = 24.0


def budget_events(records, limit_of, now) -> list[Event]:
    """A key's used + reserved QPU time passing 50/80/100 % of its limit (rolling window)."""
    from qcourier.accounting.budget import budget_keys, budget_state

    events = []
    for service, key_index in budget_keys(records):
        state = budget_state(records, service, key_index, limit_of(key_index), now)
        if state.limit_seconds <= 0:
            continue
        share = 100.0 * (state.used_seconds + state.reserved_seconds) / state.limit_seconds
        for threshold in BUDGET_THRESHOLDS:
            if share >= threshold:
                events.append(Event(
                    f"budget:{service}:{key_index}:{threshold}",
                    f"budget: {state.label} passed {threshold}% ({state.used_seconds:.1f} s "
                    f"used + {state.reserved_seconds:.1f} s reserved of "
                    f"{state.limit_seconds:.0f} s)"))
    return events


def stuck_events(records, now, hours: float = STUCK_HOURS) -> list[Event]:
    """One event per key whose oldest deferred job has waited ``hours`` or more."""
    from datetime import timedelta

    from qcourier.ledger.record import JobStatus

    oldest: dict[tuple, object] = {}
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


def sent_keys(directory: Path) -> set[str]:
    """Events already sent, from the sent-events file (damaged lines are ignored)."""
    return _read(directory)[0]


def _read(directory: Path) -> tuple[set[str], dict[str, str]]:
    """(events sent, {event: line} of those with an intent but not sent: retried)."""
    path = Path(directory) / SENT_FILE
    done: set[str] = set()
    intents: dict[str, str] = {}
    try:
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue  # a line torn by a crash mid-write
                if not isinstance(entry, dict):
                    continue
                if entry.get("phase") == "sent":
                    done.add(str(entry.get("event")))
                elif entry.get("phase") == "intent":
                    intents[str(entry.get("event"))] = str(entry.get("line", ""))
    except FileNotFoundError:
        pass
    return done, {k: v for k, v in intents.items() if k not in done}


def _append(directory: Path, events: list[Event], phase: str) -> None:
    from qcourier.ledger.record import utc_now

    stamp = utc_now().strftime("%Y-%m-%dT%H:%M:%SZ")
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


def notify_events(directory: Path, urls: list[str], events: list[Event]) -> list[Event]:
    """Send the events not sent before as one message; returns those sent. Raises NotifyError
    on a failed send (the events stay unsent, and are retried next run)."""
    from filelock import FileLock

    if not urls:
        return []
    directory = Path(directory)
    if not events and not (directory / SENT_FILE).exists():
        return []
    with FileLock(str(directory / LOCK_FILE)):
        done, unsent = _read(directory)
        todo, seen = [], set()
        for e in [Event(k, line) for k, line in unsent.items()] + list(events):
            if e.key not in done and e.key not in seen:
                todo.append(e)
                seen.add(e.key)
        if not todo:
            return []
        _append(directory, [e for e in todo if e.key not in unsent], "intent")
        title = f"qcourier: {len(todo)} event{'s' if len(todo) != 1 else ''}"
        send(urls, title, "\n".join(e.line for e in todo))
        _append(directory, todo, "sent")
        return todo
