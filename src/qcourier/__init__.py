"""qcourier: submit quantum jobs now, collect and analyse their results later."""

__version__ = "0.1.0"
