"""The command-line interface: click commands only (parse, call the core, print, exit)."""

import os

# pydantic looks for plugins in every installed distribution's entry points when it builds
# the first model, which costs a command about 10% of its start-up. qcourier uses none; a
# user who wants theirs can set PYDANTIC_DISABLE_PLUGINS to an empty string.
os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")
