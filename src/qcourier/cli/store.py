"""``qcourier sync``, ``qcourier store check`` and ``recover --from-store``: the team store."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from qcourier.cli._common import (
    AppState,
    exit_codes_help,
    exit_with,
    get_state,
    handle_errors,
    json_option,
    ledger_dir_option,
)

STORE_SETTINGS = ("QCOURIER_STORE=s3://BUCKET/PREFIX, QCOURIER_S3_ENDPOINT (for IBM COS: "
                  "https://s3.<region>.cloud-object-storage.appdomain.cloud) and an HMAC key "
                  "in AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY")


def team_store(state: AppState) -> Any:
    """The configured team store.

    Raises:
        UsageError: none is configured (or its settings are malformed).
    """
    from qcourier.errors import UsageError
    from qcourier.store.team import store_of

    store = store_of(state.get_settings())
    if store is None:
        raise UsageError(f"no team store is configured: set {STORE_SETTINGS}")
    return store


@contextmanager
def progress_bar(state: AppState) -> Iterator[Callable[[str, int, int], None] | None]:
    """A rich progress bar on a terminal (stderr); nothing otherwise."""
    if state.quiet or not state.is_terminal("stderr"):
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  console=state.stderr, transient=True) as bar:
        tasks: dict[str, Any] = {}

        def update(what: str, done: int, total: int) -> None:
            if what not in tasks:
                tasks[what] = bar.add_task(what, total=total)
            bar.update(tasks[what], completed=done, total=total)

        yield update


@click.command("sync", help=f"""Push this machine's ledger lines and results to the team
store, then pull every other machine's.

Pushes the ledger lines written here since the last sync (one object per ledger file) and
the result, circuit and snapshot files they refer to; then pulls the other machines' lines
and the files their records refer to. Every command already syncs at its edges when
QCOURIER_STORE is set (and carries on locally, with a warning, if the store cannot be
used); `sync` does it now, shows a progress bar on a terminal, and fails if the store cannot
be used or holds objects it had to skip (each reported in one line).

\b
Settings: {STORE_SETTINGS}.

\b
Examples:
  qcourier sync
  qcourier sync --json
  QCOURIER_STORE=s3://my-study/team qcourier sync --ledger-dir results/ibm_experiments
{exit_codes_help("everything was pushed and pulled",
                 "the store could not be used, or objects were skipped")}""")
@ledger_dir_option
@json_option
@handle_errors
def sync(ledger_dir: Path | None, as_json: bool) -> None:
    from qcourier.ledger.store import Ledger
    from qcourier.store.sync import pull, push

    state = get_state()
    store = team_store(state)
    ledger = Ledger(state.ledger_dir(ledger_dir))
    with progress_bar(state) as progress:
        workers = state.get_settings().store_workers
        pushed = push(ledger, store, progress=progress, workers=workers)
        pulled = pull(ledger, store, progress=progress, workers=workers)
    problems = pushed.problems + pulled.problems
    if as_json:
        state.emit_json({"store": str(store.location), "writer": ledger.writer_id(),
                         "pushed": {"segments": pushed.segments, "blobs": pushed.blobs,
                                    "already_present": pushed.present, "bytes": pushed.bytes},
                         "pulled": {"segments": pulled.segments, "blobs": pulled.blobs,
                                    "writers": pulled.writers},
                         "problems": problems})
    else:
        click.echo(f"Pushed {pushed.segments} segment(s) ({pushed.bytes} bytes) and "
                   f"{pushed.blobs} file(s) to {store.location}; pulled {pulled.segments} "
                   f"segment(s) and {pulled.blobs} file(s) from {pulled.writers} other "
                   "machine(s).")
    exit_with(1 if problems else 0, problems)


@click.group("store")
def group() -> None:
    """Look after the team store (QCOURIER_STORE)."""


@group.command("check", help=f"""Check every object in the team store: missing or damaged,
by sha256.

First it checks, on a probe object it writes and deletes, that the server honours the
conditional writes qcourier relies on (If-None-Match, If-Match). Then it reads every object
below the store's prefix and changes nothing: each ledger segment must
hold the whole ledger lines its name says (this machine's own, the same bytes as its local
file), each result, circuit and snapshot blob must match its sha256, and every blob a
ledger line refers to must be there. One line per problem, by key.

\b
Examples:
  qcourier store check
  qcourier store check --json
{exit_codes_help("nothing is missing or damaged",
                 "something is missing or damaged, or the store cannot be used")}""")
@ledger_dir_option
@json_option
@handle_errors
def check(ledger_dir: Path | None, as_json: bool) -> None:
    from qcourier.ledger.store import Ledger
    from qcourier.store.check import check_store

    state = get_state()
    store = team_store(state)
    with progress_bar(state) as progress:
        report = check_store(Ledger(state.ledger_dir(ledger_dir)), store, progress=progress,
                             workers=state.get_settings().store_workers)
    if as_json:
        state.emit_json({"store": str(store.location), "segments": report.segments,
                         "blobs": report.blobs, "circuit_refs": report.refs,
                         "problems": report.problems})
    else:
        click.echo(f"Checked {report.segments} segment(s), {report.blobs} blob(s) and "
                   f"{report.refs} circuit ref(s) in {store.location}: "
                   + (f"{len(report.problems)} problem(s)." if report.problems
                      else "nothing missing or damaged."))
    exit_with(report.exit_code, report.problems)


def recover_from_store(state: AppState, ledger_dir: Path | None, writer: str | None,
                       as_json: bool) -> None:
    """``qcourier recover --from-store``: rebuild the ledger directory from the store."""
    from qcourier.ledger.store import Ledger
    from qcourier.store.recover import recover_from_store as rebuild

    store = team_store(state)
    ledger = Ledger(state.ledger_dir(ledger_dir))
    with progress_bar(state) as progress:
        report = rebuild(ledger, store, writer, progress=progress,
                         workers=state.get_settings().store_workers)
    pulled = report.pulled
    problems = report.problems + (pulled.problems if pulled else [])
    if as_json:
        state.emit_json({"store": str(store.location), "writer": report.writer,
                         "files": report.files, "blobs": report.blobs,
                         "pulled_segments": pulled.segments if pulled else 0,
                         "problems": problems})
    else:
        click.echo(f"Recovered {len(report.files)} ledger file(s) "
                   f"({sum(report.files.values())} bytes) and {report.blobs} file(s) of writer "
                   f"{report.writer} into {ledger.directory}; pulled "
                   f"{pulled.segments if pulled else 0} segment(s) of other machines.")
    exit_with(1 if problems else 0, problems)
