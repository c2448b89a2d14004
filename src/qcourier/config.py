"""Settings from the environment and a ``.env`` file.

Every variable is documented in ``.env.example``. Tokens are :class:`Secret`: they never
appear in a repr, a log line or an error message.

API keys: ``IBM_QUANTUM_TOKEN`` is key 0, ``IBM_QUANTUM_TOKEN_<N>`` is key N, for any number
of keys; ``IBM_QUANTUM_INSTANCE`` / ``IBM_QUANTUM_INSTANCE_<N>`` optionally name each key's
instance. The ledger records a key's index, never its token.

QPU budgets: ``QCOURIER_BUDGET_SECONDS`` is every key's limit per 28-day window (and the
local service's); ``QCOURIER_BUDGET_SECONDS_<N>`` overrides it for key N.

The settings are a dataclass read by a few parsers of their own rather than a pydantic
model: every command reads them, and importing and building a pydantic model would cost a
``qcollect`` with nothing to do about half its start-up.
"""

from __future__ import annotations

import math
import os
import re
import stat
from collections.abc import Callable
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

from qcourier.errors import QcourierError

ENV_FILE = ".env"
_TOKEN_VAR = re.compile(r"^IBM_QUANTUM_TOKEN(?:_(\d+))?$")
BUDGET_VAR = "QCOURIER_BUDGET_SECONDS"


class Secret:
    """A token: its value only through :meth:`get_secret_value`, never in a repr or str."""

    __slots__ = ("_value",)

    def __init__(self, value: str):
        self._value = value

    def get_secret_value(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    def __str__(self) -> str:
        return "**********"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class ApiKey:
    """One configured IBM Quantum API key."""

    index: int
    token: Secret
    instance: str | None = None

    @property
    def variable(self) -> str:
        """The environment variable that holds this key's token."""
        return "IBM_QUANTUM_TOKEN" if self.index == 0 else f"IBM_QUANTUM_TOKEN_{self.index}"

DEFAULT_LEDGER_DIR = Path("results/ibm_experiments")
DEFAULT_LOCAL_SERVICE_DIR = Path("results/local_service")


# -- parsing one variable ------------------------------------------------------------------

_TRUE = frozenset({"1", "true", "t", "yes", "y", "on"})
_FALSE = frozenset({"0", "false", "f", "no", "n", "off"})


def _number(kind: type, *, gt: float | None = None, ge: float | None = None,
            le: float | None = None, finite: bool = False) -> Callable[[str], Any]:
    """A parser of an int or float within bounds (NaN is never within them; with ``finite``,
    neither is infinity)."""
    bounds = [f"{op} {bound:g}" for op, bound in ((">", gt), (">=", ge), ("<=", le))
              if bound is not None]
    noun = "an integer" if kind is int else "a finite number" if finite else "a number"
    what = " ".join([noun, " and ".join(bounds)]).strip()

    def parse(raw: str) -> Any:
        try:
            value = kind(raw.strip())
        except ValueError:
            raise ValueError(f"is not {what}") from None
        if ((kind is float and (math.isnan(value) or (finite and math.isinf(value))))
                or (gt is not None and not value > gt)
                or (ge is not None and not value >= ge) or (le is not None and not value <= le)):
            raise ValueError(f"is not {what}")
        return value

    return parse


def _boolean(raw: str) -> bool:
    word = raw.strip().lower()
    if word in _TRUE or word in _FALSE:
        return word in _TRUE
    raise ValueError("is not true or false")


def _choice(*choices: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        if raw not in choices:
            raise ValueError("is not one of " + ", ".join(repr(c) for c in choices))
        return raw

    return parse


def _optional(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """``parse``, with an empty (or blank) value meaning "not set"."""
    return lambda raw: None if not raw.strip() else parse(raw)


def _setting(variable: str, default: Any, parse: Callable[[str], Any]) -> Any:
    """A field read from ``variable``; a callable ``default`` is called when it is unset."""
    metadata = {"variable": variable, "parse": parse}
    if callable(default):
        return field(default_factory=default, metadata=metadata)
    return field(default=default, metadata=metadata)


def user_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/qcourier``, by default ``~/.cache/qcourier``."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "qcourier"


@dataclass(init=False)
class Settings:
    """qcourier's configuration. Environment variables win over ``.env``; variable names are
    matched case-insensitively. ``Settings(QCOURIER_MAX_PENDING="5")``: values given by
    variable name win over both.

    Raises:
        QcourierError: a value is not valid (``bad setting NAME: ...``).
    """

    ledger_dir: Path = _setting("QCOURIER_LEDGER_DIR", DEFAULT_LEDGER_DIR, Path)
    service: str | None = _setting("QCOURIER_SERVICE", None, _optional(str))
    ibm_quantum_channel: str = _setting("IBM_QUANTUM_CHANNEL", "ibm_quantum_platform", str)
    ibm_url: str | None = _setting("QCOURIER_IBM_URL", None, _optional(str))
    ibm_timeout_seconds: float = _setting("QCOURIER_IBM_TIMEOUT", 60.0, _number(float, gt=0))
    ibm_retries: int = _setting("QCOURIER_IBM_RETRIES", 3, _number(int, ge=0, le=10))
    #: Seconds one qsubmit (per key), or one job of a qcollect run, may spend in IBM calls.
    ibm_deadline_seconds: float = _setting("QCOURIER_IBM_DEADLINE", 120.0, _number(float, gt=0))
    max_pending: int = _setting("QCOURIER_MAX_PENDING", 3, _number(int, ge=1, le=1000))
    poll_workers: int = _setting("QCOURIER_POLL_WORKERS", 8, _number(int, ge=1, le=64))
    submissions_per_minute: int = _setting("QCOURIER_SUBMISSIONS_PER_MINUTE", 5,
                                           _number(int, ge=1, le=1000))
    intent_grace_seconds: float = _setting("QCOURIER_INTENT_GRACE_SECONDS", 600.0,
                                           _number(float, ge=0))
    max_execution_margin: float = _setting("QCOURIER_MAX_EXECUTION_MARGIN", 3.0,
                                           _number(float, ge=1))
    max_execution_cap: int = _setting("QCOURIER_MAX_EXECUTION_CAP", 300,
                                      _number(int, ge=1, le=10800))
    budget_seconds: float = _setting(BUDGET_VAR, 600.0, _number(float, ge=0))
    transpile_cache_max_age_days: float = _setting("QCOURIER_TRANSPILE_CACHE_MAX_AGE_DAYS", 30.0,
                                                   _number(float, gt=0))
    transpile_cache_max_mb: float = _setting("QCOURIER_TRANSPILE_CACHE_MAX_MB", 200.0,
                                             _number(float, ge=0))

    #: apprise URLs (spaces or commas between them) qcollect notifies; unset: no notifications.
    notify: str | None = _setting("QCOURIER_NOTIFY", None, _optional(str))
    #: Hours a key's oldest deferred job may wait unsubmitted before qcollect notifies that
    #: its deferred queue is stuck (a positive, finite number; 24 by default).
    notify_stuck_hours: float = _setting("QCOURIER_NOTIFY_STUCK_HOURS", 24.0,
                                         _number(float, gt=0, finite=True))
    local_service_dir: Path = _setting("QCOURIER_LOCAL_SERVICE_DIR", DEFAULT_LOCAL_SERVICE_DIR,
                                       Path)
    local_queue_seconds: float = _setting("QCOURIER_LOCAL_QUEUE_SECONDS", 2.0,
                                          _number(float, ge=0))
    local_run_seconds: float = _setting("QCOURIER_LOCAL_RUN_SECONDS", 1.0, _number(float, ge=0))
    local_failure_rate: float = _setting("QCOURIER_LOCAL_FAILURE_RATE", 0.0,
                                         _number(float, ge=0, le=1))
    local_seed: int | None = _setting("QCOURIER_LOCAL_SEED", None, _optional(_number(int)))
    local_noise: bool = _setting("QCOURIER_LOCAL_NOISE", True, _boolean)
    # Multiplies every simulated error probability, gate, readout, reset and idle alike
    # (0 = noiseless; 10 = ten times the device's).
    local_noise_scale: float = _setting("QCOURIER_LOCAL_NOISE_SCALE", 1.0,
                                        _number(float, ge=0, le=10))
    local_clifford_engine: str = _setting("QCOURIER_LOCAL_CLIFFORD_ENGINE", "stim",
                                          _choice("stim", "aer"))
    # Emulated network behaviour of the local service (for trying concurrent polling locally).
    local_latency_seconds: float = _setting("QCOURIER_LOCAL_LATENCY_SECONDS", 0.0,
                                            _number(float, ge=0))
    local_rate_limit: float | None = _setting("QCOURIER_LOCAL_RATE_LIMIT", None,
                                              _optional(_number(float, gt=0)))
    # Emulated QPU usage: the estimate times a factor, and known only this long after a job
    # finished (IBM's usage status stays "pending" for a while after the job is final).
    local_usage_factor: float = _setting("QCOURIER_LOCAL_USAGE_FACTOR", 1.0,
                                         _number(float, gt=0, le=100))
    local_usage_delay_seconds: float = _setting("QCOURIER_LOCAL_USAGE_DELAY_SECONDS", 0.0,
                                                _number(float, ge=0))
    #: What can be rebuilt: the local service's descriptions of its fake devices.
    cache_dir: Path = _setting("QCOURIER_CACHE_DIR", user_cache_dir,
                               lambda raw: Path(raw) if raw.strip() else user_cache_dir())

    def __init__(self, **values: str) -> None:
        found = {name.lower(): value for name, value in _dotenv_values().items()}
        found.update((name.lower(), value) for name, value in os.environ.items())
        found.update((name.lower(), value) for name, value in values.items())
        for spec in fields(self):
            variable = spec.metadata["variable"]
            raw = found.get(variable.lower())
            if raw is None:
                setattr(self, spec.name, spec.default if spec.default is not MISSING
                        else spec.default_factory())
                continue
            try:
                setattr(self, spec.name, spec.metadata["parse"](raw))
            except ValueError as exc:
                raise QcourierError(f"bad setting {variable}: {raw!r} {exc}") from None

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
            keys.append(ApiKey(index, Secret(token.strip()), (instance or "").strip() or None))
        return sorted(keys, key=lambda k: k.index)

    def budget_limit(self, key_index: int | None) -> float:
        """QPU seconds per 28-day window for key ``key_index`` (``None``: the local service).

        ``QCOURIER_BUDGET_SECONDS_<N>`` (environment over ``.env``) if set for key N, else
        ``QCOURIER_BUDGET_SECONDS`` (default 600).

        Raises:
            QcourierError: the per-key value is not a number >= 0.
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
            raise QcourierError(f"bad setting {name}: {raw!r} is not a number of seconds >= 0")
        return value


def _dotenv_values() -> dict[str, str]:
    path = Path(ENV_FILE)
    if not path.is_file():
        return {}
    from dotenv import dotenv_values

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


