"""The machinery behind ``attnops bench``, ``attnops check`` and ``attnops demo``.

Benchmarks: ``shapes`` (the SPEC §3 grid and the bytes each op moves),
``timing`` (CPU and CUDA timers), ``bandwidth`` (the device's peak copy
bandwidth), ``cases`` (per op: the calls to time and the same-run baseline),
``runner`` (the loop, progress bar and result rows), ``report`` (table, JSON,
plot), ``environment`` (device, versions, git commit).
Checks: ``checks`` (verdicts, the loop and the table) and ``check_cases``
(per op: problems and their independent float64 oracles).
Shared: ``backends`` (which backends each op's dispatcher has); ``demo``.
"""
