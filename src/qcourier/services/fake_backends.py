"""The fake backends of qiskit-ibm-runtime (device snapshots) that the local service runs on and
tests use: the one module besides the IBM adapter that imports `qiskit_ibm_runtime`.
"""

from __future__ import annotations

import json
import warnings
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qcourier.services.base import (
    ServiceError,
)

if TYPE_CHECKING:
    from qiskit.providers import BackendV2


@cache
def _fake_backend_classes() -> dict[str, type]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from qiskit_ibm_runtime import fake_provider
        from qiskit_ibm_runtime.fake_provider.fake_backend import FakeBackendV2

    found = {}
    for attr in dir(fake_provider):
        cls = getattr(fake_provider, attr)
        if isinstance(cls, type) and issubclass(cls, FakeBackendV2) and cls is not FakeBackendV2:
            name = getattr(cls, "backend_name", None)
            if name and name not in found:
                found[name] = cls
    return found


@cache
def fake_backend(name: str) -> BackendV2:
    """The fake backend called ``name`` (loaded once per process).

    Raises:
        ServiceError: no fake backend has that name (the message lists them).
    """
    classes = _fake_backend_classes()
    if name not in classes:
        raise ServiceError(
            f"unknown backend {name!r} on the local service; choose one of: "
            + ", ".join(sorted(classes))
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return classes[name]()


@cache
def _calibration_text(name: str) -> str:
    """The fake backend's calibration snapshot as JSON text (built once per process)."""
    return json.dumps(fake_backend(name).properties().to_dict(), default=str)


#: The snapshot key that declares a simulated device's noise multiplier (see ``noise_model``).
NOISE_SCALE_KEY = "qcourier_noise_scale"


def local_calibration(name: str) -> dict[str, Any]:
    """The fake backend's calibration snapshot (``BackendProperties.to_dict()`` form, JSON-able).

    Raises:
        ServiceError: no fake backend has that name.
    """
    return json.loads(_calibration_text(name))


def _backend_size(cls: type) -> int:
    conf = Path(cls.dirname) / cls.conf_filename
    return int(json.loads(conf.read_text())["n_qubits"])

