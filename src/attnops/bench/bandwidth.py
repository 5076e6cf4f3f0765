"""Peak memory bandwidth of a device, measured on the device itself.

A large tensor copy: every byte is read once and written once, so the
bandwidth is ``2 * nbytes / time``. The buffer is far larger than any cache
(256 MiB on the CPU, 1 GiB on a GPU). On the CPU the copy runs with the
torch thread count as configured, like the ops it is compared with.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from attnops.bench.timing import time_fn

DEFAULT_PROBE_BYTES = {"cpu": 256 * 2**20, "cuda": 2**30}


@dataclass(frozen=True)
class BandwidthProbe:
    """Result of the copy probe: bytes read + written per copy, time, GB/s (1e9 bytes/s)."""

    bytes_moved: int
    median_us: float
    gbps: float


def measure_peak_bandwidth(
    device: torch.device, *, nbytes: int | None = None, budget_ms: float = 500.0
) -> BandwidthProbe:
    """Time ``dst.copy_(src)`` of ``nbytes`` bytes on ``device``."""
    if nbytes is None:
        nbytes = DEFAULT_PROBE_BYTES.get(device.type, DEFAULT_PROBE_BYTES["cpu"])
    numel = max(1, nbytes // 4)
    src = torch.ones(numel, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    timing = time_fn(lambda: dst.copy_(src), device, budget_ms=budget_ms)
    moved = 2 * numel * 4
    return BandwidthProbe(moved, timing.median_us, gbps(moved, timing.median_us))


def gbps(nbytes: int, microseconds: float) -> float:
    """Bandwidth in GB/s (1e9 bytes per second) of ``nbytes`` moved in ``microseconds``."""
    return nbytes / (microseconds * 1e3)
