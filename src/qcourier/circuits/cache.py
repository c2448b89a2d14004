"""A content-addressed cache of transpiled circuits: ``<ledger>/cache/transpiled/<key>.entry``.

Transpiling is deterministic for a given input (fixed seed), so an experiment submitted again
unchanged (``qsubmit --force``, a heartbeat from cron) can reuse the ISA circuits of the first
submission instead of transpiling them again, together with the values the ledger record
derives from them, which cost about as much again to recompute (the ISA circuits' OpenQASM 3
hash above all).

The key (:func:`cache_key`) is the sha256 of everything the transpiler's output depends on:
the logical circuits (their ``circuit_hash``, plus the names, metadata and global phases that
the OpenQASM 3 text leaves out but the ISA circuits carry), the backend's name, the sha256
of its calibration snapshot (error rates steer the layout), a fingerprint of its target
(basis gates and couplings, in case they change while the calibration does not), the
optimization level and seed, the installed qiskit version (its passes and its QPY format),
and :data:`FORMAT_VERSION`.

One entry is one file, written atomically (temp file, fsync, rename)::

    qcourier-transpiled <sha256 of the rest of the file>\n
    <JSON header: key, inputs, derived values (TranspiledUnit), payload length>\n
    <QPY of the ISA circuits>

The QPY holds the circuits exactly as the transpiler returned them, before qcourier attaches
its provenance metadata. A kill mid-write leaves the old entry or none; concurrent writers of
one key write the same bytes.

An entry is used only if its checksum matches, its header names the same key and inputs, and
its payload loads into as many circuits as recorded; anything else is a miss, and the caller
transpiles again and overwrites the entry. The loaded circuits' ISA hash is *not* recomputed
on a hit: that costs about as much as transpiling (see ``scripts/bench_transpile_cache.py``),
and the checksum already shows that the bytes are those written right after that hash was
computed from the same circuits. That a QPY round trip keeps the hash is what
``<ledger>/circuits/`` relies on too, and the tests check it for every experiment.

The cache is an optimisation only: no error reading or writing it fails a submission; it
becomes a warning and a transpilation. The directory can be deleted at any time.

It is pruned after each submission (:func:`prune`): entries not used for
``QCOURIER_TRANSPILE_CACHE_MAX_AGE_DAYS`` (default 30) go, then the least recently used
until the rest fit in ``QCOURIER_TRANSPILE_CACHE_MAX_MB`` (default 200). A hit marks its
entry used (its modification time), so a heartbeat submitted every hour keeps its entry
while each new calibration's entry of a finished study ages out: a year of hourly
heartbeats keeps about a month of calibrations, not a year of them.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qcourier.files import atomic_write_bytes

if TYPE_CHECKING:
    from qiskit import QuantumCircuit

#: Where the cache lives inside a ledger directory.
CACHE_SUBDIR = Path("cache") / "transpiled"
#: Bump when the entry layout or the meaning of a stored value changes: old entries then miss.
FORMAT_VERSION = 1
_SUFFIX = ".entry"
_MAGIC = b"qcourier-transpiled"


def cache_directory(ledger_dir: Path) -> Path:
    """The transpile cache directory of a ledger directory."""
    return Path(ledger_dir) / CACHE_SUBDIR


@dataclass
class TranspiledUnit:
    """One job unit's ISA circuits and the values its ledger record derives from them.

    ``qpy_size`` is the length in bytes of the QPY of ``circuits`` as the transpiler returned
    them; the job's input size follows from it without another dump.
    """

    circuits: list[QuantumCircuit]
    isa_circuit_hash: str
    circuit_depths: list[int]
    transpiled_gates: dict[str, int]
    physical_qubits: list[int]
    qpy_size: int
    #: Whether these came from the cache (not stored).
    cached: bool = field(default=False, compare=False)

    def derived(self) -> dict[str, Any]:
        """The derived values as stored in an entry's header."""
        # Not dataclasses.asdict: it would deep-copy the circuits only to drop them.
        return {f.name: getattr(self, f.name) for f in fields(self)
                if f.name not in ("circuits", "cached")}


@dataclass(frozen=True)
class TranspileContext:
    """What, besides the circuits, a transpilation's output depends on; one per plan.

    Build it with :meth:`for_backend`, once per plan: fingerprinting a 156-qubit target takes
    a few ms, as long as a whole cache hit.
    """

    backend: str
    target: str | None
    calibration_snapshot: str | None
    optimization_level: int
    seed: int
    qiskit: str

    @classmethod
    def for_backend(cls, backend_name: str, backend: Any, snapshot: str | None,
                    optimization_level: int, seed: int) -> TranspileContext:
        """The context of transpiling for ``backend``.

        Args:
            backend: the backend object transpiled for (its target is fingerprinted).
            snapshot: sha256 of the backend's calibration snapshot.
        """
        import qiskit

        return cls(backend_name, target_fingerprint(backend), snapshot, optimization_level, seed,
                   qiskit.__version__)


def cache_inputs(context: TranspileContext, logical_hash: str,
                 circuits: list[QuantumCircuit],
                 initial_layout: list[int] | None = None) -> dict[str, Any]:
    """What the transpiler's output depends on, as a JSON-able dict (hashed by :func:`cache_key`).

    Args:
        logical_hash: ``circuit_hash`` of ``circuits``, the logical circuits.
        initial_layout: the fixed placement, if the experiment chose one (absent from the
            inputs otherwise, so the keys of transpiler-placed units are unchanged).
    """
    extra = {} if initial_layout is None else {"initial_layout": list(initial_layout)}
    return {
        **extra,
        "format": FORMAT_VERSION,
        "logical_circuit_hash": logical_hash,
        # The OpenQASM 3 text omits these, yet they reach the transpiler's output.
        "logical_extras": hashlib.sha256(json.dumps(
            [[c.name, repr(c.global_phase), c.metadata] for c in circuits],
            sort_keys=True, default=repr).encode()).hexdigest(),
        **asdict(context),
    }


def cache_key(inputs: dict[str, Any]) -> str:
    """The entry name for :func:`cache_inputs`: sha256 (hex) of their canonical JSON."""
    return hashlib.sha256(_compact_json(inputs)).hexdigest()


def target_fingerprint(backend: Any) -> str | None:
    """sha256 of a backend target's qubit count, operations and the qubits each acts on.

    ``None`` for a backend without a target (then only its name and calibration key it).
    """
    target = getattr(backend, "target", None)
    if target is None:
        return None
    operations = []
    for name in sorted(target.operation_names):
        qargs = target.qargs_for_operation_name(name)
        operations.append([name, None if qargs is None else sorted(list(q) for q in qargs)])
    text = json.dumps([target.num_qubits, operations], separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


class TranspileCache:
    """The cache directory: look entries up, store new ones; never raises on I/O trouble.

    What went wrong (a damaged entry, an unwritable directory) is collected in ``warnings``,
    one line each, for the caller to show.

    Args:
        directory: where entries live (see :func:`cache_directory`); created on first write.
        writable: False to only read (a dry run writes nothing).
    """

    def __init__(self, directory: Path, *, writable: bool = True):
        self.directory = Path(directory)
        self.writable = writable
        self.warnings: list[str] = []

    def path(self, key: str) -> Path:
        """The entry file of ``key``."""
        return self.directory / f"{key}{_SUFFIX}"

    def load(self, key: str, inputs: dict[str, Any]) -> TranspiledUnit | None:
        """The entry for ``key`` if present and trustworthy, else None (a miss).

        A missing entry is a silent miss; a present but unusable one adds a warning.
        """
        path = self.path(key)
        try:
            data = path.read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            self.warnings.append(f"cannot read transpile cache entry {path}: "
                                 f"{exc.strerror or exc}; transpiling again")
            return None
        try:
            unit = _decode(data, key, inputs)
        except Exception as exc:  # whatever the damage, the remedy is to transpile again
            self.warnings.append(f"ignored damaged transpile cache entry {path.name} "
                                 f"({_describe(exc)}); transpiling again")
            return None
        if self.writable:
            try:
                os.utime(path)  # used now: pruning keeps what is used
            except OSError:
                pass
        return unit

    def store(self, key: str, inputs: dict[str, Any], unit: TranspiledUnit,
              qpy_bytes: bytes) -> None:
        """Write (or overwrite) the entry for ``key``; a failure becomes a warning.

        Args:
            qpy_bytes: the QPY of ``unit.circuits`` as the transpiler returned them.
        """
        if not self.writable:
            return
        try:
            header = {"key": key, "inputs": inputs, "derived": unit.derived(),
                      "qpy_length": len(qpy_bytes)}
            body = _compact_json(header) + b"\n" + qpy_bytes
            checksum = _MAGIC + b" " + hashlib.sha256(body).hexdigest().encode() + b"\n"
            atomic_write_bytes(self.path(key), checksum + body)
        except Exception as exc:  # an optimisation must not fail the submission it speeds up
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else _describe(exc)
            self.warnings.append(f"cannot write the transpile cache in {self.directory}: "
                                 f"{reason}; continuing without it")
            # One warning is enough: the next write would fail the same way.
            self.writable = False


@dataclass(frozen=True)
class CacheLimits:
    """How much of the cache each prune keeps (``QCOURIER_TRANSPILE_CACHE_MAX_AGE_DAYS``,
    ``QCOURIER_TRANSPILE_CACHE_MAX_MB``)."""

    max_age_days: float = 30.0
    max_bytes: int = 200_000_000


@dataclass(frozen=True)
class PruneReport:
    """What :func:`prune` removed."""

    removed: int = 0
    freed_bytes: int = 0
    kept: int = 0
    kept_bytes: int = 0


def prune(directory: Path, max_age_days: float, max_bytes: int,
          now: float | None = None) -> PruneReport:
    """Remove entries unused for ``max_age_days``, then the least recently used until the
    rest total at most ``max_bytes``; also temporary files left by a killed writer.

    Never raises: an entry that cannot be removed stays (the cache is an optimisation).
    """
    from qcourier.files import STALE_TEMP_SECONDS, remove_stale_temp_files

    now = time.time() if now is None else now
    try:
        names = os.listdir(directory)
    except OSError:
        return PruneReport()
    removed = remove_stale_temp_files([Path(directory)],
                                      older_than=STALE_TEMP_SECONDS + (time.time() - now))
    entries: list[tuple[float, int, Path]] = []
    freed = 0
    for name in names:
        if not name.endswith(_SUFFIX):
            continue
        path = Path(directory) / name
        try:
            st = path.stat()
        except OSError:
            continue
        if now - st.st_mtime > max_age_days * 86400:
            removed, freed = removed + _unlink(path), freed + st.st_size
        else:
            entries.append((st.st_mtime, st.st_size, path))
    entries.sort()  # least recently used first
    total = sum(size for _, size, _ in entries)
    while entries and total > max_bytes:
        _, size, path = entries.pop(0)
        if _unlink(path):
            removed, freed, total = removed + 1, freed + size, total - size
    return PruneReport(removed, freed, len(entries), total)


def _unlink(path: Path) -> int:
    try:
        path.unlink()
        return 1
    except OSError:
        return 0


def _decode(data: bytes, key: str, inputs: dict[str, Any]) -> TranspiledUnit:
    from io import BytesIO

    from qiskit import qpy

    first, _, body = data.partition(b"\n")
    magic, _, checksum = first.partition(b" ")
    if magic != _MAGIC:
        raise ValueError("not a transpile cache entry")
    # Covers the header too: a flipped digit in a stored depth would still parse as JSON.
    if hashlib.sha256(body).hexdigest().encode() != checksum:
        raise ValueError("checksum mismatch (truncated or altered)")
    line, _, payload = body.partition(b"\n")
    header = json.loads(line)
    if header["key"] != key or header["inputs"] != inputs:
        raise ValueError("written for other inputs")
    if len(payload) != header["qpy_length"]:
        raise ValueError("payload length mismatch")
    circuits = list(qpy.load(BytesIO(payload)))
    unit = TranspiledUnit(circuits=circuits, cached=True, **header["derived"])
    if len(circuits) != len(unit.circuit_depths):
        raise ValueError("circuit count mismatch")
    return unit


def _compact_json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def _describe(exc: Exception) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}"[:200] if text else type(exc).__name__
