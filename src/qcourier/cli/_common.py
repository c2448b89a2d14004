"""What every command shares: the application state, common options, errors, output."""

from __future__ import annotations

import functools
import inspect
import json
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click

from qcourier.errors import QcourierError, UsageError

if TYPE_CHECKING:
    from rich.console import Console

F = TypeVar("F", bound=Callable[..., Any])


def exit_codes_help(success: str, failure: str) -> str:
    """The "Exit codes" paragraph of a command's --help (see :func:`handle_errors`)."""
    return f"""
\b
Exit codes:
  0    {success}
  1    a runtime failure ({failure})
  2    bad usage (an unknown name, a bad value of an option or a setting, a missing file)
  130  interrupted (Ctrl-C); everything written so far is whole
"""


EXIT_CODES_HELP = exit_codes_help("success", "the service or the ledger could not be used")


@dataclass
class AppState:
    """The application object in ``ctx.obj``; tests pass their own to inject a service."""

    settings: Any = None
    service: Any = None
    pool: Any = None
    #: rich consoles, made on first use (importing rich costs start-up time a run printing
    #: plain lines to a pipe or cron's mail does not need to pay).
    consoles: dict[str, Console] = field(default_factory=dict, repr=False)
    announced: bool = False
    #: Suppress informational messages (warnings and errors still show).
    quiet: bool = False
    #: ``--debug``: an unexpected error shows its traceback instead of one line.
    debug: bool = False
    #: The team store's syncs at this command's edges (made on first use).
    edges: Any = None

    @property
    def stdout(self) -> Console:
        """A rich console on stdout."""
        return self._console("stdout")

    @property
    def stderr(self) -> Console:
        """A rich console on stderr."""
        return self._console("stderr")

    def _console(self, which: str) -> Console:
        if which not in self.consoles:
            from rich.console import Console

            # rich itself honours NO_COLOR, TERM=dumb and a stream that is not a terminal.
            self.consoles[which] = Console(stderr=which == "stderr", highlight=False)
        return self.consoles[which]

    @staticmethod
    def is_terminal(stream: str = "stdout") -> bool:
        """Whether stdout (or stderr) is a terminal, known without importing rich."""
        try:
            return getattr(sys, stream).isatty()
        except (AttributeError, ValueError):
            return False

    def get_settings(self) -> Any:
        """Settings from the environment and ``.env``, read once."""
        if self.settings is None:
            from qcourier.config import Settings

            self.settings = Settings()  # a bad value: QcourierError("bad setting NAME: ...")
        return self.settings

    def get_pool(self) -> Any:
        """The services of this run: the injected ones, or those the settings configure."""
        if self.pool is None:
            from qcourier.services import ServicePool, pool_from_settings

            if self.service is not None:
                self.pool = ServicePool.of(self.service)
            else:
                self.pool = pool_from_settings(self.get_settings())
                from qcourier.config import env_file_warning

                if warning := env_file_warning():
                    self.warn(warning)
        return self.pool

    def default_service_name(self) -> str:
        """The injected service's name, or the one the settings choose."""
        if self.service is not None:
            return self.service.name
        from qcourier.services import default_service_name

        return default_service_name(self.get_settings())

    def get_service(self, choice: str | None, key_index: int | None = None) -> Any:
        """The service to submit to: injected, chosen, or the default (announced if local)."""
        if self.service is not None:
            return self.service
        name = choice or self.default_service_name()
        service = self.get_pool().get(name, key_index)
        if name == "local" and not self.announced:
            self.announced = True
            self.info(
                f"Using the local Aer-backed service (jobs kept in {service.root}); results are "
                "simulated, and the ledger records service=local."
            )
        return service

    def get_services(self, choice: str | None, key_index: int | None, every_key: bool) -> list[Any]:
        """The services to submit to: one, or (``every_key``) the IBM service of every key."""
        if not every_key:
            return [self.get_service(choice, key_index)]
        if choice == "local" or key_index is not None:
            raise UsageError("--submit-all submits once per IBM API key; it takes neither "
                             "--service local nor --api-key-index")
        keys = self.get_settings().api_keys()
        if not keys:
            raise UsageError("--submit-all needs IBM API keys: set IBM_QUANTUM_TOKEN, "
                             "IBM_QUANTUM_TOKEN_1, ... (in the environment or .env)")
        return [self.get_pool().get("ibm", key.index) for key in keys]

    def ledger_dir(self, option: Path | None) -> Path:
        """The ledger directory: the option, else the setting."""
        return option if option is not None else self.get_settings().ledger_dir

    def sync_edge(self, ledger: Any, what: str) -> None:
        """Pull (``what="pull"``) or push the ledger with the team store, if one is set.

        Never fails the command: a store that cannot be used is one warning line, and no
        further store call is made in this run (see :mod:`qcourier.store.team`).
        """
        settings = self.get_settings()
        if not settings.store:
            return  # no team store: nothing changes, and boto3 is never imported
        if self.edges is None:
            from qcourier.store.team import EdgeSync, store_of

            self.edges = EdgeSync(store_of(settings),
                                  lock_timeout=3 * settings.store_timeout_seconds,
                                  workers=settings.store_workers)
        getattr(self.edges, what)(ledger)
        for line in self.edges.take_warnings():
            self.warn(line)

    # -- output -----------------------------------------------------------------------------

    def info(self, message: str) -> None:
        """A message for the user (stderr), unless quiet."""
        if not self.quiet:
            self._print_err(message)

    @contextmanager
    def progress(self) -> Iterator[Callable[[str], None]]:
        """A callback for progress messages: a live spinner line on a terminal, plain lines
        on stderr otherwise (and nothing when quiet)."""
        if self.quiet or not self.is_terminal("stderr"):
            yield self.info
            return
        with self.stderr.status("working…") as status:
            yield lambda message: status.update(message)

    def warn(self, message: str) -> None:
        """A warning for the user (stderr)."""
        self._print_err(f"Warning: {message}")

    def _print_err(self, message: str) -> None:
        if self.is_terminal("stderr"):
            self.stderr.print(message, markup=False)
        else:
            click.echo(message, err=True)

    def emit_json(self, payload: Any) -> None:
        """Machine-readable output on stdout."""
        click.echo(json.dumps(payload, indent=2, default=str))

    def emit_json_lines(self, items: Iterable[bytes]) -> None:
        """A JSON list on stdout whose items are already JSON (written as they come)."""
        out = sys.stdout
        out.write("[")
        for n, item in enumerate(items):
            out.write(",\n" if n else "\n")
            out.write(item.decode())
        out.write("\n]\n")
        out.flush()


def get_state() -> AppState:
    """The AppState of the current click context, created if a test did not pass one."""
    ctx = click.get_current_context()
    if ctx.obj is None:
        ctx.obj = AppState()
    return ctx.obj


def abort(message: str, code: int = 1) -> NoReturn:
    """Leave with one ``Error: ...`` line on stderr and exit ``code``."""
    exit_with(code, [message])


def exit_with(code: int, errors: Iterable[str] = ()) -> NoReturn:
    """Leave with ``code``, each of ``errors`` first as one ``Error: ...`` line on stderr: the
    one way out of every command (a report's exit code, :func:`abort`, :func:`interrupted`,
    and the error handler of :func:`handle_errors`)."""
    for message in errors:
        click.echo(f"Error: {message}", err=True)
    sys.exit(code)


#: What Ctrl-C prints (exit 130), wherever it comes.
INTERRUPTED = "Interrupted. Every ledger line and result file written so far is whole."


def interrupted() -> NoReturn:
    """Leave after Ctrl-C: one line, exit 130."""
    click.echo(INTERRUPTED, err=True)
    exit_with(130)


def _set_debug(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value:
        get_state().debug = True


debug_option = click.option(
    "--debug", is_flag=True, expose_value=False, is_eager=True, callback=_set_debug,
    help="On an unexpected error, show the full traceback (also: QCOURIER_DEBUG=1).")


def handle_errors(func: F) -> F:
    """Give a command ``--debug``, the exit codes in its ``--help``, and one way out for
    every failure.

    A :class:`QcourierError` from the core becomes one ``Error: ...`` line and its exit
    code (a :class:`~qcourier.errors.UsageError`, a bad setting included: 2); Ctrl-C becomes
    exit 130; any other exception (a bug, or a library error nobody translated) becomes one
    ``Error: ...`` line with a hint to rerun with ``--debug``, and exit 1 — never a bare
    traceback. Click's own usage errors (exit 2) pass through to click. A docstring without
    an "Exit codes" paragraph gets :data:`EXIT_CODES_HELP`.
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except QcourierError as exc:
            abort(str(exc), exc.exit_code)
        except KeyboardInterrupt:
            interrupted()
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except Exception as exc:
            if get_state().debug or os.environ.get("QCOURIER_DEBUG", "") not in ("", "0"):
                raise
            text = _scrub_tokens(get_state(), _one_line(str(exc)))
            abort(f"unexpected {type(exc).__name__}: {text} (rerun with --debug for the traceback)")

    if func.__doc__ and "Exit codes:" not in func.__doc__:
        wrapper.__doc__ = inspect.cleandoc(func.__doc__) + "\n" + EXIT_CODES_HELP
    return debug_option(wrapper)  # type: ignore[return-value]


class _Interruptible:
    """Ctrl-C while click parses (finding the experiments can take a moment) or between
    commands of a group exits 130 too, not click's "Aborted!" and 1."""

    def make_context(self, *args: Any, **kwargs: Any) -> click.Context:
        try:
            return super().make_context(*args, **kwargs)  # type: ignore[misc]
        except KeyboardInterrupt:
            interrupted()

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)  # type: ignore[misc]
        except KeyboardInterrupt:
            interrupted()


class Command(_Interruptible, click.Command):
    """The class of a console script's command (``cls=Command``)."""


class Group(_Interruptible, click.Group):
    """The class of the ``qcourier`` group (``cls=Group``)."""


def _scrub_tokens(state: AppState, text: str) -> str:
    """``text`` with every configured token replaced (an exception may quote a request)."""
    if state.settings is None:
        return text
    for key in state.settings.api_keys():
        secret = key.token.get_secret_value()
        if secret:
            text = text.replace(secret, "***")
    return text


def _one_line(text: str, limit: int = 300) -> str:
    """The first line of an exception text, shortened: an error is one line."""
    first = text.strip().splitlines()[0] if text.strip() else "(no message)"
    return first if len(first) <= limit else first[: limit - 1] + "…"


ledger_dir_option = click.option(
    "--ledger-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Ledger directory [default: $QCOURIER_LEDGER_DIR or results/ibm_experiments].",
)
service_option = click.option(
    "--service",
    type=click.Choice(["local", "ibm"]),
    default=None,
    help="Service to use [default: $QCOURIER_SERVICE; else ibm when an API key is configured; "
    "else local].",
)
api_key_option = click.option(
    "--api-key-index",
    type=click.IntRange(min=0),
    default=None,
    help="Which IBM API key to use (IBM_QUANTUM_TOKEN_<N>; 0 is IBM_QUANTUM_TOKEN) [default: "
    "the lowest configured].",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")


class LazyChoice(click.Choice):
    """A ``click.Choice`` whose choices are found on first use, not at import.

    Finding the experiments means reading installed entry points and importing pydantic,
    which ``--help`` and other commands of the group should not pay for. Help shows
    ``metavar`` (the option's help text names the built-in choices).
    """

    def __init__(self, load: Callable[[], Iterable[str]], metavar: str):
        self._load = load
        self._loaded: tuple[str, ...] | None = None
        self._metavar = metavar
        self.case_sensitive = True

    @property
    def choices(self) -> tuple[str, ...]:  # type: ignore[override]
        if self._loaded is None:
            self._loaded = tuple(self._load())
        return self._loaded

    @choices.setter
    def choices(self, value: Iterable[str]) -> None:
        self._loaded = tuple(value)

    def get_metavar(self, param: click.Parameter, ctx: click.Context) -> str:
        return self._metavar


#: What a table cell with nothing to show holds (a column of them is left out: print_table).
EMPTY = "-"


def cell(value: Any, spec: str = "") -> str:
    """A table cell: ``value`` formatted with ``spec`` (``".1f"``), or :data:`EMPTY` for None."""
    return EMPTY if value is None else format(value, spec)


def time_cell(when: Any, spec: str = "%Y-%m-%d %H:%M:%S") -> str:
    """A table cell for a time (UTC), or :data:`EMPTY`."""
    return EMPTY if when is None else when.strftime(spec)


def qpu_cell(record: Any) -> str:
    """A job's recorded QPU seconds; ``pending`` for a final job whose figure is not known yet."""
    from qcourier.accounting.budget import usage_pending

    if record.usage_seconds is not None:
        return f"{record.usage_seconds:.1f}"
    return "pending" if usage_pending(record) else EMPTY


def print_table(state: AppState, columns: list[str], rows: list[list[str]],
                optional: Sequence[str] = ()) -> None:
    """A table on stdout: rich on a terminal, plain aligned columns (never cut) otherwise.

    On a terminal the table fits its width: the ``optional`` columns (named, the first one
    listed dropped first) are left out while the table would be too wide, and so are
    optional columns with nothing in them; a closing line says which. Job ids are never cut
    (people copy them); other cells wrap.
    """
    if not state.is_terminal():
        widths = [max(len(str(x)) for x in col) for col in zip(columns, *rows)]
        click.echo("\n".join("  ".join(str(x).ljust(w) for x, w in zip(row, widths)).rstrip()
                             for row in [columns, *rows]))
        return
    console = state.stdout
    keep = _columns_that_fit(columns, rows, optional, console.width)
    hidden = [c for c in optional if c in columns and c not in [columns[i] for i in keep]
              and any(row[columns.index(c)] not in ("", EMPTY) for row in rows)]
    from rich import box
    from rich.table import Table

    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    for i in keep:
        table.add_column(columns[i], overflow="fold", no_wrap=columns[i] == "job id",
                         min_width=min(len(columns[i]), 12))
    from rich.text import Text

    for row in rows:
        table.add_row(*(Text(str(row[i]), style=STATUS_STYLES.get(str(row[i]), ""))
                        if columns[i] == "status" else str(row[i]) for i in keep))
    console.print(table)
    if hidden:
        console.print(f"(not shown, to fit {console.width} columns: {', '.join(hidden)}; "
                      "widen the terminal or use --json)", style="dim", markup=False)


#: How a status looks in a table on a terminal (rich drops the colours under NO_COLOR).
STATUS_STYLES = {"completed": "green", "partial": "yellow", "failed": "red", "error": "red",
                 "submit_failed": "red", "cancelled": "magenta", "queued": "cyan",
                 "running": "blue", "submitted": "cyan", "deferred": "dim",
                 "submitting": "dim", "planned": "cyan"}


def _columns_that_fit(columns: list[str], rows: list[list[str]], optional: Sequence[str],
                      width: int) -> list[int]:
    """Indexes of the columns to show: all but empty or (while too wide) optional ones."""
    natural = [max(len(str(x)) for x in col) for col in zip(columns, *rows)]
    keep = [i for i, c in enumerate(columns)
            if not (c in optional and rows and all(str(r[i]) in ("", EMPTY) for r in rows))]
    for name in optional:
        if sum(natural[i] for i in keep) + 3 * (len(keep) - 1) <= width:
            break
        if name in columns and columns.index(name) in keep:
            keep.remove(columns.index(name))
    return keep
