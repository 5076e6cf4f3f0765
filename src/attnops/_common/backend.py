"""Backend selection: the PyTorch reference or the Triton kernels.

``backend`` is chosen per call (the ``backend=`` keyword every op takes) or
for the whole process through ``ATTNOPS_BACKEND``; ``"auto"`` (the default)
picks Triton for CUDA tensors when the op has a Triton kernel and Triton
imports, the PyTorch reference otherwise. Under ``TRITON_INTERPRET=1`` an
explicit ``"triton"`` also runs on CPU tensors, which is how CI tests kernels.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch

from attnops._common.env import getenv

BACKENDS = ("auto", "torch", "triton")


@functools.cache
def triton_available() -> bool:
    """Whether Triton can be imported in this process."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def triton_interpreted() -> bool:
    """Whether Triton kernels run under the CPU interpreter (``TRITON_INTERPRET=1``)."""
    return getenv("TRITON_INTERPRET", "0") == "1"


@functools.cache
def sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device; 1 for any other device (the Triton interpreter's CPU)."""
    if device.type != "cuda":
        return 1
    return torch.cuda.get_device_properties(device).multi_processor_count


def requested_backend(backend: str | None) -> str:
    """The backend asked for: the argument, else ``ATTNOPS_BACKEND``, else ``"auto"``."""
    name = backend if backend is not None else getenv("ATTNOPS_BACKEND", "auto")
    if name not in BACKENDS:
        source = "backend" if backend is not None else "ATTNOPS_BACKEND"
        raise ValueError(f"{source}: expected one of {BACKENDS}, got {name!r}")
    return name


class Dispatcher:
    """The implementations of one op, keyed by backend name.

    The PyTorch reference is given at construction; a Triton kernel module
    adds itself with :meth:`register` when it is written.
    """

    def __init__(self, op: str, reference: Callable[..., Any]) -> None:
        self.op = op
        self.impls: dict[str, Callable[..., Any]] = {"torch": reference}

    def register(self, backend: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
            self.impls[backend] = fn
            return fn

        return decorate

    def select(self, backend: str | None, device: torch.device) -> Callable[..., Any]:
        """The implementation to run for tensors on ``device``."""
        name = requested_backend(backend)
        has_triton = "triton" in self.impls and triton_available()
        triton_device = device.type == "cuda" or triton_interpreted()
        if name == "auto":
            name = "triton" if has_triton and device.type == "cuda" else "torch"
        elif name == "triton":
            if not has_triton:
                raise ValueError(f"backend: {self.op} has no Triton implementation (Triton missing or no kernel)")
            if not triton_device:
                raise ValueError(
                    f"backend: 'triton' needs CUDA tensors (or TRITON_INTERPRET=1), got tensors on {device}"
                )
        return self.impls[name]
