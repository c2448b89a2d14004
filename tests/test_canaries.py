"""Tests of the Bell and GHZ canary experiments."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from qcourier.errors import UsageError
from qcourier.experiments import parse_params
from qcourier.experiments.canaries import (
    BellExperiment,
    BellParams,
    GHZExperiment,
    GHZParams,
    analyse_cat,
)

BELL = BellExperiment()
GHZ = GHZExperiment()


def _exact_probabilities(circuit):
    from qiskit.quantum_info import Statevector

    return Statevector(circuit.remove_final_measurements(inplace=False)).probabilities_dict()


def test_bell_build():
    (unit,) = BELL.build(BellParams(shots=300))
    assert unit.shots == 300
    assert unit.metadata == {"width": 2}
    (circuit,) = unit.circuits
    assert circuit.num_qubits == 2
    assert len(circuit.cregs) == 1 and circuit.num_clbits == 2
    assert circuit.count_ops().get("measure") == 2
    assert _exact_probabilities(circuit) == pytest.approx({"00": 0.5, "11": 0.5})


@pytest.mark.parametrize("width", [2, 3, 6])
def test_ghz_build(width):
    (unit,) = GHZ.build(GHZParams(width=width, shots=50))
    assert unit.shots == 50
    assert unit.metadata == {"width": width}
    (circuit,) = unit.circuits
    assert circuit.num_qubits == width
    assert len(circuit.cregs) == 1 and circuit.num_clbits == width
    assert circuit.count_ops().get("measure") == width
    assert _exact_probabilities(circuit) == pytest.approx({"0" * width: 0.5, "1" * width: 0.5})
    assert GHZ.build(GHZParams(width=width))[0].circuits[0].num_qubits == width


def test_bell_analyse_ideal():
    result = BELL.analyse({"width": 2}, [{"00": 512, "11": 512}], None)
    assert result["experiment"] == "bell"
    assert result["shots"] == 1024
    assert result["hellinger_fidelity"] == pytest.approx(1.0, abs=1e-12)
    assert result["p_all_zeros"] == pytest.approx(0.5)
    assert result["p_all_ones"] == pytest.approx(0.5)


def test_bell_analyse_all_wrong():
    result = BELL.analyse({"width": 2}, [{"01": 1000}], None)
    assert result["hellinger_fidelity"] == 0.0
    assert result["p_all_zeros"] == 0.0 and result["p_all_ones"] == 0.0


def test_bell_analyse_unbalanced():
    # all in 00: fidelity (sqrt(1 * 0.5))^2 = 0.5
    result = BELL.analyse({"width": 2}, [{"00": 100}], None)
    assert result["hellinger_fidelity"] == pytest.approx(0.5)


def test_ghz_analyse_ideal_and_wrong():
    width = 4
    ideal = GHZ.analyse({"width": width}, [{"0000": 300, "1111": 300}], None)
    assert ideal["experiment"] == "ghz"
    assert ideal["hellinger_fidelity"] == pytest.approx(1.0, abs=1e-12)
    wrong = GHZ.analyse({"width": width}, [{"0101": 600}], None)
    assert wrong["hellinger_fidelity"] == 0.0
    # width comes from the metadata: 2-bit "all ones" is not 4-bit "all ones"
    assert GHZ.analyse({"width": 2}, [{"1111": 10}], None)["hellinger_fidelity"] == 0.0


def test_analyse_cat_register_spaces_and_empty():
    assert analyse_cat({"00 0": 5, "11 1": 5}, 3)["hellinger_fidelity"] == pytest.approx(1.0)
    empty = analyse_cat({}, 3)
    assert empty["shots"] == 0 and empty["hellinger_fidelity"] == 0.0 and empty["p_all_zeros"] == 0.0


@pytest.mark.parametrize("values", [{"width": 1}, {"width": 0}, {"width": 157}, {"shots": 0},
                                    {"unknown": 1}])
def test_ghz_params_invalid(values):
    with pytest.raises(ValidationError):
        GHZParams(**values)


def test_ghz_params_via_parse_params():
    assert parse_params(GHZ, {"width": "3"}).width == 3
    with pytest.raises(UsageError, match="width"):
        parse_params(GHZ, {"width": "1"})


def test_bell_has_no_width_parameter():
    with pytest.raises(ValidationError):
        BellParams(width=3)


def test_ghz_noiseless_local_service(tmp_path):
    from qcourier.circuits.transpile import transpile
    from qcourier.services.local import LocalService, LocalServiceConfig

    service = LocalService(LocalServiceConfig(root=tmp_path / "noiseless", queue_seconds=0,
                                              run_seconds=0, seed=1, noise=False))
    params = GHZParams(width=4, shots=2000)
    (unit,) = GHZ.build(params)
    isa = transpile(unit.circuits, service.backend("fake_fez"))
    job_id = service.submit("fake_fez", isa, unit.shots)
    result = service.job_result(job_id)
    analysis = GHZ.analyse(unit.metadata, result.counts, None)
    assert analysis["shots"] == 2000
    assert analysis["hellinger_fidelity"] > 0.99
    assert 0.4 < analysis["p_all_zeros"] < 0.6
    assert analysis["p_all_zeros"] + analysis["p_all_ones"] == pytest.approx(1.0)
