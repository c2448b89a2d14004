"""Tests of provenance: circuit hashes, git state, calibration snapshots."""

from __future__ import annotations

import gzip
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from qcourier.experiments.base import Calibration, calibration_for_qubits
from qcourier.experiments.canaries import BellExperiment, BellParams, GHZExperiment, GHZParams
from qcourier.experiments.deployment import heartbeat_circuit
from qcourier.provenance import (
    circuit_hash,
    git_state,
    load_snapshot,
    save_snapshot,
    snapshot_sha256,
)

git = pytest.importorskip("git")


def _bell():
    return BellExperiment().build(BellParams())[0].circuits[0]


def _ghz(width=3):
    return GHZExperiment().build(GHZParams(width=width))[0].circuits[0]


# --- circuit_hash -------------------------------------------------------------------------------

SUBPROCESS_CODE = """
from qcourier.experiments.canaries import BellExperiment, BellParams
from qcourier.provenance import circuit_hash
print(circuit_hash(BellExperiment().build(BellParams())[0].circuits))
"""


def test_circuit_hash_stable_across_builds_and_processes():
    here = circuit_hash([_bell()])
    assert circuit_hash([_bell()]) == here
    env = {**os.environ, "PYTHONHASHSEED": "4242"}
    proc = subprocess.run([sys.executable, "-c", SUBPROCESS_CODE], capture_output=True,
                          text=True, env=env, timeout=120, check=True)
    assert proc.stdout.strip() == here


def test_circuit_hash_is_sha256_hex():
    value = circuit_hash([_bell()])
    assert re.fullmatch(r"[0-9a-f]{64}", value)


def test_circuit_hash_changes_with_angle():
    assert circuit_hash([heartbeat_circuit(3, 0.123)]) != circuit_hash([heartbeat_circuit(3, 0.124)])
    assert circuit_hash([heartbeat_circuit(3, 0.123)]) == circuit_hash([heartbeat_circuit(3, 0.123)])


def test_circuit_hash_changes_with_order_and_content():
    bell, ghz = _bell(), _ghz(3)
    assert circuit_hash([bell, ghz]) != circuit_hash([ghz, bell])
    assert circuit_hash([bell]) != circuit_hash([ghz])
    assert circuit_hash([bell]) != circuit_hash([bell, bell])
    assert circuit_hash([_ghz(3)]) != circuit_hash([_ghz(4)])


def test_circuit_hash_ignores_name_and_metadata():
    a, b = _bell(), _bell()
    b.name = "something_else"
    b.metadata = {"note": "not hashed"}
    assert circuit_hash([a]) == circuit_hash([b])


# --- git_state ----------------------------------------------------------------------------------


def _new_repo(path: Path):
    path.mkdir(parents=True)
    repo = git.Repo.init(path)
    with repo.config_writer() as cw:
        cw.set_value("user", "name", "Test User")
        cw.set_value("user", "email", "test@example.com")
        cw.set_value("commit", "gpgsign", "false")
    return repo


def _repo_with_commit(path: Path):
    repo = _new_repo(path)
    (path / "tracked.txt").write_text("one\n")
    repo.index.add(["tracked.txt"])
    repo.index.commit("first")
    return repo


def test_git_state_clean_repo(tmp_path):
    repo = _repo_with_commit(tmp_path / "repo")
    state = git_state(tmp_path / "repo")
    assert state.commit == repo.head.commit.hexsha
    assert re.fullmatch(r"[0-9a-f]{40}", state.commit)
    assert state.dirty is False
    assert state.warning is None


def test_git_state_from_subdirectory_and_cwd(tmp_path, monkeypatch):
    repo = _repo_with_commit(tmp_path / "repo")
    sub = tmp_path / "repo" / "a" / "b"
    sub.mkdir(parents=True)
    assert git_state(sub).commit == repo.head.commit.hexsha
    monkeypatch.chdir(sub)
    assert git_state().commit == repo.head.commit.hexsha


def test_git_state_dirty_after_modifying_tracked_file(tmp_path):
    repo = _repo_with_commit(tmp_path / "repo")
    (tmp_path / "repo" / "tracked.txt").write_text("two\n")
    state = git_state(tmp_path / "repo")
    assert state.commit == repo.head.commit.hexsha
    assert state.dirty is True


def test_git_state_untracked_file_is_not_dirty(tmp_path):
    _repo_with_commit(tmp_path / "repo")
    (tmp_path / "repo" / "untracked.txt").write_text("new\n")
    assert git_state(tmp_path / "repo").dirty is False


def test_git_state_second_commit_tracked(tmp_path):
    repo = _repo_with_commit(tmp_path / "repo")
    first = repo.head.commit.hexsha
    (tmp_path / "repo" / "tracked.txt").write_text("two\n")
    repo.index.add(["tracked.txt"])
    repo.index.commit("second")
    state = git_state(tmp_path / "repo")
    assert state.commit == repo.head.commit.hexsha != first
    assert state.dirty is False


def test_git_state_not_a_repository(tmp_path):
    plain = tmp_path / "plain"
    plain.mkdir()
    state = git_state(plain)
    assert state.commit is None and state.dirty is None
    assert "not in a git repository" in state.warning


def test_git_state_missing_path(tmp_path):
    state = git_state(tmp_path / "does" / "not" / "exist")
    assert state.commit is None and state.dirty is None
    assert "not in a git repository" in state.warning


def test_git_state_repo_without_commits(tmp_path):
    _new_repo(tmp_path / "empty")
    state = git_state(tmp_path / "empty")
    assert state.commit is None
    assert state.warning and "no commits" in state.warning


# --- calibration snapshots ----------------------------------------------------------------------

CALIBRATION = {
    "backend_name": "toy",
    "last_update_date": "2024-01-01T00:00:00+00:00",
    "qubits": [[{"name": "readout_error", "value": 0.01 * (i + 1)}, {"name": "T1", "value": 1e-4}]
               for i in range(20)],
    "gates": [{"gate": "sx", "qubits": [i], "parameters": [{"name": "gate_error", "value": 1e-4}]}
              for i in range(20)],
}


def _snapshot_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_snapshot_round_trip(tmp_path):
    directory = tmp_path / "snapshots"
    sha = save_snapshot(directory, CALIBRATION)
    assert sha == snapshot_sha256(CALIBRATION)
    assert re.fullmatch(r"[0-9a-f]{64}", sha)
    assert _snapshot_files(directory) == [f"{sha}.json.gz"]
    assert load_snapshot(directory, sha) == CALIBRATION


def test_snapshot_sha_ignores_key_order():
    reordered = dict(reversed(list(CALIBRATION.items())))
    assert snapshot_sha256(reordered) == snapshot_sha256(CALIBRATION)
    assert snapshot_sha256({**CALIBRATION, "backend_name": "other"}) != snapshot_sha256(CALIBRATION)


def test_snapshot_saved_once(tmp_path):
    directory = tmp_path / "snapshots"
    sha = save_snapshot(directory, CALIBRATION)
    path = directory / f"{sha}.json.gz"
    before = path.stat()
    assert save_snapshot(directory, dict(CALIBRATION)) == sha
    after = path.stat()
    assert _snapshot_files(directory) == [f"{sha}.json.gz"]
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_snapshot_bytes_deterministic(tmp_path):
    sha_a = save_snapshot(tmp_path / "a", CALIBRATION)
    sha_b = save_snapshot(tmp_path / "b", CALIBRATION)
    assert sha_a == sha_b
    assert (tmp_path / "a" / f"{sha_a}.json.gz").read_bytes() == \
        (tmp_path / "b" / f"{sha_b}.json.gz").read_bytes()


def test_snapshot_missing_loads_as_none(tmp_path):
    assert load_snapshot(tmp_path / "snapshots", "0" * 64) is None


def _corrupt(path: Path, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "garbage":
        path.write_bytes(b"this is not gzip at all")
    elif how == "truncated":
        path.write_bytes(bytes(data[: len(data) // 2]))
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "crc":  # bytes near the end of the deflate stream: CRC mismatch
        mid = len(data) // 2
        data[mid:mid + 8] = b"\x00" * 8
        path.write_bytes(bytes(data))
    elif how == "deflate":  # bytes at the start of the deflate stream: invalid deflate data
        data[12:20] = b"\xff" * 8
        path.write_bytes(bytes(data))
    elif how == "other_content":  # valid gzip, but not what the sha says
        path.write_bytes(gzip.compress(json.dumps({"backend_name": "impostor"}).encode()))
    else:
        raise AssertionError(how)


@pytest.mark.parametrize("how", ["garbage", "truncated", "empty", "crc", "deflate", "other_content"])
def test_corrupted_snapshot_loads_as_none(tmp_path, how):
    directory = tmp_path / "snapshots"
    sha = save_snapshot(directory, CALIBRATION)
    _corrupt(directory / f"{sha}.json.gz", how)
    assert load_snapshot(directory, sha) is None


# --- calibration_for_qubits ---------------------------------------------------------------------


def _param(name, value):
    return {"date": "2024-01-01T00:00:00+00:00", "name": name, "unit": "", "value": value}


def _gate(name, qubits, error):
    return {"gate": name, "qubits": qubits, "name": f"{name}{'_'.join(map(str, qubits))}",
            "parameters": [_param("gate_error", error), _param("gate_length", 6e-8)]}


SNAPSHOT = {
    "backend_name": "hand_built",
    "qubits": [
        [_param("T1", 1e-4), _param("readout_error", 0.01)],   # q0
        [_param("T1", 1e-4), _param("readout_error", 0.03)],   # q1
        [_param("T1", 1e-4), _param("readout_error", 0.02)],   # q2
        [_param("T1", 1e-4), _param("readout_error", 0.50)],   # q3 (not asked for)
        [_param("T1", 1e-4)],                                  # q4: no readout error
    ],
    "gates": [
        _gate("sx", [0], 0.001),
        _gate("sx", [1], 0.003),
        _gate("sx", [2], 1.0),      # broken: ignored
        _gate("sx", [3], 0.9),      # not asked for
        _gate("x", [0], 0.5),       # x is not used when sx is there
        _gate("x", [1], 0.5),
        _gate("rz", [0], 0.0),
        _gate("cz", [0, 1], 0.010),
        _gate("cz", [1, 0], 0.012),
        _gate("cz", [1, 2], 0.030),
        _gate("cz", [2, 3], 0.200),  # coupler leaves the set
        _gate("cz", [0, 2], 1.0),    # broken: ignored
        _gate("measure", [0], 0.7),  # one-qubit non-gate entries do not disturb
    ],
}


def test_calibration_for_qubits_medians():
    cal = calibration_for_qubits(SNAPSHOT, [0, 1, 2])
    assert isinstance(cal, Calibration)
    assert cal.single_qubit_gate_error == pytest.approx(0.002)   # median(0.001, 0.003)
    assert cal.two_qubit_gate_error == pytest.approx(0.012)      # median(0.010, 0.012, 0.030)
    assert cal.readout_error == pytest.approx(0.02)              # median(0.01, 0.03, 0.02)
    assert cal.reset_error is None


def test_calibration_for_qubits_subset():
    cal = calibration_for_qubits(SNAPSHOT, [2, 3])
    assert cal.single_qubit_gate_error == pytest.approx(0.9)    # sx on 2 ignored (error 1)
    assert cal.two_qubit_gate_error == pytest.approx(0.2)
    assert cal.readout_error == pytest.approx(0.26)             # median(0.02, 0.50)


def test_calibration_for_qubits_falls_back_to_x():
    snapshot = {"qubits": [], "gates": [_gate("x", [0], 0.004), _gate("x", [1], 0.006)]}
    cal = calibration_for_qubits(snapshot, [0, 1])
    assert cal.single_qubit_gate_error == pytest.approx(0.005)
    assert cal.two_qubit_gate_error is None and cal.readout_error is None


def test_calibration_for_qubits_nothing_known():
    cal = calibration_for_qubits(SNAPSHOT, [4])
    assert cal == Calibration(None, None, None, None)
    assert calibration_for_qubits({}, [0, 1]) == Calibration()


def test_calibration_for_local_backend_snapshot(service):
    snapshot = service.calibration("fake_fez")
    cal = calibration_for_qubits(snapshot, [0, 1, 2, 3])
    for value in (cal.single_qubit_gate_error, cal.two_qubit_gate_error, cal.readout_error):
        assert value is not None and 0.0 < value < 0.5
