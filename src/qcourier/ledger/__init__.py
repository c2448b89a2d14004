"""The job ledger: records and statuses, the append-only store, its index, checks."""
