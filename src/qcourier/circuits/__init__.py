"""Circuits shared by submission and services: hashing-free helpers to transpile, the transpile cache, QPU-time estimates, the device noise model."""
