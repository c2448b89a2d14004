"""The budget guard holds against concurrent submissions: on one machine (the key's lock)
and across machines sharing a team store (the budget lease in the bucket, SeaweedFS on
loopback)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from conftest import cli_env, ledger_records, script
from test_ibm_faults import PENDING, Watched, service_jobs

BELL = ["-e", "bell", "--shots", "50"]
WAITING_FOR_THE_LOCK = "waiting up to 300 s for another qsubmit or qcollect submitting for this key"
REFUSED = "remain in the 28-day window"


def one_job_estimate(env: dict[str, str], cwd: Path) -> float:
    """A bell job's estimated QPU seconds, from a dry run (which writes nothing)."""
    dry = subprocess.run([script("qsubmit"), *BELL, "--dry-run", "--json"], env=env, cwd=cwd,
                         capture_output=True, text=True, timeout=300)
    assert dry.returncode == 0, dry.stderr
    [job] = json.loads(dry.stdout)["jobs"]
    return job["estimated_qpu_seconds"]


def finish_both(first: Watched, second: Watched) -> list[tuple[int, str, str]]:
    return sorted([first.finish(), second.finish()], key=lambda done: done[0])


def test_two_qsubmits_on_one_machine_racing_for_the_last_seconds_spend_one_job(tmp_path: Path):
    """Two qsubmit processes for one key, with room in its budget for one job: both plan
    (fold the ledger, transpile) while the key's lock is held, and both say they are waiting
    for it; then the lock is let go. The one that takes it second folds the ledger again
    under the lock, sees the other's job, and is refused. A guard that counted the fold
    made before the lock would let both through."""
    from filelock import FileLock

    env = cli_env(tmp_path, QCOURIER_LOCAL_QUEUE_SECONDS="600")
    estimate = one_job_estimate(env, tmp_path)
    race = dict(env, QCOURIER_BUDGET_SECONDS=str(1.5 * estimate))
    with FileLock(str(tmp_path / "ledger" / ".submit-local-local.lock")):
        racers = [Watched([script("qsubmit"), *BELL, "--force"], race, tmp_path)
                  for _ in range(2)]
        for racer in racers:
            assert racer.wait_for(WAITING_FOR_THE_LOCK), racer.finish()
    (ok, out, _), (refused, _, why) = finish_both(*racers)
    assert (ok, refused) == (0, 1), (out, why)
    assert REFUSED in why and "Error: local:" in why
    assert service_jobs(tmp_path / "service") == 1
    assert [r["status"] for r in ledger_records(tmp_path / "ledger")] == ["submitted"]
    assert all(r["status"] in PENDING for r in ledger_records(tmp_path / "ledger"))
