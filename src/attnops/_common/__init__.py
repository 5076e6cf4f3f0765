"""Shared machinery: validation, backend dispatch, op registration, dtype helpers."""
