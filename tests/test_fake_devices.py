"""The local service's fake devices: described once from qiskit-ibm-runtime, rebuilt exactly,
kept in a checksummed cache that later processes read without importing the IBM client."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from qcourier.circuits.transpile import transpile
from qcourier.experiments import get_experiment
from qcourier.services.base import ServiceError
from qcourier.services.device_snapshot import SnapshotBackend, describe
from qcourier.services.fake_backends import (
    DEVICES_DIR,
    FakeDevices,
    _backend_size,
    _fake_backend_classes,
    fake_backend,
    local_calibration,
)


@pytest.mark.parametrize("name", ["fake_fez", "fake_sherbrooke", "fake_boston"])
def test_a_description_rebuilds_the_same_target(name: str):
    """Heron (CZ), Eagle (ECR, its timing constraints) and a device with plain named
    instructions (measure_2, reset_2): every operation, qargs, duration, error and qubit."""
    real = fake_backend(name)
    rebuilt = SnapshotBackend(json.loads(json.dumps(describe(real))))
    assert describe(rebuilt) == describe(real)

    def properties(target, operation):  # InstructionProperties compare by identity
        return {qargs: None if p is None else (p.duration, p.error)
                for qargs, p in target[operation].items()}

    assert set(rebuilt.target.operation_names) == set(real.target.operation_names)
    for operation in real.target.operation_names:
        assert properties(rebuilt.target, operation) == properties(real.target, operation)
        assert (type(rebuilt.target.operation_from_name(operation))
                is type(real.target.operation_from_name(operation)))
    assert ([(q.t1, q.t2, q.frequency) for q in rebuilt.target.qubit_properties]
            == [(q.t1, q.t2, q.frequency) for q in real.target.qubit_properties])
    assert rebuilt.target.dt == real.target.dt
    assert rebuilt.target.timing_constraints().__dict__ == real.target.timing_constraints().__dict__
    assert rebuilt.configuration().default_rep_delay == real.configuration().default_rep_delay


def test_circuits_transpile_and_estimate_alike_on_the_rebuilt_backend():
    real = fake_backend("fake_fez")
    rebuilt = SnapshotBackend(json.loads(json.dumps(describe(real))))
    for experiment, params in (("surface_code", {}), ("ghz", {"width": 5})):
        cls = get_experiment(experiment)
        for unit in cls.build(cls.Params(**params)):
            ours, theirs = transpile(unit.circuits, rebuilt), transpile(unit.circuits, real)
            assert ours == theirs
            assert ([c.estimate_duration(rebuilt.target) for c in ours]
                    == [c.estimate_duration(real.target) for c in theirs])


def test_devices_come_from_the_cache_in_a_process_that_never_imports_the_ibm_client(
        tmp_path: Path):
    first = FakeDevices(tmp_path)
    assert first.sizes()["fake_fez"] == 156 and first.backend("fake_fez").num_qubits == 156
    assert first.calibration("fake_fez") == local_calibration("fake_fez")
    code = (
        "import json, sys\n"
        "from pathlib import Path\n"
        "from qcourier.services.fake_backends import FakeDevices\n"
        f"devices = FakeDevices(Path({str(tmp_path)!r}))\n"
        "backend = devices.backend('fake_fez')\n"
        "print(json.dumps([devices.sizes(), backend.num_qubits, devices.dt('fake_fez'),\n"
        "                  sorted(backend.operation_names), devices.calibration('fake_fez'),\n"
        "                  'qiskit_ibm_runtime' in sys.modules]))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    sizes, qubits, dt, operations, calibration, imported = json.loads(done.stdout)
    assert imported is False
    assert sizes == {name: _backend_size(cls) for name, cls in _fake_backend_classes().items()}
    real = fake_backend("fake_fez")
    assert (qubits, dt, operations) == (156, real.dt, sorted(real.operation_names))
    assert calibration == local_calibration("fake_fez")


def test_a_damaged_or_foreign_description_is_made_again(tmp_path: Path):
    FakeDevices(tmp_path).backend("fake_fez")
    (path,) = (tmp_path / DEVICES_DIR).glob("*/fake_fez.json")
    good = path.read_bytes()
    digest, _, body = good.partition(b"\n")
    path.write_bytes(digest + b"\n" + body.replace(b'"num_qubits":156', b'"num_qubits":157'))
    assert FakeDevices(tmp_path).backend("fake_fez").num_qubits == 156  # checksum failed
    assert path.read_bytes() == good  # and the file was written again
    path.write_bytes(b"not json")
    assert FakeDevices(tmp_path).calibration("fake_fez") == local_calibration("fake_fez")
    assert path.read_bytes() == good


def test_an_unwritable_cache_only_costs_time(tmp_path: Path):
    blocked = tmp_path / "file"
    blocked.write_text("a file where the cache directory would be")
    devices = FakeDevices(blocked)
    assert devices.backend("fake_fez").num_qubits == 156


def test_an_unknown_device_is_named_with_the_choices(tmp_path: Path):
    with pytest.raises(ServiceError, match=r"unknown backend 'fake_nowhere'.*fake_fez"):
        FakeDevices(tmp_path).backend("fake_nowhere")
