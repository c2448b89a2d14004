"""The command-line interface: click commands only (parse, call the core, print, exit).

The console scripts enter through :func:`qsubmit`, :func:`qcollect` and :func:`qcourier`,
which tune the process before the commands' modules are imported; importing any qcourier
module changes nothing of the process's environment.
"""

from __future__ import annotations

import os


def _prepare() -> None:
    # pydantic looks for plugins in every installed distribution's entry points when it builds
    # the first model, which costs a command about 10% of its start-up. qcourier uses none; a
    # user who wants theirs can set PYDANTIC_DISABLE_PLUGINS to an empty string.
    os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")


def qsubmit() -> None:
    """The ``qsubmit`` console script."""
    _prepare()
    from qcourier.cli.submit import main

    main()


def qcollect() -> None:
    """The ``qcollect`` console script."""
    _prepare()
    from qcourier.cli.collect import main

    main()


def qcourier() -> None:
    """The ``qcourier`` console script (and ``python -m qcourier``)."""
    _prepare()
    from qcourier.cli.main import main

    main()
