"""The team store's sync (qcourier.store.sync) and the union fold, against SeaweedFS."""

from __future__ import annotations

import hashlib
import json
from datetime import timedelta
from pathlib import Path

import pytest
from s3server import S3Study
from store_machines import (
    T0,
    circuit_file,
    complete,
    make_record,
    put_raw,
    statuses,
    store_of,
    write_files,
)

from qcourier.errors import LedgerError
from qcourier.ledger import store as L
from qcourier.ledger.status import JobStatus
from qcourier.ledger.store import Ledger
from qcourier.ledger.summary import Entry
from qcourier.ledger.union import union
from qcourier.ledger.working import working_set
from qcourier.store.objects import StoreError
from qcourier.store.sync import PUSHED_FILE, Segment, pull, push

# -- the union rule (no store) ---------------------------------------------------------------


def entry(**fields) -> Entry:
    return Entry.of(make_record(record_id="r1", **fields), Path("x"))


def test_a_final_status_beats_a_later_non_final_one_whatever_the_order():
    done = entry(status=JobStatus.COMPLETED, updated_at=T0)
    stale = entry(status=JobStatus.QUEUED, updated_at=T0 + timedelta(hours=5))
    for order in ({"wa": {"r1": done}, "wb": {"r1": stale}},
                  {"wb": {"r1": stale}, "wa": {"r1": done}}):
        assert union(order)["r1"] is done


def test_then_the_later_update_then_the_greater_writer():
    first = entry(status=JobStatus.COMPLETED, updated_at=T0)
    later = entry(status=JobStatus.COMPLETED, updated_at=T0 + timedelta(seconds=1))
    assert union({"wb": {"r1": later}, "wa": {"r1": first}})["r1"] is later
    assert union({"wa": {"r1": first}, "wb": {"r1": later}})["r1"] is later
    tie_a, tie_b = entry(updated_at=T0), entry(updated_at=T0)
    assert union({"w1": {"r1": tie_a}, "w2": {"r1": tie_b}})["r1"] is tie_b
    assert union({"w2": {"r1": tie_b}, "w1": {"r1": tie_a}})["r1"] is tie_b


# -- two machines --------------------------------------------------------------------------


def test_two_machines_see_one_union_with_results_fetched_and_checked(tmp_path: Path,
                                                                   s3_study: S3Study):
    store = store_of(s3_study)
    a, c = Ledger(tmp_path / "a"), Ledger(tmp_path / "c")
    records = write_files(a, 3, 2, "a")
    circuit_file(a)
    pushed = push(a, store)
    assert (pushed.segments, pushed.blobs, pushed.problems) == (3, 1, [])  # the circuits
    assert push(a, store).segments == 0  # nothing new: nothing uploaded

    pulled = pull(c, store)
    assert (pulled.segments, pulled.blobs, pulled.writers, pulled.problems) == (3, 1, 1, [])
    assert (c.directory / "circuits" / f"{'b' * 64}.qpy").read_bytes() == b"QISKIT-qpy"
    assert set(statuses(c).values()) == {"queued"}
    assert len(statuses(c)) == 6

    done = complete(c, records[0], b'{"counts": [1]}')  # C collects one of A's jobs
    assert [p.name for p in c.local_files()] == [records_file(a, 0)]  # C's own file
    assert all(not p.is_relative_to(c.remote_dir) for p in c.local_files())
    assert push(c, store).segments == 1
    assert pull(a, store).blobs == 1
    assert statuses(a)[done.record_id] == "completed"
    result = a.directory / done.result_path
    assert hashlib.sha256(result.read_bytes()).hexdigest() == done.result_sha256
    assert working_set(a).counts == {JobStatus.COMPLETED: 1, JobStatus.QUEUED: 5}
    assert working_set(c).counts == {JobStatus.COMPLETED: 1, JobStatus.QUEUED: 5}
    assert done.record_id not in working_set(c).entries  # final, and out of the horizon


def records_file(ledger: Ledger, n: int) -> str:
    return ledger.local_files()[n].name


def test_pulled_segments_are_never_written(tmp_path: Path, s3_study: S3Study):
    store = store_of(s3_study)
    a, c = Ledger(tmp_path / "a"), Ledger(tmp_path / "c")
    [record] = write_files(a, 1, 1, "a")
    push(a, store)
    pull(c, store)
    [pulled] = c.pulled_files()
    before = pulled.read_bytes()
    L.append(c.fold().entries[record.record_id].path,
             record.model_copy(update={"status": JobStatus.RUNNING,
                                       "updated_at": T0 + timedelta(minutes=1)}))
    assert pulled.read_bytes() == before
    assert statuses(c)[record.record_id] == "running"
    assert (c.directory / pulled.parent.name).is_file()  # the same name, this machine's own


def test_the_segments_of_a_file_are_its_bytes_in_order(tmp_path: Path, s3_study: S3Study):
    store = store_of(s3_study)
    a = Ledger(tmp_path / "a")
    [record] = write_files(a, 1, 1, "a")
    push(a, store)
    (path,) = a.local_files()
    with open(path, "ab") as fh:  # a line being written: not pushed until whole
        fh.write(b'{"record_id": "half')
    assert push(a, store).segments == 0
    L.append(path, record.model_copy(update={"status": JobStatus.CANCELLED}))
    assert push(a, store).segments == 1
    keys = s3_study.keys("ledger/")
    assert len(keys) == 2
    chunks = [store.get(k)[0] for k in sorted(keys, key=lambda k: Segment.parse(k).start)]
    assert b"".join(chunks) == path.read_bytes()


def test_lost_push_state_is_rebuilt_from_a_listing(tmp_path: Path, s3_study: S3Study):
    store = store_of(s3_study)
    a = Ledger(tmp_path / "a")
    write_files(a, 4, 2, "a")
    push(a, store)
    (a.directory / PUSHED_FILE).unlink()
    again = push(a, store)
    assert (again.segments, again.present) == (0, 0)
    assert len(s3_study.keys("ledger/")) == 4


def test_an_interrupted_push_uploads_exactly_its_planned_ranges_again(tmp_path: Path,
                                                                        s3_study: S3Study):
    store = store_of(s3_study)
    a = Ledger(tmp_path / "a")
    [record] = write_files(a, 1, 1, "a")
    push(a, store)
    state = json.loads((a.directory / PUSHED_FILE).read_text())
    (path,) = a.local_files()
    # As a push killed after its upload and before saving what it did leaves it: the
    # range planned, the segment in the store, the file grown since.
    state["planned"] = {path.name: [0, state["pushed"][path.name]]}
    state["pushed"] = {}
    (a.directory / PUSHED_FILE).write_text(json.dumps(state))
    L.append(path, record.model_copy(update={"status": JobStatus.RUNNING}))
    result = push(a, store)
    assert (result.segments, result.present) == (1, 1)
    ranges = sorted((s.start, s.end) for s in map(Segment.parse, s3_study.keys("ledger/")))
    assert ranges[0][1] == ranges[1][0] and ranges[1][1] == path.stat().st_size  # no overlap


def test_two_directories_with_one_writer_id_stop_at_the_first_differing_segment(
        tmp_path: Path, s3_study: S3Study):
    store = store_of(s3_study)
    a, copy = Ledger(tmp_path / "a"), Ledger(tmp_path / "copy")
    write_files(a, 1, 1, "a")
    push(a, store)
    write_files(copy, 1, 2, "a")  # same file name, other lines
    copy.set_writer_id(a.writer_id())
    with pytest.raises(StoreError, match="two ledger directories use writer id"):
        push(copy, store)  # another range over the same bytes


def test_a_segment_key_holding_other_bytes_stops_the_push(tmp_path: Path, s3_study: S3Study):
    store = store_of(s3_study)
    a = Ledger(tmp_path / "a")
    write_files(a, 1, 1, "a")
    (path,) = a.local_files()
    size = path.stat().st_size
    put_raw(s3_study, f"ledger/{a.writer_id(create=True)}/{path.name}/0-{size}.jsonl",
            b"x" * (size - 1) + b"\n")
    with pytest.raises(StoreError, match="two ledger directories use writer id"):
        push(a, store)


def test_a_bad_writer_file_is_a_clear_error(tmp_path: Path):
    a = Ledger(tmp_path / "a")
    (a.directory / "store").mkdir(parents=True)
    (a.directory / "store" / "writer").write_text("../../etc\n")
    with pytest.raises(LedgerError, match="does not hold a writer id"):
        a.writer_id()


# -- what the bucket may hold that qcourier did not write ------------------------------------


def test_truncated_foreign_and_unsafe_objects_are_reported_by_key_and_skipped(
        tmp_path: Path, s3_study: S3Study):
    store = store_of(s3_study)
    a, c = Ledger(tmp_path / "a"), Ledger(tmp_path / "c")
    records = write_files(a, 2, 1, "a")
    circuit_file(a)
    assert push(a, store).problems == []
    w = "w" + "1" * 16
    line = make_record(job_id="zz" * 10).to_line().encode()
    bad = {
        f"ledger/{w}/submitted_jobs_1.jsonl/0-{len(line) + 10}.jsonl": line,  # truncated
        f"ledger/{w}/submitted_jobs_2.jsonl/0-9.jsonl": b"not json\n",  # foreign content
        "ledger/README.txt": b"hello",  # foreign shape
        f"ledger/{w}/..%2F..%2Fetc/0-3.jsonl": b"{}\n",  # unsafe name
        f"ledger/{w}/submitted_jobs_3.jsonl/0-{len(line)}.jsonl": line[:-1] + b"x",  # no "\n"
    }
    for key, body in bad.items():
        put_raw(s3_study, key, body)
    result = pull(c, store)
    assert result.segments == 2  # A's, whole
    assert len(result.problems) == len(bad)
    for key, problem in zip(sorted(bad), sorted(result.problems, key=_key_of), strict=True):
        assert key in problem and "\n" not in problem
    assert any("truncated" in p for p in result.problems)
    assert any("foreign" in p for p in result.problems)
    assert any("refusing" in p for p in result.problems)
    assert sorted(statuses(c)) == sorted(r.record_id for r in records)
    assert not list((c.remote_dir).glob(f"{w}/**/*.jsonl"))
    assert not (tmp_path / "etc").exists()


def _key_of(problem: str) -> str:
    return problem.split("'")[1]


def test_a_damaged_or_missing_blob_is_reported_and_the_lines_still_land(
        tmp_path: Path, s3_study: S3Study):
    store = store_of(s3_study)
    a, c = Ledger(tmp_path / "a"), Ledger(tmp_path / "c")
    records = write_files(a, 2, 1, "a")
    done = complete(a, records[0], b'{"counts": [2]}')
    push(a, store)
    put_raw(s3_study, f"blobs/sha256/{done.result_sha256}", b"tampered")
    s3_study.client().delete_object(Bucket=s3_study.bucket,
                                    Key=f"{s3_study.prefix}/refs/circuits/{'b' * 64}")
    result = pull(c, store)
    assert result.segments == 2
    assert any("damaged" in p and done.result_sha256 in p for p in result.problems)
    assert any("missing" in p and "refs/circuits/" in p for p in result.problems)
    assert not (c.directory / done.result_path).exists()
    assert statuses(c)[done.record_id] == "completed"


def test_unsafe_result_names_in_pulled_lines_are_never_paths(tmp_path: Path,
                                                             s3_study: S3Study):
    store = store_of(s3_study)
    c = Ledger(tmp_path / "c")
    line = make_record(status=JobStatus.COMPLETED, result_path="jobs/../../evil",
                       result_sha256="c" * 64, isa_circuit_hash="../x").to_line().encode()
    put_raw(s3_study, f"ledger/w{'2' * 16}/submitted_jobs_x.jsonl/0-{len(line)}.jsonl", line)
    result = pull(c, store)
    assert (result.segments, result.blobs, result.problems) == (1, 0, [])
    assert not (tmp_path / "evil").exists()


def test_a_job_collected_on_two_machines_settles_on_the_latest_result_everywhere(
        tmp_path: Path, s3_study: S3Study):
    store = store_of(s3_study)
    a, c = Ledger(tmp_path / "a"), Ledger(tmp_path / "c")
    [record] = write_files(a, 1, 1, "a")
    circuit_file(a)
    push(a, store)
    pull(c, store)
    # Both collect the job before seeing the other's line: two result files of one name.
    mine = complete(a, record, b'{"collected_at": "A"}', at=T0 + timedelta(hours=1))
    theirs = complete(c, record, b'{"collected_at": "C"}', at=T0 + timedelta(hours=2))
    for machine in (a, c, a, c):
        push(machine, store)
        pull(machine, store)
    for machine in (a, c):
        winner = machine.fold().entries[record.record_id].summary
        assert winner.result_sha256 == theirs.result_sha256 != mine.result_sha256
        assert (machine.directory / winner.result_path).read_bytes() == b'{"collected_at": "C"}'
    assert push(a, store).segments == push(c, store).segments == 0  # nothing more to say


def test_status_lists_a_teams_jobs_in_time_order(tmp_path: Path, s3_study: S3Study, invoke):
    from qcourier.cli.main import main

    store = store_of(s3_study)
    for name, hours in (("a", 2), ("b", 0), ("c", 1)):
        machine = Ledger(tmp_path / name)
        when = T0 + timedelta(hours=hours)
        L.append(machine.new_file(), make_record(job_id=f"{name}job000000000",
                                                 submission_time=when, updated_at=when))
        circuit_file(machine)
        push(machine, store)
    result = invoke(main, ["status", "--json"])  # the test's own ledger: pulls all three
    assert result.exit_code == 0, result.output
    assert [r["job_id"][0] for r in json.loads(result.stdout)] == ["b", "c", "a"]
