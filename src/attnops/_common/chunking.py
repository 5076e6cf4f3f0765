"""How much work one step of a reference loop takes on.

The PyTorch references bound their temporaries by chunking over sequences,
rows or tokens. On a CPU a chunk should stay near the cache size; on a GPU
each chunk costs kernel launches and the memory is plentiful, so chunks are
much larger there.
"""

from __future__ import annotations

import torch

# GPU chunks are this many times the CPU ones (16 MiB of fp32 on a CPU becomes 1 GiB).
GPU_FACTOR = 64


def chunk_budget(device: torch.device, cpu_budget: int) -> int:
    """The per-chunk budget (elements or bytes) for tensors on ``device``, given the CPU one."""
    return cpu_budget * GPU_FACTOR if device.type == "cuda" else cpu_budget
