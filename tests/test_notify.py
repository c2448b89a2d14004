"""Notifications: sent through apprise's json:// to a real HTTP server on loopback."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from qcourier.cli import collect, submit
from qcourier.collect.notify import SENT_FILE


class _Sink:
    """A loopback HTTP server recording each POSTed JSON body; ``fail`` answers 500."""

    def __init__(self):
        self.bodies: list[dict] = []
        self.fail = False
        self.received = threading.Event()  # set when a body arrived
        self.hold = False  # with hold: the answer waits for release (or 30 s)
        self.release = threading.Event()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                data = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if sink.fail:
                    self.send_response(500)
                else:
                    sink.bodies.append(json.loads(data))
                    sink.received.set()
                    if sink.hold:
                        sink.release.wait(30)
                    self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"json://127.0.0.1:{self.server.server_address[1]}/hook"

    def stop(self):
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


@pytest.fixture
def sink():
    s = _Sink()
    yield s
    s.stop()


def test_finished_job_notified_once_across_reruns(invoke, sink, monkeypatch, tmp_path: Path):
    monkeypatch.setenv("QCOURIER_NOTIFY", sink.url)
    invoke(submit.main, ["--experiment", "bell", "--shots", "100", "--repeat", "2"])
    assert invoke(collect.main, []).exit_code == 0
    assert len(sink.bodies) == 1  # one message per run, grouping both jobs
    body = sink.bodies[0]["message"]
    records = [json.loads(line) for p in (tmp_path / "ledger").glob("submitted_jobs_*.jsonl")
               for line in p.read_text().splitlines()]
    job_ids = {r["job_id"] for r in records if r.get("job_id")}
    assert len(job_ids) == 2 and all(j in body for j in job_ids)
    assert "completed: bell on" in body
    for _ in range(2):
        assert invoke(collect.main, []).exit_code == 0
    assert len(sink.bodies) == 1  # a rerun sends nothing again


def test_failed_send_is_retried_next_run(invoke, sink, monkeypatch, tmp_path: Path):
    monkeypatch.setenv("QCOURIER_NOTIFY", sink.url)
    invoke(submit.main, ["--experiment", "bell", "--shots", "100"])
    sink.fail = True
    result = invoke(collect.main, [])
    assert result.exit_code == 0  # a failed notification never fails the collect
    warnings = [ln for ln in result.stderr.splitlines() if "notification" in ln]
    assert len(warnings) == 1 and warnings[0].startswith("Warning: notification not sent")
    assert sink.bodies == []
    sink.fail = False
    assert invoke(collect.main, []).exit_code == 0  # nothing new to collect; the event retried
    assert len(sink.bodies) == 1 and "completed: bell" in sink.bodies[0]["message"]
    assert invoke(collect.main, []).exit_code == 0
    assert len(sink.bodies) == 1
    phases = [json.loads(ln)["phase"] for ln in
              (tmp_path / "ledger" / SENT_FILE).read_text().splitlines()]
    assert phases == ["intent", "sent"]


def test_bad_url_is_one_line_warning(invoke, monkeypatch):
    monkeypatch.setenv("QCOURIER_NOTIFY", "notaservice://nowhere")
    invoke(submit.main, ["--experiment", "bell", "--shots", "100"])
    result = invoke(collect.main, [])
    assert result.exit_code == 0
    lines = [ln for ln in result.stderr.splitlines() if "notification" in ln]
    assert len(lines) == 1 and "not a valid apprise URL" in lines[0]
    assert "Traceback" not in result.stderr


def test_notify_test_sends_a_message(invoke, sink, monkeypatch):
    from qcourier.cli import notify

    monkeypatch.setenv("QCOURIER_NOTIFY", sink.url)
    result = invoke(notify.main, ["--test"])
    assert result.exit_code == 0 and "Test message sent to 1 URL" in result.output
    assert len(sink.bodies) == 1 and sink.bodies[0]["title"] == "qcourier: test"


def test_notify_test_without_setting_is_one_line_error(invoke):
    from qcourier.cli import notify

    result = invoke(notify.main, ["--test"])
    assert result.exit_code != 0
    assert result.stderr.strip().splitlines() == [
        line for line in result.stderr.strip().splitlines() if line.startswith("Error: ")]
    assert "QCOURIER_NOTIFY is not set" in result.stderr


def _job_ids(tmp_path: Path) -> set[str]:
    from conftest import ledger_records

    return {r["job_id"] for r in ledger_records(tmp_path / "ledger") if r.get("job_id")}


def test_two_collectors_at_once_send_each_event_once(sink, tmp_path: Path):
    import subprocess

    from conftest import cli_env, script, submit_jobs

    submit_jobs(tmp_path, "--experiment", "bell", "--shots", "100", "--repeat", "3")
    env = cli_env(tmp_path, QCOURIER_NOTIFY=sink.url)
    procs = [subprocess.Popen([script("qcollect"), "--quiet"], env=env, cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    for p in procs:
        p.communicate(timeout=300)
        assert p.returncode == 0
    done = subprocess.run([script("qcollect"), "--quiet"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    ids = _job_ids(tmp_path)
    assert len(ids) == 3
    text = "\n".join(b["message"] for b in sink.bodies)
    assert all(text.count(j) == 1 for j in ids), text  # each job's event sent exactly once


def test_kill_9_while_sending_resends_once_then_never(sink, tmp_path: Path):
    """The documented window: killed after the target received the message but before the
    ``sent`` line, the next run sends it again (at-least-once); after that, never again."""
    import signal
    import subprocess

    from conftest import cli_env, script, submit_jobs

    submit_jobs(tmp_path, "--experiment", "bell", "--shots", "100")
    env = cli_env(tmp_path, QCOURIER_NOTIFY=sink.url)
    sink.hold = True
    proc = subprocess.Popen([script("qcollect"), "--quiet"], env=env, cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert sink.received.wait(120), "qcollect sent no notification"
        proc.send_signal(signal.SIGKILL)  # the server has the message; qcollect has no answer
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    sink.hold = False
    sink.release.set()
    phases = [json.loads(ln)["phase"] for ln in
              (tmp_path / "ledger" / SENT_FILE).read_text().splitlines()]
    assert phases == ["intent"]
    for _ in range(2):
        done = subprocess.run([script("qcollect"), "--quiet"], env=env, cwd=tmp_path,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
    (job_id,) = _job_ids(tmp_path)
    assert [job_id in b["message"] for b in sink.bodies] == [True, True]  # resent once, not twice
    phases = [json.loads(ln)["phase"] for ln in
              (tmp_path / "ledger" / SENT_FILE).read_text().splitlines()]
    assert phases == ["intent", "sent"]


def test_kill_9_after_sent_line_sends_no_duplicate(sink, tmp_path: Path):
    import signal
    import subprocess
    import time

    from conftest import cli_env, script, submit_jobs

    submit_jobs(tmp_path, "--experiment", "bell", "--shots", "100")
    env = cli_env(tmp_path, QCOURIER_NOTIFY=sink.url)
    sent_file = tmp_path / "ledger" / SENT_FILE
    proc = subprocess.Popen([script("qcollect"), "--quiet", "--watch", "--interval", "3600"],
                            env=env, cwd=tmp_path, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        for _ in range(1200):  # observed point: the sent line is on disk
            if sent_file.exists() and '"sent"' in sent_file.read_text():
                break
            if proc.poll() is not None:
                break
            time.sleep(0.1)
        assert '"sent"' in sent_file.read_text()
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    done = subprocess.run([script("qcollect"), "--quiet"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert len(sink.bodies) == 1


def test_budget_thresholds_notified_once_each(invoke, sink, monkeypatch):
    monkeypatch.setenv("QCOURIER_NOTIFY", sink.url)
    invoke(submit.main, ["--experiment", "bell", "--shots", "100"])
    monkeypatch.setenv("QCOURIER_BUDGET_SECONDS", "0.000001")  # any usage passes 100 %
    assert invoke(collect.main, []).exit_code == 0
    assert invoke(collect.main, []).exit_code == 0
    text = "\n".join(b["message"] for b in sink.bodies)
    for threshold in (50, 80, 100):
        assert text.count(f"passed {threshold}%") == 1, text


def test_stuck_deferred_queue_is_defined_by_the_oldest_wait():
    from datetime import UTC, datetime, timedelta
    from types import SimpleNamespace

    from qcourier.collect.notify import stuck_events
    from qcourier.ledger.status import JobStatus

    now = datetime(2026, 12, 3, 12, tzinfo=UTC)
    rec = lambda rid, hours: SimpleNamespace(  # noqa: E731
        record_id=rid, status=JobStatus.DEFERRED, service="ibm", api_key_index=1,
        updated_at=now - timedelta(hours=hours), experiment_type="heartbeat", backend="ibm_x")
    assert stuck_events([rec("a", 23)], now) == []
    (event,) = stuck_events([rec("a", 23), rec("b", 25)], now)
    assert event.key == "stuck:ibm:1:b" and "ibm key 1" in event.line


# -- budget thresholds: once per crossing of the rolling window ------------------------------

def _passed(sink, start: int = 0) -> list[str]:
    return [ln for b in sink.bodies[start:] for ln in b["message"].splitlines() if "passed" in ln]


def _sent_lines(tmp_path: Path) -> list[dict]:
    return [json.loads(ln) for ln in (tmp_path / "ledger" / SENT_FILE).read_text().splitlines()]


def test_budget_threshold_notifies_again_after_the_window_rolls(invoke, sink, tmp_path: Path):
    """Crossed, repeated runs quiet; the usage drops out of the 28-day window (re-armed, no
    message); a job of the new window passes the thresholds again: notified again, once."""
    from datetime import timedelta

    from qcourier.collect.notify import budget_events, notify_events
    from qcourier.ledger.store import Ledger

    invoke(submit.main, ["--experiment", "bell", "--shots", "100"])
    assert invoke(collect.main, []).exit_code == 0
    (job,) = Ledger(tmp_path / "ledger").fold().summaries
    t0, limit = job.completion_time, job.usage_seconds  # the job alone is 100 % of the limit
    ledger_dir = tmp_path / "ledger"

    def run(records, now):
        return notify_events(ledger_dir, [sink.url],
                             budget_events(records, lambda _k: limit, now), now=now)

    assert len(run([job], t0 + timedelta(minutes=1))) == 3
    assert [ln.split(" passed ")[1][:4] for ln in _passed(sink)] == ["50% ", "80% ", "100%"]
    assert run([job], t0 + timedelta(hours=1)) == []  # a rerun in the same window
    later = t0 + timedelta(days=29)  # the job has left the window: every threshold re-armed
    assert run([job], later) == [] and run([job], later) == []
    rearmed = [e["event"] for e in _sent_lines(tmp_path) if e["phase"] == "rearm"]
    assert sorted(rearmed) == sorted(f"budget:local:None:{t}:1" for t in (50, 80, 100))
    new = job._replace(record_id="r-new", job_id="j-new", completion_time=later,
                       updated_at=later)
    sent = run([job, new], later + timedelta(minutes=1))
    assert sorted(e.key for e in sent) == sorted(f"budget:local:None:{t}:2" for t in (50, 80, 100))
    assert run([job, new], later + timedelta(hours=2)) == []
    assert len(sink.bodies) == 2 and len(_passed(sink)) == 6


def test_budget_threshold_rearms_only_clearly_below(invoke, sink, tmp_path: Path):
    """A share hovering at a threshold (within BUDGET_REARM_MARGIN points below it) does
    not re-arm it; falling clearly below does."""
    from qcourier.collect.notify import BUDGET_REARM_MARGIN, budget_events, notify_events
    from qcourier.ledger.store import Ledger

    invoke(submit.main, ["--experiment", "bell", "--shots", "100"])
    assert invoke(collect.main, []).exit_code == 0
    records = Ledger(tmp_path / "ledger").fold().summaries
    used, now = records[0].usage_seconds, records[0].completion_time

    def at(share: float) -> list:
        limit = used * 100.0 / share
        return notify_events(tmp_path / "ledger", [sink.url],
                             budget_events(records, lambda _k: limit, now), now=now)

    assert [e.key for e in at(81)] == ["budget:local:None:50:1", "budget:local:None:80:1"]
    assert at(80 - BUDGET_REARM_MARGIN / 2) == [] and at(81) == []  # a wobble: no message
    assert at(80 - 2 * BUDGET_REARM_MARGIN) == []  # clearly below 80: re-armed (50 stays)
    assert [e.key for e in at(81)] == ["budget:local:None:80:2"]
    assert [e.key for e in at(100)] == ["budget:local:None:100:1"]


def test_legacy_budget_event_counts_as_the_first_crossing(sink, tmp_path: Path):
    from qcourier.collect.notify import Event, notify_events

    ledger_dir = tmp_path / "ledger"
    ledger_dir.mkdir()
    (ledger_dir / SENT_FILE).write_text(json.dumps(
        {"event": "budget:ibm:1:80", "phase": "sent", "at": "2026-11-01T00:00:00Z"}) + "\n")
    crossing = Event("budget:ibm:1:80", "budget: ibm key 1 passed 80%", "crossing")
    assert notify_events(ledger_dir, [sink.url], [crossing]) == []  # sent before the upgrade
    assert notify_events(ledger_dir, [sink.url], [Event("budget:ibm:1:80", "", "below")]) == []
    assert [e.key for e in notify_events(ledger_dir, [sink.url], [crossing])] == [
        "budget:ibm:1:80:1"]


def test_budget_crossings_exactly_once_with_two_collectors(sink, tmp_path: Path):
    """Real qcollect processes, two at a time, over three phases: the budget passed (each
    threshold notified once), the limit raised (re-armed, nothing sent), lowered again
    (each threshold notified once more)."""
    import subprocess

    from conftest import cli_env, script, submit_jobs

    submit_jobs(tmp_path, "--experiment", "bell", "--shots", "100")

    def two_collectors(budget: str) -> None:
        env = cli_env(tmp_path, QCOURIER_NOTIFY=sink.url, QCOURIER_BUDGET_SECONDS=budget)
        procs = [subprocess.Popen([script("qcollect"), "--quiet"], env=env, cwd=tmp_path,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(2)]
        for p in procs:
            _out, err = p.communicate(timeout=300)
            assert p.returncode == 0, err
            assert "notification" not in err, err

    for budget in ("0.000001", "0.000001"):
        two_collectors(budget)
    assert sorted(ln.split(" passed ")[1][:3] for ln in _passed(sink)) == ["100", "50%", "80%"]
    count = len(sink.bodies)
    two_collectors("1000000")  # far below every threshold: re-armed, no message
    assert len(sink.bodies) == count
    for budget in ("0.000001", "0.000001"):
        two_collectors(budget)
    passed = _passed(sink)
    for threshold in (50, 80, 100):
        assert sum(f"passed {threshold}%" in ln for ln in passed) == 2, passed
    phases = [(e["event"], e["phase"]) for e in _sent_lines(tmp_path)
              if e["event"].startswith("budget:")]
    for threshold in (50, 80, 100):
        for n in (1, 2):
            key = f"budget:local:None:{threshold}:{n}"
            assert phases.count((key, "intent")) == 1 and phases.count((key, "sent")) == 1
        assert phases.count((f"budget:local:None:{threshold}:1", "rearm")) == 1


# -- the stuck deferred queue ----------------------------------------------------------------

def test_stuck_hours_is_a_setting(invoke, sink, monkeypatch):
    from datetime import timedelta

    import qcourier.ledger.status as status

    monkeypatch.setenv("QCOURIER_NOTIFY", sink.url)
    monkeypatch.setenv("QCOURIER_LOCAL_QUEUE_SECONDS", "600")  # the first job stays queued
    invoke(submit.main, ["--experiment", "bell", "--shots", "10", "--repeat", "2",
                         "--max-pending", "1"])
    assert invoke(collect.main, ["--max-pending", "1"]).exit_code == 0
    assert not any("stuck" in b["message"] for b in sink.bodies)  # 24 h by default
    monkeypatch.setenv("QCOURIER_NOTIFY_STUCK_HOURS", "0.5")
    real_now = status.utc_now
    monkeypatch.setattr(status, "utc_now", lambda: real_now() + timedelta(hours=1))  # later
    assert invoke(collect.main, ["--max-pending", "1"]).exit_code == 0
    assert invoke(collect.main, ["--max-pending", "1"]).exit_code == 0
    stuck = [ln for b in sink.bodies for ln in b["message"].splitlines() if "stuck" in ln]
    assert len(stuck) == 1 and "the deferred queue of local" in stuck[0]


@pytest.mark.parametrize("value", ["0", "-3", "abc", "inf", "nan"])
def test_bad_stuck_hours_is_a_one_line_error(invoke, monkeypatch, value):
    monkeypatch.setenv("QCOURIER_NOTIFY_STUCK_HOURS", value)
    result = invoke(collect.main, [])
    assert result.exit_code != 0
    assert result.stderr.strip().splitlines() == [
        ln for ln in result.stderr.strip().splitlines() if ln.startswith("Error: ")]
    assert "bad setting QCOURIER_NOTIFY_STUCK_HOURS" in result.stderr


# -- compaction of notifications.jsonl -------------------------------------------------------

def _history(ledger_dir: Path, old_jobs: int = 300) -> dict[str, str]:
    """A long notifications.jsonl: old sent job events, one recent, an old unsent intent, an
    old stuck event still live, two crossings of a threshold (the first re-armed)."""
    ledger_dir.mkdir(parents=True, exist_ok=True)
    old, recent = "2026-01-01T00:00:00Z", "2026-12-01T00:00:00Z"
    lines = []
    for i in range(old_jobs):
        for phase in ("intent", "sent"):
            lines.append({"event": f"job:old{i}:completed", "phase": phase, "at": old}
                         | ({"line": f"completed: old {i}"} if phase == "intent" else {}))
    keys = {"recent": "job:recent:completed", "unsent": "job:unsent:failed",
            "stuck": "stuck:ibm:1:r9", "cross1": "budget:ibm:1:80:1",
            "cross2": "budget:ibm:1:80:2"}
    for key, at in ((keys["recent"], recent), (keys["stuck"], old), (keys["cross1"], old),
                    (keys["cross2"], old)):
        lines += [{"event": key, "phase": "intent", "at": at, "line": key},
                  {"event": key, "phase": "sent", "at": at}]
        if key == keys["cross1"]:
            lines.append({"event": key, "phase": "rearm", "at": old})
    lines.insert(5, {"event": keys["unsent"], "phase": "intent", "at": old,
                     "line": "failed: the unsent one"})
    (ledger_dir / SENT_FILE).write_text(
        "".join(json.dumps(x) + "\n" for x in lines) + '{"event": "torn\n')
    return keys


def test_compaction_keeps_what_matters_and_sends_nothing_twice(sink, tmp_path: Path,
                                                                monkeypatch):
    from datetime import UTC, datetime

    from qcourier.collect import notify
    from qcourier.collect.notify import Event, notify_events, sent_keys

    monkeypatch.setattr(notify, "COMPACT_LINES", 100)
    ledger_dir = tmp_path / "ledger"
    keys = _history(ledger_dir)
    now = datetime(2026, 12, 3, 12, tzinfo=UTC)
    live = [Event(keys["stuck"], "stuck: again", "once"),
            Event("budget:ibm:1:80", "budget: passed 80% again", "crossing"),
            Event("job:new:completed", "completed: new")]
    sent = notify_events(ledger_dir, [sink.url], live, now=now)
    assert [e.key for e in sent] == [keys["unsent"], "job:new:completed"]
    entries = [json.loads(ln) for ln in (ledger_dir / SENT_FILE).read_text().splitlines()]
    assert len(entries) < 20
    assert sent_keys(ledger_dir) == {keys["recent"], keys["stuck"], keys["cross2"],
                                     keys["unsent"], "job:new:completed"}
    assert not any(e["event"].startswith("job:old") for e in entries)
    # the same events again, and a rerun after compaction: nothing is sent twice
    assert notify_events(ledger_dir, [sink.url], live, now=now) == []
    assert len(sink.bodies) == 1
    assert not list(ledger_dir.glob(".*.tmp"))


def test_compaction_never_loses_an_unsent_intent_on_a_failed_send(sink, tmp_path: Path,
                                                                   monkeypatch):
    from qcourier.collect import notify
    from qcourier.collect.notify import Event, NotifyError, notify_events

    monkeypatch.setattr(notify, "COMPACT_LINES", 100)
    ledger_dir = tmp_path / "ledger"
    keys = _history(ledger_dir)
    sink.fail = True
    with pytest.raises(NotifyError):
        notify_events(ledger_dir, [sink.url], [Event("job:new:completed", "completed: new")])
    sink.fail = False
    sent = notify_events(ledger_dir, [sink.url], [])
    assert sorted(e.key for e in sent) == sorted([keys["unsent"], "job:new:completed"])
    assert "failed: the unsent one" in sink.bodies[0]["message"]


_KILLED_COMPACTION = """
import os, signal, sys
from pathlib import Path
from qcourier.collect import notify

notify.COMPACT_LINES = 100
real_replace, real_fsync = os.replace, os.fsync
die = lambda *a: os.kill(os.getpid(), signal.SIGKILL)
stage = sys.argv[2]
if stage == "writing":       # the temp file half written
    def fsync(fd):
        os.write(fd, b'{"event": "half')
        die()
    os.fsync = fsync
elif stage == "before_rename":
    os.replace = die
elif stage == "after_rename":
    os.replace = lambda a, b: (real_replace(a, b), die())
notify.notify_events(Path(sys.argv[1]), ["json://127.0.0.1:9/never"], [])
"""


@pytest.mark.parametrize("stage", ["writing", "before_rename", "after_rename"])
def test_kill_9_while_compacting_loses_nothing(sink, tmp_path: Path, stage):
    import signal
    import subprocess
    import sys

    from qcourier.collect.notify import notify_events, sent_keys
    from qcourier.files import TEMP_FILE_PATTERN

    ledger_dir = tmp_path / "ledger"
    keys = _history(ledger_dir)
    before = sent_keys(ledger_dir)
    done = subprocess.run([sys.executable, "-c", _KILLED_COMPACTION, str(ledger_dir), stage],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == -signal.SIGKILL, done.stderr
    after = sent_keys(ledger_dir)
    if stage == "after_rename":  # the compacted file: old events no run reports gone
        assert after == {keys["recent"], keys["cross2"]}
    else:  # the old file, whole
        assert after == before
        (temp,) = [p for p in ledger_dir.iterdir() if p.name.endswith(".tmp")]
        assert TEMP_FILE_PATTERN.fullmatch(temp.name)  # qcollect removes it once stale
    sent = notify_events(ledger_dir, [sink.url], [])
    assert [e.key for e in sent] == [keys["unsent"]]  # the unsent intent survived
    assert notify_events(ledger_dir, [sink.url], []) == []
    assert len(sink.bodies) == 1


def test_two_collectors_compacting_at_once_send_each_event_once(sink, tmp_path: Path):
    import subprocess
    import sys

    from qcourier.collect.notify import sent_keys

    ledger_dir = tmp_path / "ledger"
    keys = _history(ledger_dir, old_jobs=2000)
    code = """
import sys
from pathlib import Path
from qcourier.collect import notify
notify.COMPACT_LINES = 100
notify.notify_events(Path(sys.argv[1]), [sys.argv[2]],
                     [notify.Event(f"job:{sys.argv[3]}:completed", f"completed: {sys.argv[3]}")])
"""
    procs = [subprocess.Popen([sys.executable, "-c", code, str(ledger_dir), sink.url, name])
             for name in ("alpha", "beta")]
    for p in procs:
        assert p.wait(timeout=120) == 0
    text = "\n".join(b["message"] for b in sink.bodies)
    assert text.count("failed: the unsent one") == 1
    assert text.count("completed: alpha") == 1 and text.count("completed: beta") == 1
    assert {keys["unsent"], "job:alpha:completed", "job:beta:completed"} <= sent_keys(ledger_dir)
    assert len((ledger_dir / SENT_FILE).read_text().splitlines()) < 30


# -- a cold start ------------------------------------------------------------------------------

def test_idle_qcollect_with_notify_set_does_not_import_apprise(sink, tmp_path: Path):
    """QCOURIER_NOTIFY set and nothing to tell: qcollect's start does not pay for apprise
    (measured with python -X importtime on the console script)."""
    import subprocess
    import sys

    from conftest import cli_env, script, submit_jobs

    env = cli_env(tmp_path, QCOURIER_NOTIFY=sink.url)

    def imported() -> set[str]:
        done = subprocess.run([sys.executable, "-X", "importtime", script("qcollect"), "--quiet"],
                              env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        return {ln.rsplit("|", 1)[1].strip().split(".")[0]
                for ln in done.stderr.splitlines() if ln.startswith("import time:")}

    assert "apprise" not in imported()  # an empty ledger
    submit_jobs(tmp_path, "--experiment", "bell", "--shots", "100")
    assert "apprise" in imported()  # the job finished: sent (the measure sees apprise)
    assert len(sink.bodies) == 1
    assert "apprise" not in imported()  # everything already told
    assert len(sink.bodies) == 1
