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

    from conftest import cli_env, script, submit_process

    submit_process(tmp_path, "--experiment", "bell", "--shots", "100", "--repeat", "3")
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

    from conftest import cli_env, script, submit_process

    submit_process(tmp_path, "--experiment", "bell", "--shots", "100")
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

    from conftest import cli_env, script, submit_process

    submit_process(tmp_path, "--experiment", "bell", "--shots", "100")
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
    from qcourier.ledger.record import JobStatus

    now = datetime(2026, 12, 3, 12, tzinfo=UTC)
    rec = lambda rid, hours: SimpleNamespace(  # noqa: E731
        record_id=rid, status=JobStatus.DEFERRED, service="ibm", api_key_index=1,
        updated_at=now - timedelta(hours=hours), experiment_type="heartbeat", backend="ibm_x")
    assert stuck_events([rec("a", 23)], now) == []
    (event,) = stuck_events([rec("a", 23), rec("b", 25)], now)
    assert event.key == "stuck:ibm:1:b" and "ibm key 1" in event.line
