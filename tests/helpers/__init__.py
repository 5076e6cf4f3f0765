"""Helpers shared by several test modules (``pythonpath = tests`` in pyproject)."""
