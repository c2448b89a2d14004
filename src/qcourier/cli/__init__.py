"""The command-line interface: click commands only (parse, call the core, print, exit)."""
