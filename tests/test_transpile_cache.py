"""The transpile cache: hits give what a fresh transpilation gives; anything doubtful misses."""

from __future__ import annotations

import json
from io import BytesIO
from pathlib import Path

import pytest
from conftest import ledger_records
from qiskit import qpy

from qcourier.circuits.cache import TranspileCache, cache_directory
from qcourier.circuits.transpile import check_input_size, describe_transpiled
from qcourier.cli import submit
from qcourier.experiments import resolve
from qcourier.provenance import circuit_hash
from qcourier.submit.plan import SubmitOptions, _check_planned_input_size, plan_submission

# calibration_age_hours is "now" minus the calibration's date: it differs between any two
# plans made a few seconds apart, cache or not.
VOLATILE = {"record_id", "updated_at", "calibration_age_hours"}


def plan(service, cache: Path | None, name="ghz", params=("width=3",), shots=100, **kwargs):
    return plan_submission(service, resolve(name, list(params), shots),
                           SubmitOptions(backend="fake_fez", transpile_cache=cache, **kwargs))


def records(p) -> list[dict]:
    assert all(job.record.calibration_age_hours is not None for job in p.jobs)
    return [job.record.model_dump(mode="json", exclude=VOLATILE) for job in p.jobs]


def cache_warnings(p) -> list[str]:
    return [w for w in p.warnings if "transpile cache" in w]


def entries(cache: Path) -> list[Path]:
    return sorted(cache.glob("*.entry"))


@pytest.mark.parametrize("name", ["bell", "ghz", "deployment", "surface_code", "heavy_hex_code"])
def test_a_second_plan_reuses_the_transpilation_and_matches_a_fresh_one(service, tmp_path: Path,
                                                                         name):
    cache = tmp_path / "cache"
    fresh = plan(service, None, name, (), None)
    first = plan(service, cache, name, (), None)
    messages: list[str] = []
    second = plan(service, cache, name, (), None, progress=messages.append)
    assert (fresh.cache_hits, first.cache_misses, second.cache_hits) == (0, 1, 1)
    assert second.cache_misses == 0 and not cache_warnings(second)
    assert any(m.startswith(f"reusing cached transpilation of {name} (") for m in messages)
    assert not any(m.startswith("transpiling") for m in messages)
    assert records(second) == records(first) == records(fresh)
    [hit], [miss] = second.jobs, fresh.jobs
    # The circuits themselves, not just what the record says of them.
    assert circuit_hash(hit.isa_circuits) == circuit_hash(miss.isa_circuits)
    assert circuit_hash(hit.isa_circuits) == hit.record.isa_circuit_hash
    for a, b in zip(hit.isa_circuits, miss.isa_circuits):
        assert a == b and a.layout == b.layout
        assert (a.name, a.metadata, a.global_phase) == (b.name, b.metadata, b.global_phase)
    assert hit.isa_circuits[0].metadata["qcourier"]["circuit_hash"] == hit.record.circuit_hash
    # The input size derived from the cached QPY length is the exact one.
    bare = [c.copy() for c in miss.isa_circuits]
    bare[0].metadata = {}
    buffer = BytesIO()
    qpy.dump(bare, buffer)
    unit = describe_transpiled(miss.isa_circuits, len(buffer.getvalue()))
    assert _check_planned_input_size(unit, {}, name) == check_input_size(miss.isa_circuits, name)


def test_the_entry_holds_the_transpiler_output_without_provenance(service, tmp_path: Path):
    cache = tmp_path / "cache"
    p = plan(service, cache)
    [entry] = entries(cache)
    data = entry.read_bytes()
    assert data.startswith(b"qcourier-transpiled ")
    header = json.loads(data.split(b"\n")[1])
    assert header["inputs"]["backend"] == "fake_fez"
    assert header["inputs"]["calibration_snapshot"] == p.jobs[0].record.backend_snapshot_sha256
    assert header["inputs"]["logical_circuit_hash"] == p.jobs[0].record.circuit_hash
    loaded = TranspileCache(cache).load(entry.stem, header["inputs"])
    assert loaded is not None and loaded.circuits[0].metadata == {}


def test_circuits_from_the_cache_are_never_shared(service, tmp_path: Path):
    cache = tmp_path / "cache"
    plan(service, cache)
    # The same circuits twice in one plan (different shots, so different params): the second
    # unit hits the entry the first just wrote, and each gets its own provenance.
    experiments = resolve("ghz", ["width=3"], 100) + resolve("ghz", ["width=3"], 200)
    both = plan_submission(service, experiments,
                           SubmitOptions(backend="fake_fez", transpile_cache=cache))
    one, two = both.jobs
    assert both.cache_hits == 2 and one.isa_circuits[0] is not two.isa_circuits[0]
    assert one.isa_circuits[0].metadata["qcourier"]["params"]["shots"] == 100
    assert two.isa_circuits[0].metadata["qcourier"]["params"]["shots"] == 200
    one.isa_circuits[0].metadata["qcourier"]["params"]["shots"] = -1
    again = plan(service, cache, shots=100)
    assert again.jobs[0].isa_circuits[0].metadata["qcourier"]["params"]["shots"] == 100
    assert len(entries(cache)) == 1


def test_repeat_from_the_cache(service, tmp_path: Path):
    cache = tmp_path / "cache"
    plan(service, cache)
    p = plan(service, cache, repeat=3)
    assert p.cache_hits == 1 and len(p.jobs) == 3
    assert len({job.record.record_id for job in p.jobs}) == 3
    assert all(r == records(p)[0] for r in records(p))


def test_another_backend_or_calibration_misses(service, tmp_path: Path, monkeypatch):
    cache = tmp_path / "cache"
    plan(service, cache)
    other = plan_submission(service, resolve("ghz", ["width=3"], 100),
                            SubmitOptions(backend="fake_torino", transpile_cache=cache))
    assert (other.cache_hits, other.cache_misses) == (0, 1)

    real = service.calibration

    def recalibrated(backend: str) -> dict:
        calibration = real(backend)
        calibration["last_update_date"] = "2031-01-01T00:00:00+00:00"
        return calibration

    monkeypatch.setattr(service, "calibration", recalibrated)
    p = plan(service, cache)
    assert (p.cache_hits, p.cache_misses) == (0, 1)
    assert len(entries(cache)) == 3
    assert plan(service, cache).cache_hits == 1


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty", "header digit", "payload bit",
                                    "another entry"])
def test_a_damaged_entry_is_transpiled_again_and_repaired(service, tmp_path: Path, damage):
    cache = tmp_path / "cache"
    good = plan(service, cache)
    [entry] = entries(cache)
    data = entry.read_bytes()
    if damage == "another entry":  # whole and valid, but under the wrong name
        plan(service, tmp_path / "other", params=("width=4",))
        [other] = entries(tmp_path / "other")
        data = other.read_bytes()
    elif damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "garbage":
        data = b"\x00\xff" * 100
    elif damage == "empty":
        data = b""
    elif damage == "header digit":  # still valid JSON: only the checksum can tell
        head, header, payload = data.split(b"\n", 2)
        header = header.replace(b'"circuit_depths":[', b'"circuit_depths":[9')
        data = b"\n".join([head, header, payload])
    else:
        data = data[:-10] + bytes([data[-10] ^ 1]) + data[-9:]
    entry.write_bytes(data)

    repaired = plan(service, cache)
    assert (repaired.cache_hits, repaired.cache_misses) == (0, 1)
    [warning] = cache_warnings(repaired)
    assert warning.startswith("ignored damaged transpile cache entry ")
    assert records(repaired) == records(good)
    again = plan(service, cache)
    assert again.cache_hits == 1 and not cache_warnings(again)
    assert records(again) == records(good)


def test_a_write_killed_midway_leaves_the_entry_usable(service, tmp_path: Path):
    cache = tmp_path / "cache"
    good = plan(service, cache)
    [entry] = entries(cache)
    # What atomic_write_bytes leaves behind when killed before its rename.
    (cache / f".{entry.name}.x1y2z3.tmp").write_bytes(entry.read_bytes()[:100])
    again = plan(service, cache)
    assert again.cache_hits == 1 and not cache_warnings(again)
    assert records(again) == records(good)


def test_an_unwritable_cache_never_fails_a_plan(service, tmp_path: Path):
    blocked = tmp_path / "cache"
    blocked.write_text("a file where the directory should be")
    p = plan(service, blocked / "transpiled")
    assert len(p.jobs) == 1 and p.cache_misses == 1
    [warning] = cache_warnings(p)
    assert warning.startswith("cannot write the transpile cache in ")


def test_a_read_only_plan_reads_but_never_writes(service, tmp_path: Path):
    cache = tmp_path / "cache"
    plan(service, cache, dry_run=True)
    assert not cache.exists()
    plan(service, cache)
    assert plan(service, cache, dry_run=True).cache_hits == 1


def test_no_cache_writes_nothing(service, tmp_path: Path):
    p = plan(service, None)
    assert p.cache_misses == 1 and not list(tmp_path.rglob("*.entry"))


def test_qsubmit_force_reuses_the_cache(invoke, tmp_path: Path):
    args = ["-e", "ghz", "-p", "width=3", "--shots", "50"]
    first = invoke(submit.main, args)
    assert first.exit_code == 0, first.output
    assert "transpiling ghz (1 circuits) for fake_fez" in first.stderr
    cache = cache_directory(tmp_path / "ledger")
    assert len(entries(cache)) == 1

    dry = invoke(submit.main, [*args, "--dry-run"])
    assert "reusing cached transpilation of ghz (1 circuits) for fake_fez" in dry.stderr

    again = invoke(submit.main, [*args, "--force"])
    assert again.exit_code == 0, again.output
    assert "reusing cached transpilation of ghz (1 circuits) for fake_fez" in again.stderr
    assert "transpiling" not in again.stderr
    one, two = ledger_records(tmp_path / "ledger")
    different = {"record_id", "updated_at", "job_id", "submission_time", "request_id", "tags",
                 "calibration_age_hours"}  # the age grows between the two runs
    assert {k: v for k, v in one.items() if k not in different} == \
        {k: v for k, v in two.items() if k not in different}
    assert one["isa_circuit_hash"] == two["isa_circuit_hash"]

    unchanged = invoke(submit.main, args)  # dedupe still sees the identical job
    assert "identical to job" in unchanged.stderr

    fresh = invoke(submit.main, [*args, "--force", "--no-transpile-cache"])
    assert fresh.exit_code == 0, fresh.output
    assert "transpiling ghz" in fresh.stderr and "reusing" not in fresh.stderr
    assert ledger_records(tmp_path / "ledger")[-1]["isa_circuit_hash"] == one["isa_circuit_hash"]


def test_no_transpile_cache_flag_writes_no_cache(invoke, tmp_path: Path):
    from qcourier.circuits.cache import cache_directory

    result = invoke(submit.main, ["-e", "bell", "--shots", "10", "--no-transpile-cache"])
    assert result.exit_code == 0, result.output
    # (the ledger's own derived index under cache/index may exist; the transpile cache not)
    assert not cache_directory(tmp_path / "ledger").exists()
    assert [p.name for p in (tmp_path / "ledger" / "cache").iterdir()] == ["index"]


def test_a_backend_that_cannot_be_fingerprinted_plans_without_the_cache(service, tmp_path: Path,
                                                                       monkeypatch):
    from qcourier.circuits import cache as transpile_cache

    def broken(backend):
        raise RuntimeError("no target")

    monkeypatch.setattr(transpile_cache, "target_fingerprint", broken)
    p = plan(service, tmp_path / "cache")
    assert len(p.jobs) == 1 and p.cache_misses == 1 and not (tmp_path / "cache").exists()
    [warning] = cache_warnings(p)
    assert warning.startswith("transpile cache not used: cannot fingerprint the target")


def _entry(directory: Path, name: str, size: int, age_days: float, now: float) -> Path:
    import os

    path = directory / name
    path.write_bytes(b"x" * size)
    os.utime(path, (now - age_days * 86400, now - age_days * 86400))
    return path


def test_prune_removes_old_entries_then_the_least_recently_used(tmp_path: Path):
    from qcourier.circuits.cache import prune

    now = 2_000_000_000.0
    old = _entry(tmp_path, "a.entry", 100, 40, now)
    lru = _entry(tmp_path, "b.entry", 300, 5, now)
    mid = _entry(tmp_path, "c.entry", 300, 2, now)
    new = _entry(tmp_path, "d.entry", 300, 0.1, now)
    stale_tmp = _entry(tmp_path, ".e.entry.abcd1234.tmp", 10, 1, now)
    live_tmp = _entry(tmp_path, ".f.entry.efgh5678.tmp", 10, 0, now)  # a writer at work
    other = _entry(tmp_path, "notes.txt", 10, 400, now)
    report = prune(tmp_path, max_age_days=30, max_bytes=650, now=now)
    assert not old.exists() and not stale_tmp.exists() and not lru.exists()
    assert mid.exists() and new.exists() and live_tmp.exists() and other.exists()
    assert (report.removed, report.kept, report.kept_bytes) == (3, 2, 600)


def test_a_hit_marks_the_entry_used_so_pruning_keeps_it(invoke, tmp_path: Path):
    import os

    invoke(submit.main, ["-e", "bell", "--shots", "10"])
    [entry] = cache_directory(tmp_path / "ledger").glob("*.entry")
    month_ago = entry.stat().st_mtime - 31 * 86400
    os.utime(entry, (month_ago, month_ago))
    invoke(submit.main, ["-e", "bell", "--shots", "10", "--force"])  # a hit, then the prune
    assert entry.exists()
    assert entry.stat().st_mtime > month_ago + 30 * 86400


def test_qsubmit_prunes_what_was_not_used_for_a_month(invoke, tmp_path: Path, monkeypatch):
    import os

    invoke(submit.main, ["-e", "bell", "--shots", "10"])
    [bell] = cache_directory(tmp_path / "ledger").glob("*.entry")
    month_ago = bell.stat().st_mtime - 31 * 86400
    os.utime(bell, (month_ago, month_ago))
    invoke(submit.main, ["-e", "ghz", "-p", "width=3", "--shots", "10"])
    assert not bell.exists()
    assert len(list(cache_directory(tmp_path / "ledger").glob("*.entry"))) == 1
    monkeypatch.setenv("QCOURIER_TRANSPILE_CACHE_MAX_MB", "0")  # a cap: nothing fits
    invoke(submit.main, ["-e", "bell", "--shots", "10", "--force"])
    assert list(cache_directory(tmp_path / "ledger").glob("*.entry")) == []
