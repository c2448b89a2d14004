"""The budget guard holds against concurrent submissions: on one machine (the key's lock)
and across machines sharing a team store (the budget lease in the bucket, SeaweedFS on
loopback)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
from conftest import cli_env, ledger_records, script
from s3server import S3Study
from store_machines import put_raw, store_of
from test_ibm_faults import PENDING, Watched, service_jobs, wait_for_a_reader

from qcourier.store.lease import MARGIN_SECONDS, Lease, LeaseBusy, LeaseLost
from qcourier.store.objects import ObjectStore, StoreLocation, StoreUnavailable

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


# -- the lease, against SeaweedFS ---------------------------------------------------------------

def lease_of(study: S3Study, command: str = "test", ttl: float = 60.0, **options) -> Lease:
    return Lease(store_of(study), "local", None, ttl=ttl, command=command, **options)


def lease_body(study: S3Study, key: str = "leases/local/local.json") -> dict:
    data = store_of(study).get(key)
    assert data is not None, f"no lease object {key}"
    return json.loads(data[0])


def wait_until_aged(study: S3Study, seconds: float, key: str = "leases/local/local.json") -> None:
    """Until the server's clock says the lease object is older than ``seconds`` (bounded)."""
    store = store_of(study)
    for _ in range(300):
        found = store.get_aged(key)
        assert found is not None and found.age_seconds is not None
        if found.age_seconds > seconds:
            return
        time.sleep(0.1)
    raise AssertionError(f"the lease did not age past {seconds} s in 30 s")


def test_a_lease_is_exclusive_and_names_its_holder(s3_study: S3Study):
    first, second = lease_of(s3_study, "qsubmit"), lease_of(s3_study, "qcollect")
    first.acquire(wait=0)
    told = []
    with pytest.raises(LeaseBusy) as busy:
        second.acquire(wait=1, on_wait=told.append)
    holder = f"qsubmit pid {os.getpid()} on {socket.gethostname()}"
    assert holder in str(busy.value) and "gave up after 1 s" in str(busy.value)
    assert told == [f"local: waiting up to 1 s for the budget lease in store "
                    f"{store_of(s3_study).location}, held by {told[0].split('held by ')[1]}"]
    assert holder in told[0] and "\n" not in told[0]
    body = lease_body(s3_study)
    assert body["holder"]["command"] == "qsubmit" and body["ttl_seconds"] == 60.0
    assert first.release() is True
    second.acquire(wait=0)  # free again
    assert lease_body(s3_study)["holder"]["command"] == "qcollect"


def test_only_the_holder_releases(s3_study: S3Study):
    holder, other = lease_of(s3_study), lease_of(s3_study)
    holder.acquire(wait=0)
    assert other.release() is False  # never held it
    assert s3_study.keys("leases/") == ["leases/local/local.json"]
    assert holder.release() is True and s3_study.keys("leases/") == []
    assert holder.release() is False  # twice: nothing to do


def test_a_stale_lease_is_taken_over_by_exactly_one_of_two(s3_study: S3Study):
    """A holder that died (its lease, stating a ttl of 0, not rewritten since): two
    contenders read it, both see it stale, both try to take it over on its ETag at the same
    moment (a barrier between the read and the write); one wins, the other is told who."""
    dead = {"holder": {"command": "qsubmit", "pid": 1, "host": "gone", "token": "x"},
            "ttl_seconds": 0, "acquired": "2026-01-01T00:00:00+00:00"}
    put_raw(s3_study, "leases/local/local.json", json.dumps(dead).encode())
    wait_until_aged(s3_study, MARGIN_SECONDS)
    barrier = threading.Barrier(2, timeout=60)

    class Racing(ObjectStore):
        def put_if_match(self, key, data, etag):
            barrier.wait()  # both have read the stale lease and judged it stale
            return super().put_if_match(key, data, etag)

    racers = [Lease(Racing(store_of(s3_study).location), "local", None, command=f"racer{n}")
              for n in range(2)]
    outcomes: list[str] = []

    def race(lease: Lease) -> None:
        try:
            lease.acquire(wait=0)
            outcomes.append(f"won {lease.holder.command}")
        except LeaseBusy as exc:
            outcomes.append(f"lost: {exc}")

    threads = [threading.Thread(target=race, args=(lease,)) for lease in racers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    [won] = [o for o in outcomes if o.startswith("won")]
    [lost] = [o for o in outcomes if o.startswith("lost")]
    winner = won.removeprefix("won ")
    assert f"held by {winner} pid" in lost
    assert lease_body(s3_study)["holder"]["command"] == winner
    assert [lease.took_over for lease in racers if lease.holder.command == winner] == [
        "qsubmit pid 1 on gone since 2026-01-01 00:00:00 UTC"]


def test_a_held_lease_is_renewed_and_never_stale(s3_study: S3Study):
    """Held with a ttl of 5 s and renewed by its thread, the lease is rewritten (each time
    with a new ETag) and a contender never finds it stale, however long it lasts."""
    holder = lease_of(s3_study, ttl=5)
    holder.acquire(wait=0)
    store = store_of(s3_study)
    with holder.renewed():
        etags = set()
        for _ in range(300):  # until four renewals are seen (about 4 s; bounded)
            found = store.get_aged("leases/local/local.json")
            etags.add(found.etag)
            if json.loads(found.data)["renewals"] >= 4:
                break
            time.sleep(0.1)
        assert len(etags) >= 4
        with pytest.raises(LeaseBusy):
            lease_of(s3_study).acquire(wait=0)
        holder.confirm()
    assert holder.release() is True


def test_a_lease_taken_over_is_lost_for_good(s3_study: S3Study):
    holder = lease_of(s3_study)
    holder.acquire(wait=0)
    holder.confirm()
    _, etag = store_of(s3_study).get("leases/local/local.json")
    assert store_of(s3_study).put_if_match("leases/local/local.json", b"{}", etag)
    assert holder.renew() is False
    with pytest.raises(LeaseLost, match="taken over by another holder"):
        holder.confirm()
    assert holder.release() is False
    assert store_of(s3_study).get("leases/local/local.json")[0] == b"{}"  # not the holder's


def test_an_unreadable_lease_object_is_held_until_the_longest_ttl(s3_study: S3Study):
    put_raw(s3_study, "leases/local/local.json", b"\x00not json")
    with pytest.raises(LeaseBusy, match="an unreadable lease object .it counts as stale once "
                                        "300 s old"):
        lease_of(s3_study).acquire(wait=0)


def test_a_store_that_cannot_be_reached_gives_no_lease(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "some-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "some-secret")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens there
    store = ObjectStore(StoreLocation.parse("s3://nowhere/p", f"http://127.0.0.1:{port}"),
                        timeout=1, attempts=1)
    with pytest.raises(StoreUnavailable, match="cannot be reached"):
        Lease(store, "local", None).acquire(wait=0)


# -- the budget across machines: real processes -------------------------------------------------

WAITING_FOR_THE_LEASE = "waiting up to 330 s for the budget lease in store"


def machine(tmp_path: Path, name: str, study: S3Study, **extra: str) -> dict[str, str]:
    """The environment of a "machine": its own ledger directory, the team's bucket."""
    return cli_env(tmp_path, **{"QCOURIER_LEDGER_DIR": str(tmp_path / name), **study.env,
                                **extra})


@pytest.mark.slow
def test_two_machines_racing_for_the_last_seconds_of_a_key_spend_one_job(tmp_path: Path,
                                                                          s3_study: S3Study):
    """Two machines (two ledger directories, one bucket, one local service whose budget
    they share), room in the budget for one job. The test holds the key's lease; both
    qsubmits plan and say they wait for it; it is let go. The one that takes it second
    pulls the other's job inside the lease and is refused: one job, never two. A lease
    without the pull (or no lease) lets both through."""
    estimate = one_job_estimate(cli_env(tmp_path), tmp_path)
    budget = {"QCOURIER_BUDGET_SECONDS": str(1.5 * estimate),
              "QCOURIER_LOCAL_QUEUE_SECONDS": "600"}
    held = lease_of(s3_study, "test")
    held.acquire(wait=0)
    try:
        racers = [Watched([script("qsubmit"), *BELL, "--force"],
                          machine(tmp_path, name, s3_study, **budget), tmp_path)
                  for name in ("a", "b")]
        for racer in racers:
            assert racer.wait_for(WAITING_FOR_THE_LEASE), racer.finish()
    finally:
        held.release()
    (ok, out, warned), (refused, _, why) = finish_both(*racers)
    assert (ok, refused) == (0, 1), (out, warned, why)
    assert REFUSED in why and "Error: local:" in why
    assert "Warning: store" not in warned and "took over" not in warned, warned
    assert service_jobs(tmp_path / "service") == 1
    mine = [r for name in ("a", "b") for r in ledger_records(tmp_path / name)
            if r["status"] in PENDING]
    assert len(mine) == 1
    assert s3_study.keys("leases/") == []  # released


@pytest.mark.slow
def test_a_killed_holders_lease_expires_and_the_next_qsubmit_proceeds(tmp_path: Path,
                                                                       s3_study: S3Study):
    """A qcollect draining its deferred queue holds the key's lease (ttl 5 s) and is held
    where its budget check asks the service for its usage (a FIFO among the service's job
    files); it is killed with SIGKILL there. Another machine's qsubmit finds the lease,
    waits (saying whose it is) until it is stale (not renewed for 5 s), takes it over and
    submits; it says whose lease it took over, and releases it."""
    a = machine(tmp_path, "a", s3_study, QCOURIER_LOCAL_QUEUE_SECONDS="600",
                QCOURIER_LEASE_SECONDS="5")
    setup = subprocess.run([script("qsubmit"), *BELL, "--repeat", "2", "--max-pending", "1"],
                           env=a, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert setup.returncode == 0, setup.stderr
    fifo = tmp_path / "service" / "zzzzzzzzzzzzzzzzzzzz.json"
    os.mkfifo(fifo)
    drain = Watched([script("qcollect"), "--max-pending", "2"], a, tmp_path)
    writer = wait_for_a_reader(fifo, drain)
    try:
        holder = lease_body(s3_study)["holder"]
        assert (holder["command"], holder["pid"]) == ("qcollect", drain.proc.pid)
    finally:
        drain.proc.kill()
        drain.finish()
        os.close(writer)
        fifo.unlink()
    b = machine(tmp_path, "b", s3_study, QCOURIER_LOCAL_SERVICE_DIR=str(tmp_path / "service2"))
    after = subprocess.run([script("qsubmit"), *BELL, "--force"], env=b, cwd=tmp_path,
                           capture_output=True, text=True, timeout=300)
    assert after.returncode == 0, after.stderr
    dead = f"qcollect pid {drain.proc.pid} on {socket.gethostname()}"
    # It waited, naming the holder, if it came before the lease went stale (it may come after)
    assert f"held by {dead}" in after.stderr or WAITING_FOR_THE_LEASE not in after.stderr
    assert f"Warning: local: took over the stale budget lease of {dead}" in after.stderr
    assert service_jobs(tmp_path / "service2") == 1
    assert s3_study.keys("leases/") == []


def test_with_the_store_down_qsubmit_refuses_unless_told_and_the_drain_waits(
        tmp_path: Path, s3_study: S3Study):
    """No store, no lease: qsubmit submits nothing and says so in one line naming the store
    and --no-lease; with --no-lease it submits on this machine's ledger, with a warning. A
    qcollect leaves its deferred job deferred, saying why."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens there: the store is down
    down = machine(tmp_path, "a", s3_study, QCOURIER_S3_ENDPOINT=f"http://127.0.0.1:{port}",
                   QCOURIER_STORE_TIMEOUT="1", QCOURIER_LOCAL_QUEUE_SECONDS="600")
    refused = subprocess.run([script("qsubmit"), *BELL], env=down, cwd=tmp_path,
                             capture_output=True, text=True, timeout=300)
    assert refused.returncode == 1, refused.stderr
    [error] = [line for line in refused.stderr.splitlines() if line.startswith("Error:")]
    assert error.startswith(f"Error: local: store {s3_study.url} at http://127.0.0.1:{port} "
                            "cannot be reached, so neither the key's budget lease")
    assert error.endswith("nothing submitted; to submit against this machine's ledger alone, "
                          "rerun with --no-lease")
    assert service_jobs(tmp_path / "service") == 0 and ledger_records(tmp_path / "a") == []
    local = subprocess.run([script("qsubmit"), *BELL, "--no-lease", "--repeat", "2",
                            "--max-pending", "1"], env=down, cwd=tmp_path, capture_output=True,
                           text=True, timeout=300)
    assert local.returncode == 0, local.stderr
    assert "Warning: --no-lease: the budget guard sees only this machine's ledger" in local.stderr
    assert sorted(r["status"] for r in ledger_records(tmp_path / "a")) == ["deferred", "submitted"]
    drain = subprocess.run([script("qcollect"), "--max-pending", "2"], env=down, cwd=tmp_path,
                           capture_output=True, text=True, timeout=300)
    assert drain.returncode == 0, drain.stderr
    assert f"deferred: local: store {s3_study.url}" in drain.stdout
    assert service_jobs(tmp_path / "service") == 1
