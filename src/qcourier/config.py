"""Settings from the environment and a ``.env`` file (pydantic-settings).

Every variable is documented in ``.env.example``. Tokens are :class:`SecretStr`: they never
appear in a repr, a log line or an error message.

API keys: ``IBM_QUANTUM_TOKEN`` is key 0, ``IBM_QUANTUM_TOKEN_<N>`` is key N, for any number
of keys; ``IBM_QUANTUM_INSTANCE`` / ``IBM_QUANTUM_INSTANCE_<N>`` optionally name each key's
instance. The ledger records a key's index, never its token.

QPU budgets: ``QCOURIER_BUDGET_SECONDS`` is every key's limit per 28-day window (and the
local service's); ``QCOURIER_BUDGET_SECONDS_<N>`` overrides it for key N.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from qcourier.errors import SettingsError

if TYPE_CHECKING:
    pass

ENV_FILE = ".env"
_TOKEN_VAR = re.compile(r"^IBM_QUANTUM_TOKEN(?:_(\d+))?$")
BUDGET_VAR = "QCOURIER_BUDGET_SECONDS"


@dataclass(frozen=True)
class ApiKey:
    """One configured IBM Quantum API key."""

    index: int
    token: SecretStr
    instance: str | None = None

    @property
    def variable(self) -> str:
        """The environment variable that holds this key's token."""
        return "IBM_QUANTUM_TOKEN" if self.index == 0 else f"IBM_QUANTUM_TOKEN_{self.index}"

DEFAULT_LEDGER_DIR = Path("results/ibm_experiments")
DEFAULT_LOCAL_SERVICE_DIR = Path("results/local_service")


def user_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/qcourier``, by default ``~/.cache/qcourier``."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "qcourier"


class Settings(BaseSettings):
    """qcourier's configuration. Environment variables win over ``.env``."""

    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    ledger_dir: Path = Field(DEFAULT_LEDGER_DIR, validation_alias="QCOURIER_LEDGER_DIR")
    service: str | None = Field(None, validation_alias="QCOURIER_SERVICE")
    ibm_quantum_channel: str = Field("ibm_quantum_platform", validation_alias="IBM_QUANTUM_CHANNEL")
    ibm_url: str | None = Field(None, validation_alias="QCOURIER_IBM_URL")
    ibm_timeout_seconds: float = Field(60.0, gt=0, validation_alias="QCOURIER_IBM_TIMEOUT")
    ibm_retries: int = Field(3, ge=0, le=10, validation_alias="QCOURIER_IBM_RETRIES")
    #: Seconds one qsubmit (per key), or one job of a qcollect run, may spend in IBM calls.
    ibm_deadline_seconds: float = Field(120.0, gt=0, validation_alias="QCOURIER_IBM_DEADLINE")
    max_pending: int = Field(3, ge=1, le=1000, validation_alias="QCOURIER_MAX_PENDING")
    poll_workers: int = Field(8, ge=1, le=64, validation_alias="QCOURIER_POLL_WORKERS")
    submissions_per_minute: int = Field(5, ge=1, le=1000,
                                        validation_alias="QCOURIER_SUBMISSIONS_PER_MINUTE")
    intent_grace_seconds: float = Field(600.0, ge=0, validation_alias="QCOURIER_INTENT_GRACE_SECONDS")
    max_execution_margin: float = Field(3.0, ge=1, validation_alias="QCOURIER_MAX_EXECUTION_MARGIN")
    max_execution_cap: int = Field(300, ge=1, le=10800, validation_alias="QCOURIER_MAX_EXECUTION_CAP")
    budget_seconds: float = Field(600.0, ge=0, validation_alias=BUDGET_VAR)
    transpile_cache_max_age_days: float = Field(
        30.0, gt=0, validation_alias="QCOURIER_TRANSPILE_CACHE_MAX_AGE_DAYS")
    transpile_cache_max_mb: float = Field(200.0, ge=0, validation_alias="QCOURIER_TRANSPILE_CACHE_MAX_MB")

    #: apprise URLs (spaces or commas between them) qcollect notifies; unset: no notifications.
    notify: str | None = Field(None, validation_alias="QCOURIER_NOTIFY")
    #: Hours a key's oldest deferred job may wait unsubmitted before qcollect notifies that
    #: its deferred queue is stuck (a positive, finite number; 24 by default).
    notify_stuck_hours: float = Field(24.0, gt=0, allow_inf_nan=False,
                                      validation_alias="QCOURIER_NOTIFY_STUCK_HOURS")
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
    # Multiplies every simulated error probability, gate, readout, reset and idle alike
    # (0 = noiseless; 10 = ten times the device's).
    local_noise_scale: float = Field(1.0, ge=0, le=10, validation_alias="QCOURIER_LOCAL_NOISE_SCALE")
    local_clifford_engine: Literal["stim", "aer"] = Field(
        "stim", validation_alias="QCOURIER_LOCAL_CLIFFORD_ENGINE"
    )
    # Emulated network behaviour of the local service (for trying concurrent polling locally).
    local_latency_seconds: float = Field(0.0, ge=0,
                                         validation_alias="QCOURIER_LOCAL_LATENCY_SECONDS")
    local_rate_limit: float | None = Field(None, gt=0, validation_alias="QCOURIER_LOCAL_RATE_LIMIT")
    # Emulated QPU usage: the estimate times a factor, and known only this long after a job
    # finished (IBM's usage status stays "pending" for a while after the job is final).
    local_usage_factor: float = Field(1.0, gt=0, le=100, validation_alias="QCOURIER_LOCAL_USAGE_FACTOR")
    local_usage_delay_seconds: float = Field(
        0.0, ge=0, validation_alias="QCOURIER_LOCAL_USAGE_DELAY_SECONDS")
    #: The team store (``qcourier.store``): ``s3://BUCKET/PREFIX``; unset, only the local
    #: ledger is used. Credentials come from boto3's own chain, never from here.
    store: str | None = Field(None, validation_alias="QCOURIER_STORE")
    s3_endpoint: str | None = Field(None, validation_alias="QCOURIER_S3_ENDPOINT")
    store_timeout_seconds: float = Field(10.0, gt=0, le=300,
                                         validation_alias="QCOURIER_STORE_TIMEOUT")
    #: Objects a sync uploads or downloads at once.
    store_workers: int = Field(8, ge=1, le=64, validation_alias="QCOURIER_STORE_WORKERS")
    #: How long the team store's budget lease stays valid after each renewal (its holder
    #: renews it while working; a holder that died leaves it to others after this long).
    lease_seconds: float = Field(120.0, ge=5, le=300, validation_alias="QCOURIER_LEASE_SECONDS")
    #: What can be rebuilt: the local service's descriptions of its fake devices.
    cache_dir: Path = Field(default_factory=lambda: user_cache_dir(),
                            validation_alias="QCOURIER_CACHE_DIR")

    @field_validator("cache_dir", mode="before")
    @classmethod
    def _empty_is_default(cls, value: object) -> object:
        return user_cache_dir() if isinstance(value, str) and not value.strip() else value

    @field_validator("service", "local_seed", "ibm_url", "local_rate_limit", "store", "s3_endpoint",
                     mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    def __init__(self, **values: Any) -> None:
        """Read the settings; a bad value raises :class:`SettingsError` ("bad setting NAME:
        ...", naming the variable, never echoing a token)."""
        try:
            super().__init__(**values)
        except ValidationError as exc:
            err = exc.errors()[0]
            name = str(err["loc"][0]).upper() if err["loc"] else "configuration"
            given = f"{err['input']!r} " if isinstance(err.get("input"), str) else ""
            raise SettingsError(f"bad setting {name}: {given}is not valid "
                                f"({err['msg'][0].lower()}{err['msg'][1:]})") from None

    def api_keys(self) -> list[ApiKey]:
        """Every configured API key, by index (environment over ``.env``)."""
        values = {**_dotenv_values(), **os.environ}
        keys = []
        for name, token in values.items():
            match = _TOKEN_VAR.match(name)
            if not match or not token or not token.strip():
                continue
            index = int(match.group(1) or 0)
            instance = values.get("IBM_QUANTUM_INSTANCE" + (f"_{index}" if index else ""))
            keys.append(ApiKey(index, SecretStr(token.strip()), (instance or "").strip() or None))
        return sorted(keys, key=lambda k: k.index)

    def budget_limit(self, key_index: int | None) -> float:
        """QPU seconds per 28-day window for key ``key_index`` (``None``: the local service).

        ``QCOURIER_BUDGET_SECONDS_<N>`` (environment over ``.env``) if set for key N, else
        ``QCOURIER_BUDGET_SECONDS`` (default 600).

        Raises:
            SettingsError: the per-key value is not a number >= 0.
        """
        if key_index is None:
            return self.budget_seconds
        name = f"{BUDGET_VAR}_{key_index}"
        raw = {**_dotenv_values(), **os.environ}.get(name, "").strip()
        if not raw:
            return self.budget_seconds
        try:
            value = float(raw)
        except ValueError:
            value = -1.0
        if not value >= 0 or value == float("inf"):
            raise SettingsError(f"bad setting {name}: {raw!r} is not a number of seconds >= 0")
        return value


def _dotenv_values() -> dict[str, str]:
    from dotenv import dotenv_values

    path = Path(ENV_FILE)
    if not path.is_file():
        return {}
    return {k: v for k, v in dotenv_values(path).items() if v is not None}


def env_file_warning() -> str | None:
    """A one-line warning when ``.env`` (which may hold tokens) is readable by everyone."""
    path = Path(ENV_FILE)
    try:
        mode = path.stat().st_mode
    except OSError:
        return None
    if mode & stat.S_IROTH:
        return f"{path} is readable by every user of this machine; run: chmod 600 {path}"
    return None


def saved_account_exists() -> bool:
    """Whether qiskit-ibm-runtime has a saved account (``~/.qiskit/qiskit-ibm.json``)."""
    return (Path.home() / ".qiskit" / "qiskit-ibm.json").is_file()


