"""The one exception family of qcourier. Core code raises these; only the CLI exits."""


class QcourierError(Exception):
    """Base of every error qcourier reports to a user as one line."""

    exit_code = 1


class UsageError(QcourierError):
    """The user asked for something invalid (bad option value, unknown name)."""

    exit_code = 2


class SettingsError(UsageError):
    """A setting (the environment or ``.env``) has a bad value: bad usage, as the same value
    given as an option would be."""


class LedgerError(QcourierError):
    """A ledger file or directory cannot be used."""
