"""Services: the interface (``base``), the local service and IBM Quantum, and the pool.

A :class:`ServicePool` makes services on first use — the local one, and one IBM service per
API key — so that a collector polls each ledger record with the service and key that
submitted it. Tests build a pool from service objects with :meth:`ServicePool.of`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from qcourier.services.base import QuantumService, ServiceError

if TYPE_CHECKING:
    from qcourier.config import Settings


class Submitted(Protocol):
    """What the pool needs of a job's record (services know nothing of the ledger)."""

    @property
    def service(self) -> str: ...

    @property
    def api_key_index(self) -> int | None: ...

SERVICE_NAMES = ("local", "ibm")

Factory = Callable[[int | None], QuantumService]


class ServicePool:
    """Services by name and key index, made once each."""

    def __init__(self, factories: dict[str, Factory]):
        self._factories = factories
        self._made: dict[tuple[str, int | None], QuantumService] = {}

    @classmethod
    def of(cls, *services: QuantumService) -> ServicePool:
        """A pool of these service objects (``ibm`` ones by their key index)."""
        by_key = {(s.name, s.api_key_index if s.name == "ibm" else None): s for s in services}

        def factory(name: str) -> Factory:
            def make(index: int | None) -> QuantumService:
                try:
                    return by_key[(name, index)]
                except KeyError:
                    raise ServiceError(f"no {name} service for key {index} in this pool") from None
            return make

        pool = cls({name: factory(name) for name, _ in by_key})
        return pool

    def get(self, name: str, key_index: int | None = None) -> QuantumService:
        """The service called ``name`` (for ``ibm``, the one of key ``key_index``).

        Raises:
            ServiceError: no such service is configured.
        """
        key = (name, key_index if name == "ibm" else None)
        if key not in self._made:
            if name not in self._factories:
                raise ServiceError(f"jobs of the {name} service cannot be reached: no {name} "
                                   "service is configured here")
            self._made[key] = self._factories[name](key[1])
        return self._made[key]

    def for_record(self, record: Submitted) -> QuantumService:
        """The service that can poll this record's job."""
        return self.get(record.service, record.api_key_index)


def default_service_name(settings: Settings) -> str:
    """``QCOURIER_SERVICE`` if set; else ``ibm`` when a token or saved account exists; else ``local``."""
    from qcourier.config import saved_account_exists

    if settings.service:
        return settings.service
    if settings.api_keys() or saved_account_exists():
        return "ibm"
    return "local"


def pool_from_settings(settings: Settings) -> ServicePool:
    """The services the settings configure: always the local one, IBM when keys exist."""
    from qcourier.config import saved_account_exists
    from qcourier.errors import UsageError

    def local(_: int | None) -> QuantumService:
        from qcourier.services.local import LocalService, LocalServiceConfig

        return LocalService(LocalServiceConfig(
            root=settings.local_service_dir,
            queue_seconds=settings.local_queue_seconds,
            run_seconds=settings.local_run_seconds,
            failure_rate=settings.local_failure_rate,
            seed=settings.local_seed,
            noise=settings.local_noise,
            noise_scale=settings.local_noise_scale,
            clifford_engine=settings.local_clifford_engine,
            latency_seconds=settings.local_latency_seconds,
            rate_limit_per_second=settings.local_rate_limit,
            usage_factor=settings.local_usage_factor,
            usage_delay_seconds=settings.local_usage_delay_seconds,
            cache_dir=settings.cache_dir,
        ))

    def ibm(index: int | None) -> QuantumService:
        from qcourier.services.ibm import IBMConnection, IBMService

        keys = {k.index: k for k in settings.api_keys()}
        connection = IBMConnection(channel=settings.ibm_quantum_channel, url=settings.ibm_url,
                                   timeout_seconds=settings.ibm_timeout_seconds,
                                   retries=settings.ibm_retries, workers=settings.poll_workers,
                                   deadline_seconds=settings.ibm_deadline_seconds)
        if not keys:
            if saved_account_exists() and index in (None, 0):
                return IBMService(None, connection)
            raise UsageError("the IBM service needs an API key: set IBM_QUANTUM_TOKEN "
                             "(in the environment or .env), or save a qiskit account")
        chosen = min(keys) if index is None else index
        if chosen not in keys:
            raise UsageError(f"no API key {chosen}: set IBM_QUANTUM_TOKEN_{chosen}"
                             if chosen else "no API key 0: set IBM_QUANTUM_TOKEN")
        return IBMService(keys[chosen], connection)

    return ServicePool({"local": local, "ibm": ibm})
