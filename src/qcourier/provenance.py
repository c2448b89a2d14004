"""Provenance: what exactly ran (circuit hashes) and from which code (git commit).

What ``circuit_hash`` hashes: for each circuit of a job, in PUB order, its OpenQASM 3 text
(``qiskit.qasm3.dumps``), which names every gate, operand, parameter value, register and
measurement but not Python object identity, circuit names or metadata. Each text is
prefixed by its length in bytes and a newline so that concatenations cannot collide; the
sha256 of the whole is given in hex. The same circuits give the same hash in every process
and run (for a given qiskit major version, whose exporter defines the text).
``isa_circuit_hash`` is the same function applied to the transpiled (ISA) circuits, so it
also pins the layout and routing the backend received.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from qiskit import QuantumCircuit



def circuit_hash(circuits: Sequence[QuantumCircuit]) -> str:
    """sha256 (hex) of the canonical OpenQASM 3 serialisation of ``circuits`` in order."""
    from qiskit import qasm3

    digest = hashlib.sha256()
    for circuit in circuits:
        text = qasm3.dumps(circuit).encode()
        digest.update(f"{len(text)}\n".encode())
        digest.update(text)
    return digest.hexdigest()


@dataclass(frozen=True)
class GitState:
    """The commit of the code that made a submission, and whether its tree was dirty."""

    commit: str | None
    dirty: bool | None
    warning: str | None = None


def git_state(repo_path: Path | None = None, exclude: Sequence[Path] = ()) -> GitState:
    """The git commit and dirtiness of the repository containing ``repo_path`` (default: cwd).

    Dirty means a tracked file differs from the commit; untracked files and everything under
    ``exclude`` (qcourier's own output directories, which it changes itself) do not count.
    Outside a git repository (or without a git executable) this is not a failure: commit and
    dirty are ``None`` and ``warning`` says why in one line. A dirty tree is recorded and
    also warned about: the commit alone does not reproduce the circuits.
    """
    import git  # gitpython; imported here because it shells out at import

    where = Path(repo_path or Path.cwd())
    try:
        repo = git.Repo(where, search_parent_directories=True)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError):
        return GitState(None, None, f"{where} is not in a git repository; git_commit not recorded")
    except git.GitError as exc:  # e.g. no git executable
        return GitState(None, None, f"git unavailable ({type(exc).__name__}); git_commit not recorded")
    with repo:
        try:
            commit = repo.head.commit.hexsha
        except ValueError:
            return GitState(None, None, f"{repo.working_dir} has no commits yet; git_commit not recorded")
        top = Path(repo.working_dir).resolve()
        skip = [f":(exclude){Path(p).resolve().relative_to(top).as_posix()}" for p in exclude
                if Path(p).resolve().is_relative_to(top) and Path(p).resolve() != top]
        try:
            changed = repo.git.status("--porcelain", "--untracked-files=no", "--", ".", *skip)
        except git.GitError as exc:
            return GitState(commit, None, f"git status failed ({type(exc).__name__}); "
                            "git_dirty not recorded")
        if not changed.strip():
            return GitState(commit, False)
        return GitState(commit, True, f"{repo.working_dir} has uncommitted changes; the record "
                        f"says git_dirty=true (commit first, so {commit[:12]} reproduces it)")


# -- backend calibration snapshots --------------------------------------------------------------
#
# A snapshot is the backend's calibration (IBM's ``properties`` shape) at submission, stored
# once as ``<ledger>/snapshots/<sha256>.json.gz``; the sha256 is that of the canonical JSON
# text (sorted keys, no spaces), which the ledger line records.


def _canonical(calibration: dict[str, Any]) -> bytes:
    return json.dumps(calibration, sort_keys=True, separators=(",", ":"), default=str).encode()


def snapshot_sha256(calibration: dict[str, Any]) -> str:
    """The sha256 (hex) a calibration snapshot is stored and referenced under."""
    return hashlib.sha256(_canonical(calibration)).hexdigest()


def save_snapshot(directory: Path, calibration: dict[str, Any]) -> str:
    """Store a calibration snapshot (once) and return its sha256."""
    from qcourier.files import atomic_write_bytes

    data = _canonical(calibration)
    sha = hashlib.sha256(data).hexdigest()
    path = Path(directory) / f"{sha}.json.gz"
    if not path.exists():
        atomic_write_bytes(path, gzip.compress(data, mtime=0))
    return sha


def load_snapshot(directory: Path, sha: str) -> dict[str, Any] | None:
    """The snapshot stored under ``sha``, or ``None`` if it is missing or does not match."""
    path = Path(directory) / f"{sha}.json.gz"
    try:
        data = gzip.decompress(path.read_bytes())
    except (OSError, EOFError, zlib.error):  # BadGzipFile is an OSError
        return None
    if hashlib.sha256(data).hexdigest() != sha:
        return None
    return json.loads(data)  # the sha256 matched, so this is the text that was saved


def calibration_age_hours(calibration: dict[str, Any], now: datetime | None = None) -> float | None:
    """Hours since the snapshot's ``last_update_date``, or ``None`` if it has none."""
    stamp = calibration.get("last_update_date")
    if not stamp:
        return None
    try:
        when = datetime.fromisoformat(str(stamp).replace("Z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return round(((now or datetime.now(UTC)) - when).total_seconds() / 3600, 3)
