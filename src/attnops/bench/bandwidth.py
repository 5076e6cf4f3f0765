"""Peak memory bandwidth of a device, measured on the device itself.

Two probes over a buffer far larger than any cache (256 MiB on the CPU, 1 GiB on a GPU):

- copy (:func:`measure_peak_bandwidth`): every byte read once and written once, so the
  bandwidth is ``2 * nbytes / time``; the ceiling of ops that read and write (merge, top-k);
- read (:func:`measure_read_bandwidth`): a sum over the buffer, ``nbytes / time``; the ceiling
  of ops that only read (paged decode reads its KV cache and writes a few KiB).

On the CPU both run with the torch thread count as configured, like the ops they are compared with.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from attnops.bench.timing import time_fn

DEFAULT_PROBE_BYTES = {"cpu": 256 * 2**20, "cuda": 2**30}


@dataclass(frozen=True)
class BandwidthProbe:
    """Result of a probe: bytes moved per call (read + written for the copy, read for the sum), time, GB/s
    (1e9 bytes/s)."""

    bytes_moved: int
    median_us: float
    gbps: float


def measure_peak_bandwidth(
    device: torch.device, *, nbytes: int | None = None, budget_ms: float = 500.0
) -> BandwidthProbe:
    """Time ``dst.copy_(src)`` of ``nbytes`` bytes on ``device``."""
    src = _source(device, nbytes)
    dst = torch.empty_like(src)
    return _probe(lambda: dst.copy_(src), 2 * src.nbytes, device, budget_ms)


def measure_read_bandwidth(
    device: torch.device, *, nbytes: int | None = None, budget_ms: float = 500.0
) -> BandwidthProbe:
    """Time ``torch.sum`` of ``nbytes`` bytes of fp32 on ``device`` (bytes read; the one-value result aside)."""
    src = _source(device, nbytes)
    total = torch.empty((), dtype=torch.float32, device=device)
    return _probe(lambda: torch.sum(src, dim=0, out=total), src.nbytes, device, budget_ms)


def _source(device: torch.device, nbytes: int | None) -> torch.Tensor:
    """The probes' fp32 buffer of ``nbytes`` bytes (the device's default size for ``None``)."""
    if nbytes is None:
        nbytes = DEFAULT_PROBE_BYTES.get(device.type, DEFAULT_PROBE_BYTES["cpu"])
    return torch.ones(max(1, nbytes // 4), dtype=torch.float32, device=device)


def _probe(call, moved: int, device: torch.device, budget_ms: float) -> BandwidthProbe:
    timing = time_fn(call, device, budget_ms=budget_ms)
    return BandwidthProbe(moved, timing.median_us, gbps(moved, timing.median_us))


def gbps(nbytes: int, microseconds: float) -> float:
    """Bandwidth in GB/s (1e9 bytes per second) of ``nbytes`` moved in ``microseconds``."""
    return nbytes / (microseconds * 1e3)
