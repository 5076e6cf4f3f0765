"""Benchmark harness behind ``attnops bench`` (and the op cases behind ``attnops check``).

Small modules, one concern each: ``shapes`` (the SPEC §3 grid and bytes per
op), ``timing`` (CPU and CUDA timers), ``bandwidth`` (peak copy bandwidth of
the device), ``backends`` (which backends each op has), ``environment``
(device and versions), ``report`` (table, JSON, plot).
"""
