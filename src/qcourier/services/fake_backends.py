"""The fake backends of qiskit-ibm-runtime (device snapshots) that the local service runs on and
tests use: the one module besides the IBM adapter that imports `qiskit_ibm_runtime`.

Importing qiskit-ibm-runtime costs a process about a second, and building a fake backend's
target another quarter of one; a ``qsubmit`` or ``qcollect`` on the local service needs
neither. So :class:`FakeDevices` describes each device once — its target and repetition
delay (:func:`qcourier.services.device_snapshot.describe`) and its calibration
(``BackendProperties.to_dict()``) — in a JSON file under a cache directory
(``QCOURIER_CACHE_DIR``, by default ``~/.cache/qcourier``), in a folder named for the
installed qiskit and qiskit-ibm-runtime versions, with the list of devices and their sizes
beside it. Later processes rebuild the backend from that file
(:class:`~qcourier.services.device_snapshot.SnapshotBackend`). Each file starts with the
sha256 of the rest; a missing, damaged or unreadable one is described again from
qiskit-ibm-runtime and rewritten atomically, and a directory that cannot be written to only
costs the time. Deleting the directory is always safe.

Transpiling still imports qiskit-ibm-runtime: qiskit loads every installed transpiler plugin,
the runtime's among them, whenever it builds a preset pass manager. A ``qsubmit`` whose
transpilation is cached, and every ``qcollect``, go without it.
"""

from __future__ import annotations

import hashlib
import json
import threading
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qcourier.files import atomic_write_bytes
from qcourier.services.base import ServiceError, ignore_warnings_from

if TYPE_CHECKING:
    from qiskit.providers import BackendV2

#: The snapshot key that declares a simulated device's noise multiplier (see ``noise_model``).
NOISE_SCALE_KEY = "qcourier_noise_scale"
#: Where, under the cache directory, the device descriptions live.
DEVICES_DIR = "fake_backends"
_CATALOGUE = "catalogue"


@cache
def _fake_backend_classes() -> dict[str, type]:
    ignore_warnings_from("qiskit_ibm_runtime", __name__)
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


def _unknown(name: str, names: Any) -> ServiceError:
    return ServiceError(f"unknown backend {name!r} on the local service; choose one of: "
                        + ", ".join(sorted(names)))


@cache
def fake_backend(name: str) -> BackendV2:
    """qiskit-ibm-runtime's own fake backend called ``name`` (loaded once per process).

    Raises:
        ServiceError: no fake backend has that name (the message lists them).
    """
    classes = _fake_backend_classes()
    if name not in classes:
        raise _unknown(name, classes)
    ignore_warnings_from("qiskit_ibm_runtime", __name__)
    return classes[name]()


@cache
def _calibration_text(name: str) -> str:
    """The fake backend's calibration snapshot as JSON text (built once per process)."""
    return json.dumps(fake_backend(name).properties().to_dict(), default=str)


def local_calibration(name: str) -> dict[str, Any]:
    """qiskit-ibm-runtime's calibration snapshot of a fake backend (``BackendProperties.to_dict()``
    form, JSON-able).

    Raises:
        ServiceError: no fake backend has that name.
    """
    return json.loads(_calibration_text(name))


def _backend_size(cls: Any) -> int:
    conf = Path(cls.dirname) / cls.conf_filename
    return int(json.loads(conf.read_text())["n_qubits"])


def _versions_folder() -> str:
    """The folder of this installation's descriptions: they hold for these versions only."""
    from importlib.metadata import version

    from qcourier.services.device_snapshot import FORMAT

    return (f"qiskit-{version('qiskit')}-runtime-{version('qiskit-ibm-runtime')}"
            f"-format-{FORMAT}")


class FakeDevices:
    """The fake devices the local service offers, described once per installation.

    Thread-safe; one per cache directory and process (:func:`fake_devices`).

    Args:
        directory: the cache directory (descriptions in ``fake_backends/`` under it);
            ``None`` describes every device anew in each process, in memory only.
    """

    def __init__(self, directory: Path | None):
        self.directory = None if directory is None else Path(directory)
        self._lock = threading.RLock()
        self._folder: Path | None = None
        self._sizes: dict[str, int] | None = None
        self._described: dict[str, dict[str, Any]] = {}
        self._calibrations: dict[str, str] = {}
        self._backends: dict[str, BackendV2] = {}

    def sizes(self) -> dict[str, int]:
        """Every device's name and number of qubits."""
        with self._lock:
            if self._sizes is None:
                self._sizes = self._cached(_CATALOGUE, lambda: {
                    name: _backend_size(cls) for name, cls in _fake_backend_classes().items()})
            return self._sizes

    def backend(self, name: str) -> BackendV2:
        """The device as a backend to transpile for (made once per process).

        Raises:
            ServiceError: no device has that name.
        """
        with self._lock:
            if name not in self._backends:
                from qcourier.services.device_snapshot import SnapshotBackend

                described = self._description(name)["backend"]
                self._backends[name] = (fake_backend(name) if described is None
                                        else SnapshotBackend(described))
            return self._backends[name]

    def calibration(self, name: str) -> dict[str, Any]:
        """The device's calibration snapshot (a fresh copy, the caller's to change).

        Raises:
            ServiceError: no device has that name.
        """
        with self._lock:
            if name not in self._calibrations:
                self._calibrations[name] = json.dumps(self._description(name)["calibration"])
            text = self._calibrations[name]
        return json.loads(text)

    def dt(self, name: str) -> float | None:
        """The device's time step in seconds (what idle noise is counted in)."""
        with self._lock:
            described = self._description(name)["backend"]
        return fake_backend(name).dt if described is None else described["dt"]

    def _description(self, name: str) -> dict[str, Any]:
        if name not in self._described:
            if name not in self.sizes():
                raise _unknown(name, self.sizes())
            self._described[name] = self._cached(name, lambda: _describe(name))
        return self._described[name]

    def _cached(self, name: str, make: Any) -> Any:
        """The value stored as ``name``, or ``make()``, stored for the next process."""
        if self.directory is None:
            return make()
        if self._folder is None:
            self._folder = self.directory / DEVICES_DIR / _versions_folder()
        path = self._folder / f"{name}.json"
        value = _read(path)
        if value is None:
            value = make()
            _write(path, value)
        return value


def _describe(name: str) -> dict[str, Any]:
    """The device's description; ``backend`` is None for a target that a description cannot
    hold (then every process loads qiskit-ibm-runtime's own backend, as it did before)."""
    from qcourier.services.device_snapshot import DescriptionError, describe

    try:
        backend = describe(fake_backend(name))
    except DescriptionError:
        backend = None
    return {"backend": backend, "calibration": json.loads(_calibration_text(name))}


def _read(path: Path) -> Any | None:
    """The JSON value of a file written by :func:`_write`, if it is whole and unchanged."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    digest, _, body = data.partition(b"\n")
    if hashlib.sha256(body).hexdigest().encode() != digest:
        return None
    try:
        return json.loads(body)
    except ValueError:
        return None


def _write(path: Path, value: Any) -> None:
    body = json.dumps(value, separators=(",", ":")).encode()
    try:
        atomic_write_bytes(path, hashlib.sha256(body).hexdigest().encode() + b"\n" + body,
                           durable=False)
    except OSError:
        pass  # a cache: a read-only directory costs the next process the time, nothing else


@cache
def fake_devices(directory: Path | None) -> FakeDevices:
    """The :class:`FakeDevices` of a cache directory, one per process."""
    return FakeDevices(directory)
