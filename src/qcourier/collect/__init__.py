"""The collect side: the collect run, single-job inspection and cancel, notifications."""
