"""The team store across processes: kill -9 during a sync, concurrent syncs, a store that
goes down and comes back, what each failure says, and nothing at all when none is set."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import cli_env, script
from s3server import ACCESS_KEY, SECRET_KEY, S3Study, SeaweedS3
from store_machines import circuit_file, run, statuses, write_files

from qcourier.ledger.store import Ledger
from qcourier.store.sync import Segment


def env_for(tmp_path: Path, ledger: str, store: dict[str, str], **extra: str) -> dict[str, str]:
    return cli_env(tmp_path, QCOURIER_LEDGER_DIR=str(tmp_path / ledger), **store, **extra)


def sync_json(tmp_path: Path, ledger: str, store: dict[str, str]) -> dict:
    done = run([script("qcourier"), "sync", "--json"], env_for(tmp_path, ledger, store),
               tmp_path)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def one_segment_per_file(study: S3Study, ledger: Ledger) -> None:
    """The bucket holds each of the ledger's files as exactly one segment, whole."""
    mine = [Segment.parse(k) for k in study.keys(f"ledger/{ledger.writer_id()}/")]
    assert sorted((s.name, s.start, s.end) for s in mine) == sorted(
        (p.name, 0, p.stat().st_size) for p in ledger.local_files())


# -- kill -9 and concurrency -------------------------------------------------------------------


FILES = 500


def test_kill_9_during_a_sync_then_a_sync_completes(tmp_path: Path, s3_study: S3Study):
    a = Ledger(tmp_path / "a")
    records = write_files(a, FILES, 2, "a")
    circuit_file(a)
    env = env_for(tmp_path, "a", s3_study.env, QCOURIER_STORE_WORKERS="1")
    # FILES segments, one upload at a time: enough that the sync is still running when the
    # test (which lists the bucket between its polls) has seen 20 of them, on a loaded machine
    sync = subprocess.Popen([script("qcourier"), "sync"], env=env, cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(3000):  # until 20 segments have landed (bounded; it takes ~1 s)
            if len(s3_study.keys("ledger/")) >= 20 or sync.poll() is not None:
                break
            time.sleep(0.01)
        os.kill(sync.pid, signal.SIGSTOP)  # freeze it where it was seen...
        landed = len(s3_study.keys("ledger/"))
        assert 20 <= landed < FILES, "the sync was not caught half-way"
    finally:
        sync.kill()  # ...and kill -9 it there
        sync.wait()
    report = sync_json(tmp_path, "a", s3_study.env)
    assert report["pushed"]["segments"] == FILES - landed
    one_segment_per_file(s3_study, a)
    c = Ledger(tmp_path / "c")
    assert sync_json(tmp_path, "c", s3_study.env)["problems"] == []
    assert sorted(statuses(c)) == sorted(r.record_id for r in records)


def test_kill_9_during_a_pull_then_a_pull_completes(tmp_path: Path, s3_study: S3Study):
    a, c = Ledger(tmp_path / "a"), Ledger(tmp_path / "c")
    records = write_files(a, 150, 2, "a")
    circuit_file(a)
    sync_json(tmp_path, "a", s3_study.env)
    env = env_for(tmp_path, "c", s3_study.env, QCOURIER_STORE_WORKERS="1")
    sync = subprocess.Popen([script("qcourier"), "sync"], env=env, cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(3000):  # until 20 segments have landed here (bounded)
            if len(c.pulled_files()) >= 20 or sync.poll() is not None:
                break
            time.sleep(0.01)
        os.kill(sync.pid, signal.SIGSTOP)
        landed = len(c.pulled_files())
        assert 20 <= landed < 150, "the pull was not caught half-way"
        assert len(statuses(c)) == 2 * landed  # what landed is whole, and folds
    finally:
        sync.kill()
        sync.wait()
    report = sync_json(tmp_path, "c", s3_study.env)
    assert (report["pulled"]["segments"], report["problems"]) == (150 - landed, [])
    assert sorted(statuses(c)) == sorted(r.record_id for r in records)


def test_two_syncs_of_one_machine_at_once_push_each_range_once(tmp_path: Path,
                                                                s3_study: S3Study):
    a = Ledger(tmp_path / "a")
    write_files(a, 40, 2, "a")
    circuit_file(a)
    env = env_for(tmp_path, "a", s3_study.env)
    both = [subprocess.Popen([script("qcourier"), "sync", "--json"], env=env, cwd=tmp_path,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(2)]
    outputs = [p.communicate(timeout=300) for p in both]
    assert [p.returncode for p in both] == [0, 0], outputs
    pushed = sorted(json.loads(out)["pushed"]["segments"] for out, _err in outputs)
    assert pushed == [0, 40]
    one_segment_per_file(s3_study, a)


def test_two_machines_syncing_at_once_end_with_one_union(tmp_path: Path, s3_study: S3Study):
    a, b = Ledger(tmp_path / "a"), Ledger(tmp_path / "b")
    ids = {r.record_id for r in write_files(a, 20, 3, "a") + write_files(b, 20, 3, "b")}
    circuit_file(a)
    circuit_file(b)
    procs = [subprocess.Popen([script("qcourier"), "sync"], cwd=tmp_path,
                              env=env_for(tmp_path, name, s3_study.env),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for name in ("a", "b")]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    for name in ("a", "b"):  # each catches what the other pushed after its pull
        sync_json(tmp_path, name, s3_study.env)
    assert set(statuses(a)) == set(statuses(b)) == ids
    one_segment_per_file(s3_study, a)
    one_segment_per_file(s3_study, b)


# -- the store down and back -------------------------------------------------------------------


@pytest.fixture
def own_server(tmp_path: Path):
    """A SeaweedFS of this test's own, to stop and start again (same ports and data)."""
    server = SeaweedS3(tmp_path / "s3").start()
    try:
        yield server
    finally:
        server.stop()


def settings_for(server: SeaweedS3, bucket: str) -> dict[str, str]:
    return {"QCOURIER_STORE": f"s3://{bucket}/study", "QCOURIER_S3_ENDPOINT": server.endpoint,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_DEFAULT_REGION": "us-east-1", "QCOURIER_STORE_TIMEOUT": "2"}


@pytest.mark.slow
def test_the_store_down_and_back(tmp_path: Path, own_server: SeaweedS3):
    store = settings_for(own_server, own_server.create_bucket("team"))
    env = env_for(tmp_path, "a", store)
    submit = [script("qsubmit"), "-e", "bell", "--shots", "10", "--force"]
    assert run(submit, env, tmp_path).returncode == 0
    assert sync_json(tmp_path, "a", store)["pushed"]["segments"] == 0  # qsubmit pushed it
    own_server.stop()
    # qsubmit spends nothing without the budget lease unless told (tests/test_store_lease.py)
    for argv in ([*submit, "--no-lease"], [script("qcollect")], [script("qcourier"), "status"],
                 [script("qcourier"), "budget"]):
        done = run(argv, env, tmp_path)
        assert done.returncode == 0, done.stderr
        [line] = [x for x in done.stderr.splitlines() if "s3://" in x]
        assert line.startswith("Warning: store s3://team/study at http://127.0.0.1:"), line
        assert "cannot be reached" in line and "catches up" in line
        assert SECRET_KEY not in done.stderr + done.stdout
    status = run([script("qcourier"), "status"], env, tmp_path)
    assert "2 job(s): 2 completed" in status.stdout  # the local ledger, whole
    sync = run([script("qcourier"), "sync"], env, tmp_path)
    assert sync.returncode == 1 and len(sync.stderr.splitlines()) == 1
    assert sync.stderr.startswith("Error: store s3://team/study")

    own_server.start()
    back = run([script("qcourier"), "status"], env, tmp_path)
    assert back.returncode == 0 and back.stderr == ""
    done = run([script("qcollect")], env, tmp_path)  # catches up: pushes what it missed
    assert done.returncode == 0 and "s3://" not in done.stderr, done.stderr
    assert sync_json(tmp_path, "a", store)["pushed"]["segments"] == 0
    c = Ledger(tmp_path / "c")
    assert sync_json(tmp_path, "c", store)["problems"] == []
    assert set(statuses(c).values()) == {"completed"} and len(statuses(c)) == 2


# -- what each failure says --------------------------------------------------------------------


@pytest.fixture
def silent_server():
    """A loopback server that accepts connections and never answers (a store timing out)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    stop.set()
    thread.join(timeout=5)
    for conn in held:
        conn.close()
    listener.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("case", ["credentials", "bucket", "endpoint", "timeout"])
def test_each_failure_is_one_line_naming_the_store_never_the_secret(
        case: str, tmp_path: Path, s3_study: S3Study, silent_server: str):
    wrong_secret = "wrong-secret-do-not-print-0123456789"
    store = dict(s3_study.env, QCOURIER_STORE_TIMEOUT="1")
    expected = {"credentials": "credentials refused", "bucket": "no such bucket",
                "endpoint": "cannot be reached", "timeout": "cannot be reached"}[case]
    if case == "credentials":
        store["AWS_SECRET_ACCESS_KEY"] = wrong_secret
    elif case == "bucket":
        store["QCOURIER_STORE"] = "s3://no-such-bucket-here/study"
    elif case == "endpoint":
        store["QCOURIER_S3_ENDPOINT"] = f"http://127.0.0.1:{free_port()}"
    else:
        store["QCOURIER_S3_ENDPOINT"] = silent_server
    name = store["QCOURIER_STORE"].removeprefix("s3://")
    a = Ledger(tmp_path / "a")
    write_files(a, 1, 1, "a")
    env = env_for(tmp_path, "a", store)
    status = run([script("qcourier"), "status"], env, tmp_path)
    sync = run([script("qcourier"), "sync"], env, tmp_path)
    assert status.returncode == 0 and "1 job(s): 1 queued" in status.stdout
    assert sync.returncode == 1
    for done, prefix in ((status, "Warning: "), (sync, "Error: ")):
        [line] = done.stderr.splitlines()
        assert line.startswith(f"{prefix}store s3://{name}") and expected in line, line
        for secret in (wrong_secret, SECRET_KEY, ACCESS_KEY):
            assert secret not in done.stderr + done.stdout


def test_a_malformed_store_setting_is_bad_usage(tmp_path: Path):
    env = env_for(tmp_path, "a", {"QCOURIER_STORE": "ftp://x"})
    done = run([script("qcourier"), "sync"], env, tmp_path)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "Error: bad setting QCOURIER_STORE: 'ftp://x' is not s3://BUCKET/PREFIX (a bucket name "
        "of 3-63 lower-case letters, digits, '.' or '-')"]


# -- no store set: nothing changes -------------------------------------------------------------


@pytest.mark.slow
def test_without_a_store_no_command_imports_boto3_or_writes_store_state(tmp_path: Path):
    env = cli_env(tmp_path)
    assert run([script("qsubmit"), "-e", "bell", "--shots", "10"], env, tmp_path).returncode == 0
    assert run([script("qcollect")], env, tmp_path).returncode == 0
    for argv in (["qcourier", "status"], ["qcollect"], ["qcourier", "report"]):
        done = subprocess.run([sys.executable, "-X", "importtime", script(argv[0]), *argv[1:]],
                              env=env, cwd=tmp_path, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        assert "boto" not in done.stderr and "Warning" not in done.stderr, argv
    assert not (tmp_path / "ledger" / "store").exists()
    sync = run([script("qcourier"), "sync"], env, tmp_path)
    assert sync.returncode == 2 and sync.stderr.startswith("Error: no team store is configured")


def test_on_a_terminal_sync_shows_a_progress_bar_then_its_counts(tmp_path: Path,
                                                                  s3_study: S3Study):
    from terminal import run_on_pty

    a = Ledger(tmp_path / "a")
    write_files(a, 30, 1, "a")
    circuit_file(a)
    screen = run_on_pty([script("qcourier"), "sync"], env=env_for(tmp_path, "a", s3_study.env),
                        cwd=tmp_path, columns=100)
    assert screen.returncode == 0, screen.text
    assert "uploading" in screen.stream_text and "30/30" in screen.stream_text
    assert "Pushed 30 segment(s)" in screen.text


def test_a_local_failure_of_the_push_keeps_the_commands_outcome(tmp_path: Path,
                                                                 s3_study: S3Study):
    env = env_for(tmp_path, "a", s3_study.env)
    (tmp_path / "a" / "store" / "pushed.json").mkdir(parents=True)  # cannot be written
    done = run([script("qsubmit"), "-e", "bell", "--shots", "10"], env, tmp_path)
    assert done.returncode == 0, done.stderr
    assert "submitted" in done.stdout  # its table, as without a store
    [line] = [x for x in done.stderr.splitlines() if "store" in x]
    assert line.startswith("Warning: team store sync skipped: cannot write ")


def test_a_skipped_object_is_reported_once_at_the_edges_and_by_sync_every_time(
        tmp_path: Path, s3_study: S3Study):
    from store_machines import put_raw

    put_raw(s3_study, "ledger/notes.txt", b"left here by hand")
    env = env_for(tmp_path, "a", s3_study.env)
    first, second = (run([script("qcourier"), "status"], env, tmp_path) for _ in range(2))
    assert first.stderr.splitlines() == [
        "Warning: foreign object 'ledger/notes.txt' in the store: not ledger/<writer>/"
        "<file>/<start>-<end>.jsonl; skipped"]
    assert second.returncode == 0 and second.stderr == ""
    for _ in range(2):
        sync = run([script("qcourier"), "sync"], env, tmp_path)
        assert sync.returncode == 1 and "'ledger/notes.txt'" in sync.stderr
