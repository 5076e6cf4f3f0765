"""Backend selection: the PyTorch reference or the Triton kernels.

``backend`` is chosen per call (the ``backend=`` keyword every op takes) or
for the whole process through ``ATTNOPS_BACKEND``; ``"auto"`` (the default)
picks Triton for CUDA tensors when the op has a Triton kernel and Triton
imports, the PyTorch reference otherwise. Under ``TRITON_INTERPRET=1`` an
explicit ``"triton"`` also runs on CPU tensors, which is how CI tests kernels.
Both are read on every call. A public call validates its arguments and picks
its implementation in one step (:meth:`Dispatcher.prepare`), memoised for
CUDA calls (see :mod:`attnops._common.fastpath`).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import torch

from attnops._common.env import getenv
from attnops._common.fastpath import MAX_ENTRIES, Bound, signature
from attnops._common.validate import checks_requested

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
    """The implementations of one op, keyed by backend name, and the op's argument checks.

    The PyTorch reference and the validator are given at construction; a Triton kernel module
    adds itself with :meth:`register` when it is written. ``unkeyed`` names a parameter of
    ``validate`` whose value :meth:`prepare` keys by its type alone, for an argument that changes
    every call (paged decode's ``max_seq_len`` grows every step: keyed by value, every step missed
    the memo and validated in full, ~35 µs more a call on a CPU). ``validate`` may then read the
    value only in value checks or in checks that the caller repeats after :meth:`prepare` on
    every call.
    """

    def __init__(
        self, op: str, reference: Callable[..., Any], validate: Callable[..., Any], unkeyed: str | None = None
    ) -> None:
        self.op = op
        self.impls: dict[str, Callable[..., Any]] = {"torch": reference}
        self.validate = validate
        # Position of the unkeyed argument (when passed by position; by keyword it is keyed by value).
        self._unkeyed = None if unkeyed is None else list(inspect.signature(validate).parameters).index(unkeyed)
        # Implementation -> its (direct, capture) functions, from which each memo entry makes its own
        # bound implementation (see register).
        self._bound: dict[Callable[..., Any], tuple[Callable[..., Any], Callable[..., Any]]] = {}
        # (backend asked for, argument signature) -> (verdict, implementation), for CUDA calls.
        self._prepared: dict[tuple, tuple[Any, Callable[..., Any]]] = {}

    def register(
        self,
        backend: str,
        direct: Callable[..., Any] | None = None,
        capture: Callable[..., Any] | None = None,
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator adding ``fn`` as the implementation of ``backend``.

        With ``direct`` and ``capture``, each memo entry of :meth:`prepare` (so one argument
        signature, on CUDA, without value checks) runs ``fn`` as its own
        :class:`attnops._common.fastpath.Bound` ``(fn, direct, capture)``, which keeps what ``fn``
        derives from the signature. Calls outside the memo always run ``fn``.
        """

        def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
            self.impls[backend] = fn
            if direct is not None and capture is not None:
                self._bound[fn] = (direct, capture)
            self.clear()
            return fn

        return decorate

    def clear(self) -> None:
        """Forget every memoised call (and its bound implementation), e.g. after a change of launch constants."""
        self._prepared.clear()

    def select(self, backend: str | None, device: torch.device) -> Callable[..., Any]:
        """The implementation to run for tensors on ``device``."""
        name = requested_backend(backend)
        has_triton = "triton" in self.impls and triton_available()
        if name == "auto":
            name = "triton" if has_triton and device.type == "cuda" else "torch"
        elif name == "triton":
            if not has_triton:
                raise ValueError(f"backend: {self.op} has no Triton implementation (Triton missing or no kernel)")
            if device.type != "cuda" and not triton_interpreted():
                raise ValueError(
                    f"backend: 'triton' needs CUDA tensors (or TRITON_INTERPRET=1), got tensors on {device}"
                )
        return self.impls[name]

    def prepare(self, backend: str | None, *args: Any, **kwargs: Any) -> tuple[Any, Callable[..., Any]]:
        """Check a call's arguments and pick its implementation: ``(validate(*args, **kwargs), impl)``.

        The implementation is chosen for the device of ``args[0]``, a tensor in every op (the
        validator checks it and that the other tensors share its device). For CUDA tensors without
        value checks the pair is kept per backend asked for and argument :func:`signature`: one
        lookup, ~7 µs of a ``paged_attention_v1`` call's Python (~5 of them the signature) instead
        of ~12 for a memoised validation and a separate dispatch (CPU,
        ``bench/tuning/host_python.py``). The implementation kept is bound to the signature where
        its backend registered direct and capture functions (see :meth:`register`): the Triton
        kernels' host path then costs ~5 µs instead of ~14. The validator must depend on its
        arguments' metadata only when values are not checked (as every validator does through
        :func:`attnops._common.validate.values_checked`). Bad arguments and a bad backend name
        raise on every call, as failures are never kept.
        """
        name = requested_backend(backend)
        key = None if checks_requested() else signature(args, kwargs, self._unkeyed)
        if key is None:
            return self._prepare(name, args, kwargs)
        key = (name, key)
        try:
            prepared = self._prepared.get(key)
        except TypeError:  # an unhashable argument
            return self._prepare(name, args, kwargs)
        if prepared is None:
            verdict, impl = self._prepare(name, args, kwargs)
            bound = self._bound.get(impl)
            prepared = (verdict, impl if bound is None else Bound(impl, *bound))
            if len(self._prepared) >= MAX_ENTRIES:
                self._prepared.clear()
            self._prepared[key] = prepared
        return prepared

    def _prepare(self, name: str, args: tuple, kwargs: dict[str, Any]) -> tuple[Any, Callable[..., Any]]:
        """:meth:`prepare` without the memo: validation first, so bad arguments raise before anything else."""
        verdict = self.validate(*args, **kwargs)
        return verdict, self.select(name, args[0].device)
