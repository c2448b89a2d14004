"""Notifications: sent through apprise's json:// to a real HTTP server on loopback."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from qcourier.cli import collect, submit
from qcourier.notify import SENT_FILE


class _Sink:
    """A loopback HTTP server recording each POSTed JSON body; ``fail`` answers 500."""

    def __init__(self):
        self.bodies: list[dict] = []
        self.fail = False
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                data = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if sink.fail:
                    self.send_response(500)
                else:
                    sink.bodies.append(json.loads(data))
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
