"""Submission: experiments -> job units -> transpiled circuits -> jobs -> ledger lines.

``plan_submission`` does everything that needs no service call beyond reading the backend
(build, transpile, hash, provenance); ``submit_plan`` submits each planned job and appends
its ledger line right after the service accepted it. A dry run stops after planning and
writes nothing. Transpiled circuits are reused from ``<ledger>/cache/transpiled/`` when the
same circuits were transpiled for the same backend and calibration before (see
:mod:`qcourier.circuits.cache`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qcourier.circuits.cache import (
    CacheLimits,
    TranspileCache,
    TranspileContext,
    TranspiledUnit,
    cache_inputs,
    cache_key,
)
from qcourier.circuits.transpile import (
    MAX_INPUT_BYTES,
    OPTIMIZATION_LEVEL,
    TRANSPILER_SEED,
    _base64_length,
    check_input_size,
    describe_transpiled,
    transpile,
)
from qcourier.errors import UsageError
from qcourier.experiments import Experiment, ExperimentParams, JobUnit
from qcourier.experiments.base import Device
from qcourier.ledger.record import LedgerRecord
from qcourier.ledger.status import new_record_id, utc_now
from qcourier.provenance import (
    GitState,
    calibration_age_hours,
    circuit_hash,
    git_state,
    snapshot_sha256,
)
from qcourier.services.base import (
    AuthenticationError,
    QuantumService,
    ServiceError,
    TransientServiceError,
)
from qcourier.submit.dispatch import QueuePolicy

if TYPE_CHECKING:
    from qiskit import QuantumCircuit

    from qcourier.accounting.budget import BudgetGuard
    from qcourier.store.lease import TeamLease

#: A calibration older than this gets a warning at submission.
STALE_CALIBRATION_HOURS = 24.0

Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


@dataclass
class PlannedJob:
    """One job ready to submit: its circuits and its ledger record (without a job id)."""

    experiment: str
    isa_circuits: list[QuantumCircuit]
    shots: int
    record: LedgerRecord


@dataclass
class Plan:
    """What a submission to one service will do."""

    service: QuantumService
    backend: str
    jobs: list[PlannedJob]
    calibration: dict[str, Any]
    git: GitState
    warnings: list[str] = field(default_factory=list)
    #: Job units whose transpilation came from the transpile cache, and those transpiled.
    cache_hits: int = 0
    cache_misses: int = 0


@dataclass(frozen=True)
class ExecutionLimits:
    """How ``max_execution_time`` is derived from a job's estimated QPU seconds."""

    margin: float = 3.0
    cap: int = 300


@dataclass(frozen=True)
class SubmitOptions:
    """How to submit (``qsubmit``'s options, validated by the command): what
    :func:`plan_submission` and :func:`~qcourier.submit.run.submit_plan` each read of it,
    their docstrings say.

    Attributes:
        backend: backend name; None: the least busy big enough.
        repeat: identical jobs per unit.
        repo_path: the experiment repository whose commit is recorded.
        jobs_file: append to this ledger file instead of a new one.
        dry_run: plan only, write nothing.
        limits: max_execution_time policy.
        policy: pending and per-minute caps, intent grace.
        force: submit even what dedupe would skip.
        guard: the budget guard; None: no budget check.
        progress: called with each step's description.
        transpile_cache: directory of the transpile cache, or None to transpile afresh. A
            dry run reads it but does not write it.
        cache_limits: what a submission that wrote the cache prunes it to (None: no pruning).
        team: the team store's budget leases; None: this machine's key lock alone.
        clock: the time now (UTC) for every decision and every line a submission writes.
    """

    backend: str | None = None
    repeat: int = 1
    repo_path: Path | None = None
    jobs_file: Path | None = None
    dry_run: bool = False
    limits: ExecutionLimits = ExecutionLimits()
    policy: QueuePolicy = QueuePolicy()
    force: bool = False
    guard: BudgetGuard | None = None
    progress: Progress = _quiet
    transpile_cache: Path | None = None
    cache_limits: CacheLimits | None = None
    team: TeamLease | None = None
    clock: Callable[[], datetime] = utc_now


@dataclass
class SubmissionOutcome:
    """What a submission did."""

    plan: Plan
    ledger_path: Path | None
    records: list[LedgerRecord]
    #: Why submission stopped early (the jobs before it stay recorded), or None.
    error: str | None = None
    #: Jobs not submitted because an identical one exists, one line each.
    skipped: list[str] = field(default_factory=list)
    #: Why the budget guard refused the whole submission, and whether only for pace.
    refusal: str | None = None
    paced: bool = False
    #: Jobs whose submission failed in a way that may have created them (a 5xx, a timeout):
    #: their intents stay, and the next ``qcollect`` finds out.
    maybe_submitted: int = 0

    @property
    def dry_run(self) -> bool:
        return self.ledger_path is None


def plan_submission(
    service: QuantumService,
    experiments: list[tuple[Experiment, ExperimentParams]],
    options: SubmitOptions = SubmitOptions(),
    *,
    output_dirs: Sequence[Path] = (),
) -> Plan:
    """Build, transpile and hash every job of a submission.

    Args:
        options: read here: ``backend``, ``repeat``, ``repo_path``, ``limits``, ``progress``,
            ``transpile_cache`` (None transpiles everything afresh) and ``dry_run`` (the cache
            is then only read: a dry run writes nothing).
        output_dirs: qcourier's own output directories (ledger, local service), whose
            changes do not make the recorded git tree dirty.

    Raises:
        UsageError: bad repeat count, unknown backend, circuits wider than the backend, or a
            job input over IBM's 50 MB limit.
    """
    from qcourier.circuits.estimate import estimate_qpu_seconds, max_execution_time

    progress = options.progress
    if options.repeat < 1:
        raise UsageError(f"--repeat must be at least 1, got {options.repeat}")
    built: list[tuple[Experiment, ExperimentParams, JobUnit]] = []
    for experiment, params in experiments:
        progress(f"building {experiment.name}")
        built.extend((experiment, params, unit) for unit in experiment.build(params))
    width = max(c.num_qubits for _, _, unit in built for c in unit.circuits)
    backend_name, target = _choose_backend(service, options.backend, width)
    calibration = service.calibration(backend_name)
    snapshot = snapshot_sha256(calibration)
    age = calibration_age_hours(calibration)
    git = git_state(options.repo_path, output_dirs)
    plan = Plan(service, backend_name, [], calibration, git, [git.warning] if git.warning else [])
    if age is not None and age > STALE_CALIBRATION_HOURS and not service.simulated:
        plan.warnings.append(f"the calibration of {backend_name} is {age:.0f} hours old")
    cache, context = _open_cache(options.transpile_cache, not options.dry_run, backend_name,
                                 target, snapshot, plan.warnings)
    device = Device(backend_name, getattr(target, "target", None), target.num_qubits, calibration)
    for experiment, params, unit in built:
        if getattr(target, "target", None) is not None:
            progress(f"placing {experiment.name} on {backend_name}")
            unit = experiment.place(unit, device)
        logical_hash = circuit_hash(unit.circuits)
        what = f"{experiment.name} ({len(unit.circuits)} circuits) for {backend_name}"
        transpiled = _transpile_unit(unit, logical_hash, target, cache, context, what, progress)
        if transpiled.cached:
            plan.cache_hits += 1
        else:
            plan.cache_misses += 1
        isa = transpiled.circuits
        template = _record_for(plan, experiment, params, unit, transpiled, logical_hash, snapshot)
        _attach_provenance(transpiled, experiment.name, template, unit, snapshot)
        estimate = estimate_qpu_seconds(isa, unit.shots, target)
        template = template.model_copy(update={
            "calibration_age_hours": age,
            "estimated_qpu_seconds": estimate,
            "max_execution_time": max_execution_time(estimate, options.limits.margin,
                                                     options.limits.cap),
        })
        for _ in range(options.repeat):
            plan.jobs.append(
                PlannedJob(experiment.name, isa, unit.shots,
                           template.model_copy(update={"record_id": new_record_id()}))
            )
    if cache is not None:
        plan.warnings.extend(cache.warnings)
    return plan


def _choose_backend(service: QuantumService, backend: str | None, width: int) -> tuple[str, Any]:
    """The backend's name and object: the one asked for, else the least busy wide enough.

    Raises:
        UsageError: no such backend, none wide enough, or it is narrower than ``width``.
    """
    try:
        name = backend or service.least_busy(width)
        target = service.backend(name)
    except (AuthenticationError, TransientServiceError):
        raise
    except ServiceError as exc:  # no such backend, or none large enough
        if exc.http_status is not None:  # the service failed: not the user's choice
            raise
        raise UsageError(str(exc)) from None
    if width > target.num_qubits:
        raise UsageError(
            f"the circuits need {width} qubits but backend {name} has "
            f"{target.num_qubits}; lower the width or choose a larger backend"
        )
    return name, target


def _attach_provenance(transpiled: TranspiledUnit, experiment: str, template: LedgerRecord,
                       unit: JobUnit, snapshot: str) -> None:
    """Put what the ledger record is built from into the first ISA circuit's metadata, and
    check the job's input size with it.

    It travels with the job (QPY keeps circuit metadata; the hashes ignore it), so that
    ``qcourier recover`` can rebuild the ledger record of a job whose ledger file is lost.
    """
    isa = transpiled.circuits
    stored_metadata = isa[0].metadata
    isa[0].metadata = {"qcourier": {"experiment": experiment,
                                    "params": template.params,
                                    "unit": unit.metadata,
                                    "circuit_hash": template.circuit_hash,
                                    "backend_snapshot_sha256": snapshot}}
    _check_planned_input_size(transpiled, stored_metadata, experiment)


def _open_cache(
    directory: Path | None,
    writable: bool,
    backend_name: str,
    target: Any,
    snapshot: str,
    warnings: list[str],
) -> tuple[TranspileCache | None, TranspileContext | None]:
    """The transpile cache and this plan's context for it, or (None, None) when disabled."""
    if directory is None:
        return None, None
    try:
        context = TranspileContext.for_backend(backend_name, target, snapshot,
                                               OPTIMIZATION_LEVEL, TRANSPILER_SEED)
    except Exception as exc:  # an odd backend object must not fail the submission
        warnings.append(f"transpile cache not used: cannot fingerprint the target of "
                        f"{backend_name} ({type(exc).__name__})")
        return None, None
    return TranspileCache(directory, writable=writable), context


def _transpile_unit(
    unit: JobUnit,
    logical_hash: str,
    target: Any,
    cache: TranspileCache | None,
    context: TranspileContext | None,
    what: str,
    progress: Progress,
) -> TranspiledUnit:
    """The unit's ISA circuits and derived values: from the cache, or transpiled (and cached).

    Each call returns circuit objects of its own (a hit loads them anew from QPY), so the
    provenance metadata the caller attaches to them is never shared with another plan.
    """
    from io import BytesIO

    from qiskit import qpy

    key = inputs = None
    if cache is not None and context is not None:
        inputs = cache_inputs(context, logical_hash, unit.circuits, unit.initial_layout)
        key = cache_key(inputs)
        hit = cache.load(key, inputs)
        if hit is not None:
            progress(f"reusing cached transpilation of {what}")
            return hit
    progress(f"transpiling {what}")
    isa = transpile(unit.circuits, target, unit.initial_layout, what)
    # Dumped before the caller adds provenance metadata: the entry must hold the transpiler's
    # output alone, since other experiments or params may share these circuits.
    buffer = BytesIO()
    qpy.dump(isa, buffer)
    payload = buffer.getvalue()
    transpiled = describe_transpiled(isa, len(payload))
    if cache is not None and key is not None and inputs is not None:
        cache.store(key, inputs, transpiled, payload)
    return transpiled


#: Below the limit by more than this, the size derived from the cached QPY length is trusted.
_INPUT_SIZE_MARGIN = 2**20


def _check_planned_input_size(transpiled: TranspiledUnit, replaced_metadata: dict[str, Any],
                              experiment: str) -> int:
    """:func:`check_input_size` of a planned job, without a QPY dump when far from the limit.

    The job's QPY differs from the one measured in ``transpiled.qpy_size`` only by the first
    circuit's metadata, which QPY stores as compact JSON; near the limit the job is dumped
    again and measured exactly.

    Args:
        replaced_metadata: the first circuit's metadata when ``qpy_size`` was measured.

    Returns:
        The input size in bytes.

    Raises:
        UsageError: the input exceeds the service's limit.
    """
    import json

    def compact(metadata: dict[str, Any]) -> int:
        return len(json.dumps(metadata, separators=(",", ":")).encode())

    circuits = transpiled.circuits
    estimate = _base64_length(transpiled.qpy_size - compact(replaced_metadata)
                              + compact(circuits[0].metadata))
    if estimate > MAX_INPUT_BYTES - _INPUT_SIZE_MARGIN:
        return check_input_size(circuits, experiment)
    return estimate


def _record_for(
    plan: Plan,
    experiment: Experiment,
    params: ExperimentParams,
    unit: JobUnit,
    transpiled: TranspiledUnit,
    logical_hash: str,
    snapshot: str,
) -> LedgerRecord:
    """The ledger record of one unit of ``plan`` (its service, backend and git state)."""
    service, git = plan.service, plan.git
    metadata = dict(unit.metadata)
    logical_state = metadata.pop("logical_state", None)
    # Copies: the record must not share lists with the transpiled unit.
    metadata["physical_qubits"] = list(transpiled.physical_qubits)
    metadata["circuit_depths"] = list(transpiled.circuit_depths)
    return LedgerRecord(
        service=service.name,
        api_key_index=service.api_key_index,
        backend=plan.backend,
        experiment_type=experiment.name,
        logical_state=None if logical_state is None else str(logical_state),
        shots=unit.shots,
        num_circuits=len(transpiled.circuits),
        circuit_hash=logical_hash,
        isa_circuit_hash=transpiled.isa_circuit_hash,
        transpiled_depth=max(metadata["circuit_depths"]),
        transpiled_gates=dict(transpiled.transpiled_gates),
        git_commit=git.commit,
        git_dirty=git.dirty,
        params=params.model_dump(mode="json"),
        metadata=metadata,
        backend_snapshot_sha256=snapshot,
    )


