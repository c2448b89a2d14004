"""A team on one bucket, as real processes: machine A submits, the collector C collects and
publishes, A sees the results; a lost directory is rebuilt from the store; the store is
checked."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from conftest import cli_env, script
from s3server import S3Study
from store_machines import circuit_file, make_record, put_raw, run

from qcourier.ledger import store as L
from qcourier.ledger.store import Ledger


def machine(tmp_path: Path, name: str, study: S3Study, **extra: str) -> dict[str, str]:
    """Settings of machine ``name``: its own ledger, the shared local service and bucket."""
    return cli_env(tmp_path, QCOURIER_LEDGER_DIR=str(tmp_path / name),
                   QCOURIER_SUBMISSIONS_PER_MINUTE="100", **study.env, **extra)


def status_json(tmp_path: Path, env: dict[str, str]) -> list[dict]:
    done = run([script("qcourier"), "status", "--json"], env, tmp_path)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.slow
def test_a_collector_on_another_machine_collects_and_publishes(tmp_path: Path,
                                                               s3_study: S3Study):
    a_env, c_env = machine(tmp_path, "a", s3_study), machine(tmp_path, "c", s3_study)
    for argv in (["-e", "bell", "--shots", "50"],
                 ["-e", "heavy_hex_code", "-p", "rounds=2", "--shots", "200"]):
        done = run([script("qsubmit"), *argv], a_env, tmp_path)  # submits, then pushes
        assert done.returncode == 0, done.stderr
        assert "s3://" not in done.stderr
    submitted = status_json(tmp_path, a_env)
    assert {r["status"] for r in submitted} <= {"submitted", "queued"}

    collect = run([script("qcollect")], c_env, tmp_path)  # pulls, collects, pushes
    assert collect.returncode == 0, collect.stderr
    assert "Completed: 2/2" in collect.stdout
    c = Ledger(tmp_path / "c")
    assert all(not p.is_relative_to(c.remote_dir) for p in c.local_files())
    for record in status_json(tmp_path, c_env):  # C decoded from A's circuits and snapshot
        payload = json.loads((c.directory / record["result_path"]).read_text())
        assert payload["analysis_error"] is None, payload["analysis_error"]
    assert (c.directory / "circuits").is_dir() and (c.directory / "snapshots").is_dir()

    latest = status_json(tmp_path, a_env)  # A pulls and sees them completed
    assert sorted(r["record_id"] for r in latest) == sorted(r["record_id"] for r in submitted)
    assert {r["status"] for r in latest} == {"completed"}
    a = Ledger(tmp_path / "a")
    for record in latest:
        data = (a.directory / record["result_path"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == record["result_sha256"]
    hh = next(r for r in latest if r["experiment_type"] == "heavy_hex_code")
    assert json.loads((a.directory / hh["result_path"]).read_text())["analysis"]["per_round"]
    again = run([script("qcollect")], a_env, tmp_path)  # nothing left to collect on A
    assert again.returncode == 0 and "Completed: 2/2" in again.stdout, again.stdout
    assert [p.name for p in a.local_files()] == sorted(p.name for p in a.local_files())
    assert sum(1 for _ in (a.directory / "jobs").iterdir()) == 2


def test_jobs_of_a_key_not_configured_here_are_left_to_a_machine_that_has_it(
        tmp_path: Path, s3_study: S3Study):
    a_env, c_env = machine(tmp_path, "a", s3_study), machine(tmp_path, "c", s3_study)
    a = Ledger(tmp_path / "a")
    L.append(a.new_file(), make_record(service="ibm", api_key_index=3, job_id="ibmjob0000001"))
    circuit_file(a)
    assert run([script("qcourier"), "sync"], a_env, tmp_path).returncode == 0
    done = run([script("qcollect")], c_env, tmp_path)  # C has no IBM key at all
    assert done.returncode == 0, done.stdout + done.stderr
    assert "ibmjob0000001" not in done.stdout + done.stderr
    assert [r["job_id"] for r in status_json(tmp_path, c_env)] == ["ibmjob0000001"]


@pytest.mark.slow
def test_recover_from_store_rebuilds_a_lost_directory_byte_for_byte(tmp_path: Path,
                                                                    s3_study: S3Study):
    a_env, b_env = machine(tmp_path, "a", s3_study), machine(tmp_path, "b", s3_study)
    for env, shots in ((a_env, "20"), (b_env, "21")):  # the same job twice: B would skip it
        assert run([script("qsubmit"), "-e", "bell", "--shots", shots], env,
                   tmp_path).returncode == 0
    assert run([script("qcollect")], a_env, tmp_path).returncode == 0
    a = Ledger(tmp_path / "a")
    before = {p.name: p.read_bytes() for p in a.local_files()}
    results = {p.name: p.read_bytes() for p in (a.directory / "jobs").iterdir()}
    writer = a.writer_id()
    shutil.rmtree(a.directory)  # the laptop is lost

    ambiguous = run([script("qcourier"), "recover", "--from-store"], a_env, tmp_path)
    assert ambiguous.returncode == 2
    [line] = ambiguous.stderr.splitlines()
    assert line.startswith("Error: name the lost directory's writer with --writer: ")
    assert writer in line
    done = run([script("qcourier"), "recover", "--from-store", "--writer", writer, "--json"],
               a_env, tmp_path)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["problems"] == [] and report["pulled_segments"] >= 1
    assert {p.name: p.read_bytes() for p in a.local_files()} == before
    for name, data in results.items():
        assert (a.directory / "jobs" / name).read_bytes() == data
    sync = json.loads(run([script("qcourier"), "sync", "--json"], a_env, tmp_path).stdout)
    assert sync["pushed"]["segments"] == 0 and sync["writer"] == writer
    assert len(status_json(tmp_path, a_env)) == 2  # its own job and B's

    refused = run([script("qcourier"), "recover", "--from-store", "--writer", writer],
                  a_env, tmp_path)
    assert refused.returncode == 2
    assert refused.stderr.startswith(f"Error: refusing to recover into {a.directory}")
    assert {p.name: p.read_bytes() for p in a.local_files()} == before


@pytest.mark.slow
def test_store_check_finds_what_is_missing_or_damaged(tmp_path: Path, s3_study: S3Study):
    env = machine(tmp_path, "a", s3_study)
    assert run([script("qsubmit"), "-e", "bell", "--shots", "20"], env, tmp_path).returncode == 0
    assert run([script("qcollect")], env, tmp_path).returncode == 0
    clean = run([script("qcourier"), "store", "check"], env, tmp_path)
    assert clean.returncode == 0, clean.stderr
    assert "nothing missing or damaged" in clean.stdout
    [record] = status_json(tmp_path, env)
    put_raw(s3_study, f"blobs/sha256/{record['result_sha256']}", b"damaged")
    snapshot = f"blobs/sha256/{record['backend_snapshot_sha256']}"
    s3_study.client().delete_object(Bucket=s3_study.bucket, Key=f"{s3_study.prefix}/{snapshot}")
    bad = run([script("qcourier"), "store", "check", "--json"], env, tmp_path)
    assert bad.returncode == 1
    problems = json.loads(bad.stdout)["problems"]
    assert len(problems) == 2
    assert any(p.startswith(f"damaged object 'blobs/sha256/{record['result_sha256']}'")
               for p in problems)
    assert any(p.startswith(f"missing object '{snapshot}'") for p in problems)
    assert len(bad.stderr.splitlines()) == 2


def test_dedupe_and_the_budget_see_the_teams_jobs(tmp_path: Path, s3_study: S3Study):
    a_env, b_env = machine(tmp_path, "a", s3_study), machine(tmp_path, "b", s3_study)
    assert run([script("qsubmit"), "-e", "bell", "--shots", "30"], a_env,
               tmp_path).returncode == 0
    assert run([script("qcollect")], a_env, tmp_path).returncode == 0  # usage recorded
    again = run([script("qsubmit"), "-e", "bell", "--shots", "30"], b_env, tmp_path)
    assert again.returncode == 0, again.stderr
    assert "Skipped:" in again.stderr  # the same job, completed on A
    assert Ledger(tmp_path / "b").local_files() == []
    budget = run([script("qcourier"), "budget", "--json"], b_env, tmp_path)
    assert budget.returncode == 0, budget.stderr
    [key] = json.loads(budget.stdout)["keys"]
    [record] = status_json(tmp_path, a_env)
    assert key["jobs_used"] == 1 and key["used_seconds"] == record["usage_seconds"] > 0
