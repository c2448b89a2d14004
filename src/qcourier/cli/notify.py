"""``qcourier notify``: check the notification targets of QCOURIER_NOTIFY."""

from __future__ import annotations

import click

from qcourier.cli._common import get_state, handle_errors


@click.command()
@click.option("--test", "test", is_flag=True,
              help="Send a test message to every URL of QCOURIER_NOTIFY now.")
@handle_errors
def main(test: bool) -> None:
    """Send a test notification to the apprise URLs of QCOURIER_NOTIFY.

    qcollect notifies these URLs when jobs reach a final state (see the README,
    "Notifications"). Exits 1 with one "Error: ..." line when a URL is not valid or
    a target does not accept the message.

    \b
    Examples:
      QCOURIER_NOTIFY=ntfy://my-qcourier-topic qcourier notify --test
      qcourier notify --test
    """
    from qcourier.collect.notify import send, urls_of
    from qcourier.errors import UsageError

    if not test:
        raise UsageError("nothing to do: give --test to send a test message")
    urls = urls_of(get_state().get_settings().notify)
    if not urls:
        raise UsageError("QCOURIER_NOTIFY is not set: set it to one or more apprise URLs, "
                         "e.g. QCOURIER_NOTIFY=ntfy://my-topic (see .env.example)")
    send(urls, "qcourier: test", "A test message from qcourier notify --test.")
    click.echo(f"Test message sent to {len(urls)} URL{'s' if len(urls) != 1 else ''}.")
