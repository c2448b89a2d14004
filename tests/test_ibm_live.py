"""Live: a 2-qubit canary on real IBM Quantum hardware, for users with an account.

Opt-in only: it runs when ``QCOURIER_LIVE_IBM=1`` is set *and* a real token is in the
environment (``IBM_QUANTUM_TOKEN``, read here at import, before the test isolation clears it)
and no ``QCOURIER_IBM_URL`` redirects the client. A token exported for daily work is not
consent to spend QPU time or to wait hours in a queue. It
spends a little QPU time (one job, 100 shots) and waits for the queue, up to
``QCOURIER_LIVE_WAIT_SECONDS`` (default 2 hours).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from qcourier.cli import collect, submit

LIVE_TOKEN = os.environ.get("IBM_QUANTUM_TOKEN")
LIVE_INSTANCE = os.environ.get("IBM_QUANTUM_INSTANCE")
WAIT_SECONDS = float(os.environ.get("QCOURIER_LIVE_WAIT_SECONDS", "7200"))

pytestmark = [
    pytest.mark.skipif(os.environ.get("QCOURIER_LIVE_IBM") != "1",
                       reason="live IBM test: opt in with QCOURIER_LIVE_IBM=1 (spends QPU time)"),
    pytest.mark.skipif(not LIVE_TOKEN or bool(os.environ.get("QCOURIER_IBM_URL")),
                       reason="live test: needs a real IBM_QUANTUM_TOKEN in the environment"),
    pytest.mark.timeout(int(WAIT_SECONDS) + 600),
]


def test_bell_canary_on_ibm_quantum(invoke, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("IBM_QUANTUM_TOKEN", LIVE_TOKEN or "")
    if LIVE_INSTANCE:
        monkeypatch.setenv("IBM_QUANTUM_INSTANCE", LIVE_INSTANCE)
    monkeypatch.setenv("QCOURIER_SERVICE", "ibm")
    result = invoke(submit.main, ["-e", "bell", "--shots", "100", "--json"])
    assert result.exit_code == 0, result.output
    [job] = json.loads(result.stdout)["jobs"]
    assert job["service"] == "ibm" and job["backend"].startswith("ibm_")
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        out = json.loads(invoke(collect.main, ["--json"]).stdout)
        if out["pending"] == 0:
            break
        assert time.monotonic() < deadline, f"job {job['job_id']} still pending after {WAIT_SECONDS:.0f} s"
        time.sleep(60)
    final = out["jobs"][0]
    assert final["status"] == "completed", final
    payload = json.loads((tmp_path / "ledger" / final["result_path"]).read_text())
    assert sum(payload["counts"][0].values()) == 100
    assert payload["analysis"]["hellinger_fidelity"] > 0.5
