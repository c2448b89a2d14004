"""Settings from the environment and a ``.env`` file (pydantic-settings).

Every variable is documented in ``.env.example``. Tokens are :class:`SecretStr`: they never
appear in a repr, a log line or an error message.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_LEDGER_DIR = Path("results/ibm_experiments")
DEFAULT_LOCAL_SERVICE_DIR = Path("results/local_service")


class Settings(BaseSettings):
    """qcourier's configuration. Environment variables win over ``.env``."""

    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    ledger_dir: Path = Field(DEFAULT_LEDGER_DIR, validation_alias="QCOURIER_LEDGER_DIR")
    service: str | None = Field(None, validation_alias="QCOURIER_SERVICE")
    ibm_quantum_token: SecretStr | None = Field(None, validation_alias="IBM_QUANTUM_TOKEN")

    local_service_dir: Path = Field(
        DEFAULT_LOCAL_SERVICE_DIR, validation_alias="QCOURIER_LOCAL_SERVICE_DIR"
    )
    local_queue_seconds: float = Field(2.0, ge=0, validation_alias="QCOURIER_LOCAL_QUEUE_SECONDS")
    local_run_seconds: float = Field(1.0, ge=0, validation_alias="QCOURIER_LOCAL_RUN_SECONDS")
    local_failure_rate: float = Field(
        0.0, ge=0, le=1, validation_alias="QCOURIER_LOCAL_FAILURE_RATE"
    )
    local_seed: int | None = Field(None, validation_alias="QCOURIER_LOCAL_SEED")
    local_noise: bool = Field(True, validation_alias="QCOURIER_LOCAL_NOISE")
    local_clifford_engine: Literal["stim", "aer"] = Field(
        "stim", validation_alias="QCOURIER_LOCAL_CLIFFORD_ENGINE"
    )

    @field_validator("ibm_quantum_token", "service", "local_seed", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @property
    def has_ibm_token(self) -> bool:
        """Whether an IBM Quantum token is configured."""
        return self.ibm_quantum_token is not None
