"""Issue 17: each IBM failure class diagnosed in one line, ids never trusted, intents settled
when nothing was made, and the budget guard holding against concurrent processes."""

from __future__ import annotations

import errno
import json
import os
import queue
import subprocess
import threading
import time
from pathlib import Path

import pytest
from conftest import cli_env, ledger_records, script
from ibm_emulator import IBMEmulator

from qcourier.cli import collect, submit

BELL = ["-e", "bell", "--shots", "50"]


@pytest.fixture
def emu(monkeypatch):
    with IBMEmulator(queue_seconds=0.2, run_seconds=0.2) as emulator:
        for name, value in emulator.client_env().items():
            monkeypatch.setenv(name, value)
        monkeypatch.setenv("QCOURIER_IBM_URL", emulator.api_url)
        monkeypatch.setenv("QCOURIER_SERVICE", "ibm")
        monkeypatch.setenv("QCOURIER_IBM_RETRIES", "0")
        monkeypatch.setenv("IBM_QUANTUM_TOKEN", "good-token-0")
        yield emulator
        assert emulator.errors == []


def error_line(result) -> str:
    [line] = [x for x in result.stderr.splitlines() if x.startswith("Error:")]
    assert "good-token" not in result.output and "Max retries exceeded" not in line
    return line


def posts(emu: IBMEmulator) -> int:
    return sum(1 for m, p, _ in emu.requests if (m, p) == ("POST", "/api/v1/jobs"))


def test_401_on_the_api_is_refused_credentials_not_an_unknown_backend(emu, invoke):
    emu.fail("GET", r"/api/v1/backends", 401, count=100)
    result = invoke(submit.main, [*BELL, "--backend", "ibm_fez"])
    assert result.exit_code == 1
    line = error_line(result)
    assert "key 0 (IBM_QUANTUM_TOKEN): IBM Quantum refused the credentials" in line
    assert "unknown backend" not in line


def test_an_unknown_backend_is_bad_usage_when_the_listing_worked(emu, invoke):
    result = invoke(submit.main, [*BELL, "--backend", "ibm_nowhere"])
    assert result.exit_code == 2
    assert "unknown backend 'ibm_nowhere'" in error_line(result) and "ibm_fez" in result.stderr


def test_a_key_refused_at_iam_says_so_at_once(emu, invoke, monkeypatch):
    monkeypatch.setenv("IBM_QUANTUM_TOKEN", "bad-secret-token")
    result = invoke(submit.main, BELL)
    assert result.exit_code == 1
    assert "IBM Cloud IAM (127.0.0.1) refused the API key (HTTP 400)" in error_line(result)
    assert "bad-secret-token" not in result.output


@pytest.mark.parametrize("where", ["api", "iam"])
def test_an_unresolvable_host_is_named(emu, invoke, monkeypatch, where):
    if where == "api":
        monkeypatch.setenv("QCOURIER_IBM_URL", "http://nonexistent.invalid/api/v1")
    else:
        monkeypatch.setenv("IAM_URL", "http://nonexistent.invalid")
    result = invoke(submit.main, BELL)
    assert result.exit_code == 1
    line = error_line(result)
    assert "does not resolve (DNS): nonexistent.invalid" in line
    assert ("IBM Cloud IAM" in line) == (where == "iam")
    assert "credentials" not in line


def test_a_refused_connection_is_named(emu, invoke, monkeypatch):
    monkeypatch.setenv("QCOURIER_IBM_URL", "http://127.0.0.1:9/api/v1")  # discard port: closed
    result = invoke(submit.main, BELL)
    assert result.exit_code == 1
    assert "cannot reach IBM Quantum" in error_line(result) and "refused by 127.0.0.1" in result.stderr


@pytest.mark.parametrize("status", [400, 422])
def test_a_4xx_on_submit_is_permanent_and_settles_the_intent(emu, invoke, tmp_path: Path, status):
    emu.fail("POST", r"/jobs$", status, count=5)
    result = invoke(submit.main, BELL)
    assert result.exit_code == 1
    assert f"IBM Quantum refused submit to ibm_fez (HTTP {status}): " in error_line(result)
    assert "may have been submitted" not in result.output
    assert posts(emu) == 1
    [record] = ledger_records(tmp_path / "ledger")
    assert record["status"] == "submit_failed" and record["job_id"] is None


def test_a_429_that_outlasts_the_retries_settles_the_intent(emu, invoke, tmp_path: Path):
    emu.fail("POST", r"/jobs$", 429, count=5)
    result = invoke(submit.main, BELL)
    assert result.exit_code == 1
    assert "rate limit reached (submit to ibm_fez, HTTP 429)" in error_line(result)
    assert "Nothing was submitted." in result.stdout
    [record] = ledger_records(tmp_path / "ledger")
    assert record["status"] == "submit_failed"  # no pending slot held for the grace period
    assert emu.jobs == {}


def test_a_503_storm_stops_at_the_deadline_in_one_short_line(emu, invoke, monkeypatch):
    monkeypatch.setenv("QCOURIER_IBM_DEADLINE", "2")
    monkeypatch.setenv("QCOURIER_IBM_RETRIES", "5")
    emu.fail("GET", r"/backends/ibm_fez/", 503, count=10_000)
    result = invoke(submit.main, [*BELL, "--backend", "ibm_fez"])
    assert result.exit_code == 1
    line = error_line(result)
    assert "gave up on backend ibm_fez after 2 s of IBM Quantum calls (QCOURIER_IBM_DEADLINE)" in line
    assert len(line) < 300


def test_a_hung_submission_is_bounded_and_may_have_been_submitted(emu, invoke, tmp_path: Path,
                                                                   monkeypatch):
    # 5 s: every call before the POST (the backend listing above all) must answer within it on
    # a loaded machine too; the POST is held until the emulator stops.
    monkeypatch.setenv("QCOURIER_IBM_TIMEOUT", "5")
    emu.hang("POST", r"/jobs$", seconds=120)
    result = invoke(submit.main, BELL)
    assert result.exit_code == 1
    assert "may have been submitted — the next `qcollect` will find out" in result.stderr
    assert "Nothing was submitted." not in result.stdout
    [record] = ledger_records(tmp_path / "ledger")
    assert record["status"] == "submitting"  # left for qcollect to settle


@pytest.mark.parametrize("bad_id", ["/some/dir/pwned", "../x"])
def test_a_job_id_from_the_service_is_never_trusted(emu, invoke, tmp_path: Path, bad_id):
    emu.next_job_ids.append(bad_id.replace("/some/dir", str(tmp_path / "some" / "dir")))
    result = invoke(submit.main, BELL)
    assert result.exit_code == 1
    assert "which is not a job id" in error_line(result)
    [record] = ledger_records(tmp_path / "ledger")
    assert record["status"] == "submit_failed" and record["job_id"] is None
    assert "not a job id" in record["error"]
    invoke(collect.main, [])
    assert not (tmp_path / "some").exists() and not (tmp_path / "ledger" / "x.json").exists()


def test_a_job_id_in_the_ledger_that_leaves_its_directory_is_refused(emu, invoke, tmp_path: Path):
    out = json.loads(invoke(submit.main, [*BELL, "--json"]).stdout)
    path = Path(out["ledger_path"])
    line = json.loads(path.read_text().splitlines()[-1])
    real = line["job_id"]
    line.update(job_id="../x", record_id="tampered0000")
    with open(path, "a") as fh:
        fh.write(json.dumps(line) + "\n")
    emu.jobs["../x"] = emu.jobs[real]
    result = invoke(collect.main, ["--watch", "--interval", "0.3"])
    assert result.exit_code == 1
    by_id = {r["record_id"]: r for r in ledger_records(tmp_path / "ledger")}
    assert by_id["tampered0000"]["status"] == "error"
    assert "not a job id" in by_id["tampered0000"]["error"]
    assert not (tmp_path / "ledger" / "x.json").exists()
    assert [p.name for p in (tmp_path / "ledger" / "jobs").iterdir()] == [f"{real}.json"]


def test_dry_run_prints_the_plan_against_the_budget_and_says_planned(emu, invoke):
    result = invoke(submit.main, [*BELL, "--dry-run", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert [j["status"] for j in data["jobs"]] == ["planned"]
    [line] = data["budget"]
    assert line.startswith("ibm key 0: the plan needs about ") and "of 600 s remain" in line
    assert "Budget: ibm key 0: the plan needs about" in result.stderr


def test_concurrent_qsubmits_spend_at_most_the_budget(tmp_path: Path):
    """Four qsubmit processes at once, room in the budget for one job: exactly one is made."""
    env = cli_env(tmp_path)
    plan = subprocess.run([script("qsubmit"), *BELL, "--dry-run", "--json"], env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert plan.returncode == 0, plan.stderr
    estimate = json.loads(plan.stdout)["jobs"][0]["estimated_qpu_seconds"]
    env["QCOURIER_BUDGET_SECONDS"] = str(estimate * 1.5)
    env["QCOURIER_LOCAL_QUEUE_SECONDS"] = "600"  # stay pending: reserved, not yet used
    procs = [subprocess.Popen([script("qsubmit"), *BELL, "--force"], env=env, cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(4)]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        results.append((proc.returncode, out, err))
    assert sorted(code for code, _, _ in results) == [0, 1, 1, 1], results
    refused = [err for code, _, err in results if code == 1]
    assert all("remain in the 28-day window" in err for err in refused)
    records = ledger_records(tmp_path / "ledger")
    assert [r["status"] for r in records] == ["submitted"]


PENDING = ("submitting", "submitted", "queued", "running")


def service_jobs(*directories: Path) -> int:
    """Jobs the local service holds in these directories (one spec file each)."""
    return sum(1 for d in directories for p in d.glob("*.json") if "." not in p.stem)


def queue_with_one_deferred(tmp_path: Path) -> tuple[dict[str, str], float]:
    """A ledger with one job queued at the service (for 600 s) and one deferred behind it by
    the pending cap; returns the environment and a job's estimated QPU seconds."""
    env = cli_env(tmp_path, QCOURIER_LOCAL_QUEUE_SECONDS="600")
    setup = subprocess.run([script("qsubmit"), *BELL, "--repeat", "2", "--max-pending", "1"],
                           env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert setup.returncode == 0, setup.stderr
    records = ledger_records(tmp_path / "ledger")
    assert sorted(r["status"] for r in records) == ["deferred", "submitted"]
    [estimate] = {r["estimated_qpu_seconds"] for r in records}
    return env, estimate


def test_the_drain_takes_the_keys_submission_lock(tmp_path: Path):
    """While another process submits for the key (holds its lock), qcollect leaves the
    deferred job alone; once the lock is free, the next qcollect submits it."""
    from filelock import FileLock

    env, _ = queue_with_one_deferred(tmp_path)
    collect_ = [script("qcollect"), "--max-pending", "2"]
    with FileLock(str(tmp_path / "ledger" / ".submit-local-local.lock")):
        held = subprocess.run(collect_, env=env, cwd=tmp_path, capture_output=True, text=True,
                              timeout=300)
    assert held.returncode == 0, held.stderr
    assert "deferred: another process is submitting for this key" in held.stdout
    assert service_jobs(tmp_path / "service") == 1
    free = subprocess.run(collect_, env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert free.returncode == 0, free.stderr
    assert "submitted (was deferred)" in free.stdout
    assert service_jobs(tmp_path / "service") == 2


class Watched:
    """A real process whose output is read as it comes, so a test can wait for a line."""

    def __init__(self, args: list[str], env: dict[str, str], cwd: Path):
        self.proc = subprocess.Popen(args, env=env, cwd=cwd, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        self.out: list[str] = []
        self.err: list[str] = []
        self.lines: queue.Queue[str | None] = queue.Queue()
        self._readers = [threading.Thread(target=self._read, args=(pipe, into), daemon=True)
                         for pipe, into in ((self.proc.stdout, self.out),
                                            (self.proc.stderr, self.err))]
        for reader in self._readers:
            reader.start()

    def _read(self, pipe, into: list[str]) -> None:
        for line in pipe:
            into.append(line)
            self.lines.put(line)
        self.lines.put(None)

    def wait_for(self, text: str, timeout: float = 300) -> bool:
        """Whether a line with ``text`` came (True) before the process ended (False)."""
        deadline, ended = time.monotonic() + timeout, 0
        while ended < 2:
            line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            if line is None:
                ended += 1
            elif text in line:
                return True
        return False

    def finish(self) -> tuple[int, str, str]:
        code = self.proc.wait(timeout=300)
        for reader in self._readers:
            reader.join(timeout=60)
        return code, "".join(self.out), "".join(self.err)


def wait_for_a_reader(fifo: Path, process: Watched, timeout: float = 300) -> int:
    """Block until ``process`` (or any) opens ``fifo`` to read; return a write end of it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:  # ENXIO: no reader yet
            if exc.errno != errno.ENXIO:
                raise
        assert process.proc.poll() is None, process.finish()
        time.sleep(0.05)
    raise AssertionError(f"nothing opened {fifo} in {timeout} s")


@pytest.mark.parametrize("room", ["deferred_only", "one_more"])
def test_qsubmit_against_a_draining_qcollect_spends_at_most_the_budget(tmp_path: Path, room):
    """A qsubmit on the key whose deferred queue a qcollect is draining, arriving while the
    drain is between its budget check and its intent line, waits for it: together they
    spend at most the budget and keep the pending cap (two jobs).

    The budget has room for the deferred job alone (``deferred_only``: a deferred job's
    estimate is reserved from the moment it is recorded, so the queue goes first) or for it
    and exactly one more job (``one_more``). The drain is held where it asks the service for
    its usage (for the guard, under the key's lock): a FIFO among the local service's job
    files blocks that call until the test writes to it. The qsubmit uses a service directory
    of its own (else its own usage call would block too; the ledger, the key and its lock
    are the same). Once the qsubmit says it is waiting for the key (or, if the drain did not
    hold the lock, has finished), the drain is let go. Without the drain's lock, ``one_more``
    ends with three jobs at the service.
    """
    env, estimate = queue_with_one_deferred(tmp_path)
    extra = 0.5 if room == "deferred_only" else 1.5  # the 0.5 keeps float sums off the edge
    limit = (2 + extra) * estimate
    race = dict(env, QCOURIER_BUDGET_SECONDS=str(limit))
    fifo = tmp_path / "service" / "zzzzzzzzzzzzzzzzzzzz.json"
    os.mkfifo(fifo)
    drain = Watched([script("qcollect"), "--max-pending", "2"], race, tmp_path)
    writer = wait_for_a_reader(fifo, drain)
    qsubmit = Watched([script("qsubmit"), *BELL, "--force", "--max-pending", "2"],
                      dict(race, QCOURIER_LOCAL_SERVICE_DIR=str(tmp_path / "service2")), tmp_path)
    waited = qsubmit.wait_for("waiting up to 300 s for another qsubmit or qcollect submitting "
                              "for this key")
    fifo.unlink()
    os.write(writer, b"not a job")  # the drain's usage call skips it, and goes on
    os.close(writer)
    drained, submitted = drain.finish(), qsubmit.finish()
    assert drained[0] == 0 and "submitted (was deferred)" in drained[1], drained

    records = ledger_records(tmp_path / "ledger")
    at_service = [r for r in records if r["status"] in PENDING]
    made = service_jobs(tmp_path / "service", tmp_path / "service2")
    assert len(at_service) == made == 2, (drained, submitted)  # the cap holds
    assert waited, submitted
    reserved = sum(r["estimated_qpu_seconds"] for r in records
                   if r["status"] in (*PENDING, "deferred"))
    assert reserved <= limit + 1e-9  # never negative: not even one job over
    budget = subprocess.run([script("qcourier"), "budget", "--no-service", "--json"], env=race,
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)
    [key] = json.loads(budget.stdout)["keys"]
    assert key["remaining_seconds"] == pytest.approx(limit - reserved)
    assert key["remaining_seconds"] >= -1e-9
    if room == "deferred_only":  # the room was the queue's
        assert submitted[0] == 1 and "remain in the 28-day window" in submitted[2], submitted
        assert len(records) == 2
    else:  # it fitted the budget, and waits behind the pending cap
        assert submitted[0] == 0, submitted
        assert sorted(r["status"] for r in records if r["status"] not in PENDING) == ["deferred"]
