"""Reads of the environment variables every call consults (``ATTNOPS_CHECK``, ``ATTNOPS_BACKEND``,
``TRITON_INTERPRET``), cheap enough for the eager host path.

``os.environ.get`` costs ~0.8 µs (it encodes the name, goes through ``Mapping.get`` and decodes the
value), and an eager call read three variables four times: ~3 µs of a ~29 µs host path (CPU,
``bench/tuning/host_python.py``). :func:`getenv` looks the encoded name up in the dict behind
``os.environ`` (~0.1 µs), so it still sees every change made through ``os.environ`` at once
(``monkeypatch.setenv``, ``mock.patch.dict``, plain assignment), as the variables are documented to be
read per call.
"""

from __future__ import annotations

import functools
import os


@functools.cache
def _encoded(name: str) -> object:
    """``name`` as a key of the mapping behind ``os.environ`` (bytes on POSIX)."""
    return os.environ.encodekey(name)


def getenv(name: str, default: str) -> str:
    """``os.environ.get(name, default)``, at the cost of a dict lookup."""
    environ = os.environ
    try:
        raw = environ._data.get(_encoded(name))
    except AttributeError:  # os.environ replaced by another mapping
        return environ.get(name, default)
    return default if raw is None else environ.decodevalue(raw)
