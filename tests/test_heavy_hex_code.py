"""The heavy-hex subsystem code prototype: deterministic detectors and circuit distance d."""

from __future__ import annotations

import pytest

from qcourier.experiments.heavy_hex_code import memory_circuit


@pytest.mark.parametrize("basis", ["z", "x"])
def test_noiseless_circuit_has_no_detection_events(basis):
    circuit, num_qubits = memory_circuit(3, 3, basis)
    assert num_qubits == 23  # as in Sundaresan et al. (2023)
    dets, obs = circuit.compile_detector_sampler(seed=1).sample(200, separate_observables=True)
    assert circuit.num_detectors > 0
    assert not dets.any() and not obs.any()


@pytest.mark.parametrize(("distance", "basis"), [(3, "z"), (3, "x"), (5, "z"), (5, "x")])
def test_fault_distance_equals_code_distance(distance, basis):
    circuit, _ = memory_circuit(distance, 3, basis, p=1e-3)
    size = 4 if distance == 3 else 3
    error = circuit.search_for_undetectable_logical_errors(
        dont_explore_detection_event_sets_with_size_above=size,
        dont_explore_edges_with_degree_above=size,
        dont_explore_edges_increasing_symptom_degree=False,
    )
    assert len(error) == distance


def test_flags_are_needed_for_the_x_basis_distance():
    # Without the flag detectors a hook error of a weight-4 Z gauge goes undetected: the
    # distance check is not vacuous.
    circuit, _ = memory_circuit(3, 2, "x", p=1e-3, flag_detectors=False)
    error = circuit.search_for_undetectable_logical_errors(
        dont_explore_detection_event_sets_with_size_above=4,
        dont_explore_edges_with_degree_above=4,
        dont_explore_edges_increasing_symptom_degree=False,
    )
    assert len(error) < 3
