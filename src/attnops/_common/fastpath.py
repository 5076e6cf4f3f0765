"""Host fast paths of eager GPU calls: memoised validation and dispatch, direct launches of compiled kernels.

A decode loop calls each op once per step with tensors whose metadata (shapes, strides, dtypes,
devices, pointer alignment) repeat from step to step. Our argument checks, the backend choice and
Triton's per-launch argument specialisation depend only on that metadata (and the backend asked
for), yet cost tens of microseconds of Python a call: more than the GPU time of a small decode.
They are therefore kept per metadata :func:`signature`: a validator's verdict with the
implementation chosen (:meth:`attnops._common.backend.Dispatcher.prepare`), that implementation
bound to the signature (:class:`Bound`: after its first call, only the call's addresses are read,
checked for 16-byte alignment and handed with the fixed arguments to the compiled handles,
:meth:`Launcher.direct`), and a kernel's compiled handle (:class:`Launcher`, keyed by the launch's
own integer arguments and pointer alignments). Value checks (``ATTNOPS_CHECK=1``), CPU tensors and
fake tensors always take the full path, and keys never hold tensors.
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

# Signatures kept per cache (validation verdicts, compiled handles, launch plans); a process that
# sees more distinct ones starts over (or, for plans, drops the least recently used).
MAX_ENTRIES = 4096
# Argument types keyed as themselves, without asking whether they are tensors (``isinstance(value,
# torch.Tensor)`` costs ~60 ns; the paged ops take 10 such arguments): no value of one equals a
# value of another. Other values are keyed with their type, as ``1 == 1.0 == True``: a float or a
# bool must not hit the verdict of an int and skip the check that rejects it.
_PLAIN = frozenset({int, str, type(None)})


def signature(args: tuple, kwargs: dict[str, Any], unkeyed: int | None = None) -> tuple | None:
    """The metadata of a call's arguments as a key; ``None`` when the call must not be memoised.

    Tensors, positional or by keyword, contribute dtype, shape, strides and device index (never
    themselves: a key must not keep a tensor alive, nor match it after an in-place change of its
    shape); other values contribute themselves (with their type, but for ints, strings and
    ``None``), keyword names last; the positional argument at ``unkeyed``, its type alone. Only
    calls whose first argument is a CUDA tensor qualify, and only plain tensors: any other (a fake
    tensor under ``torch.compile``, a subclass) gives ``None``. The other tensors' device indices
    (-1 on the CPU) are keyed, not also checked (a check cost ~65 ns a tensor): the validators check
    that every tensor shares the first one's device, so a memoised signature has all of them on
    CUDA (a CPU tensor's values are read by validation, which must then run every call). ~4.7 µs for the 19
    arguments (8 tensors) of ``paged_attention_v1`` on a CPU, ~0.45 µs a tensor (``Tensor`` and
    ``append`` are bound names: ~0.4 µs less than looking them up per argument).
    """
    first = args[0] if args else None
    if type(first) is not Tensor or not first.is_cuda:
        return None
    key = []
    append = key.append
    for value in (*args, *kwargs.values()) if kwargs else args:
        kind = type(value)
        if kind is Tensor:
            append((value.dtype, value.shape, value.stride(), value.get_device()))
        elif kind in _PLAIN:
            append(value)
        elif isinstance(value, Tensor):
            return None
        else:
            append((kind, value))
    if unkeyed is not None and unkeyed < len(args):
        key[unkeyed] = type(args[unkeyed])
    key.extend(kwargs)
    return tuple(key)


class Launcher:
    """Launches a ``@triton.jit`` kernel, straight through its compiled handle once compiled.

    ``launch(key, grid, pointers, scalars, constexprs)``: the kernel's runtime arguments in
    signature order are its tensor pointers (``None`` for those a launch never reads: they
    specialise as constants and skip the launcher's pointer checks), then its scalars;
    ``constexprs`` is a zero-argument function returning the constexpr parameters and launch
    options (called on the first launch of a key only). ``key`` must determine the constexprs, the
    options and every scalar Triton specialises on; the launcher adds each pointer's dtype, 16-byte
    alignment and whether it is ``None``. The first launch of a key goes through Triton's JIT
    (compiling if needed) and keeps the compiled kernel; later launches skip the JIT's argument
    specialisation and pass tensors as their addresses, so Triton's launcher skips its per-pointer
    ``data_ptr()`` call and driver query (``cuPointerGetAttribute``; the caller has validated the
    devices); while no Triton launch hook is registered they also call the handle's launcher
    directly, without the per-launch runner and hook metadata. ``key=None`` (e.g. under the CPU
    interpreter) always takes the JIT.
    """

    def __init__(self, kernel: Any) -> None:
        self.kernel = kernel
        self.compiled: dict[tuple, tuple[Any, tuple]] = {}

    def resident(self, args: tuple, constexprs: dict[str, Any], device: torch.device) -> int:
        """Programs of the kernel that ``args`` and ``constexprs`` specialise one SM runs at once.

        Compiles the kernel without launching it (Triton's warm-up; ``args`` may hold a torch dtype
        in place of a tensor) and asks the driver's occupancy calculator; callers keep the answer.
        """
        with torch.cuda.device(device):
            return _resident_blocks(self.kernel.warmup(*args, grid=(1,), **constexprs))

    def launch(
        self,
        key: tuple | None,
        grid: tuple[int, ...],
        pointers: tuple,
        scalars: tuple,
        constexprs: Callable[[], dict[str, Any]],
        device: torch.device,
    ) -> None:
        """Launch on ``device``'s current stream with the runtime arguments ``(*pointers, *scalars)``."""
        if key is None:
            self.kernel[grid](*pointers, *scalars, **constexprs())
            return
        # The full key, built in one list: the caller's, the device (a compiled handle belongs to
        # the device it was loaded on), then per pointer None, its dtype when 16-byte aligned (the
        # usual case: no tuple per pointer) or (dtype, False).
        index = device.index
        addresses = []
        layout = [key, index]
        for pointer in pointers:
            if pointer is None:
                addresses.append(None)
                layout.append(None)
            else:
                address = pointer.data_ptr()
                addresses.append(address)
                layout.append(pointer.dtype if address & 15 == 0 else (pointer.dtype, False))
        key = tuple(layout)
        hit = self.compiled.get(key)
        if hit is not None:
            compiled, tail = hit
            # The compiled handle reads all three grid dimensions; a given stream spares it two
            # Python-level driver queries.
            stream = torch._C._cuda_getCurrentRawStream(index)
            grid = (*grid, 1, 1)
            if hooks_idle():
                # What the handle's runner would do without launch hooks, minus its per-launch
                # closure, hook lookups and hook metadata (microseconds of Python a launch).
                compiled.run(
                    grid[0], grid[1], grid[2], stream, compiled.function, compiled.packed_metadata, None, None, None,
                    *addresses, *scalars, *tail,
                )  # fmt: skip
            else:
                compiled[grid[:3]](*addresses, *scalars, *tail, stream=stream)
            return
        params = constexprs()
        compiled = self.kernel[grid](*pointers, *scalars, **params)
        if hasattr(compiled, "function"):
            # The compiled handle takes every parameter positionally, constexprs included.
            tail = tuple(params[name] for name in self.kernel.arg_names[len(pointers) + len(scalars) :])
            if len(self.compiled) >= MAX_ENTRIES:
                self.compiled.clear()
            self.compiled[key] = (compiled, tail)

    def direct(
        self, key: tuple | None, grid: tuple[int, ...], pointers: tuple, scalars: tuple, device: torch.device
    ) -> Callable[..., None] | None:
        """A launch of ``key`` (as :meth:`launch` takes it) whose pointers are all 16-byte aligned, fixed
        but for its stream, pointers and leading scalars: ``go(stream, *addresses, *leading)`` passes
        them, then ``scalars`` and the constexprs, straight to the compiled handle's launcher.

        ``pointers`` gives each pointer's dtype (a tensor, or its dtype) or ``None``. ``None`` until
        such a launch has been compiled through :meth:`launch`, and for ``key=None``. The caller
        checks, on every call, that its pointers are aligned and that no launch hook is set
        (:func:`hooks_idle`).
        """
        if key is None:
            return None
        dtypes = [None if pointer is None else getattr(pointer, "dtype", pointer) for pointer in pointers]
        hit = self.compiled.get((key, device.index, *dtypes))
        if hit is None:
            return None
        compiled, tail = hit
        run, function, metadata = compiled.run, compiled.function, compiled.packed_metadata
        grid_x, grid_y, grid_z = (*grid, 1, 1)[:3]
        fixed = (*scalars, *tail)

        def go(stream: int, *arguments: Any) -> None:
            run(grid_x, grid_y, grid_z, stream, function, metadata, None, None, None, *arguments, *fixed)

        # Triton unloads a kernel's module when its handle is freed (the launcher's cache may drop it).
        go.compiled = compiled  # type: ignore[attr-defined]
        return go


@functools.cache
def _runtime_knobs() -> Any:
    from triton import knobs

    return knobs.runtime


def hooks_idle() -> bool:
    """Whether no launch hook (a profiler's, say) is registered with Triton, so launches may skip them.

    A hook is idle when it is ``None`` or a chain of hooks (Triton's ``HookChain``) with no calls; a
    function, or any other object, is set. Inline, as every eager call asks (~0.25 µs on a CPU).
    """
    runtime = _runtime_knobs()
    enter, leave = runtime.launch_enter_hook, runtime.launch_exit_hook
    return (enter is None or getattr(enter, "calls", None) == []) and (
        leave is None or getattr(leave, "calls", None) == []
    )


def current_stream(index: int) -> int:
    """The current CUDA stream of device ``index``, as the compiled handles take it."""
    return torch._C._cuda_getCurrentRawStream(index)


class _Fallback:
    """What a direct call (see :class:`Bound`) returns when it launched nothing."""

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def __repr__(self) -> str:
        return self.reason


# A pointer of the call is not 16-byte aligned: the captured handles were compiled for aligned ones.
UNALIGNED = _Fallback("UNALIGNED")
# Nothing captured yet (``handles`` is ``None``): the call's pointers are aligned, the general path
# runs and the handles are captured after it.
UNBOUND = _Fallback("UNBOUND")
# The call needs another launch plan than the captured one, from something its signature does not
# fix (top-k: a logits storage on the other side of 2**31 elements): the general path runs.
UNPLANNED = _Fallback("UNPLANNED")


class Bound:
    """An implementation bound to one memoised argument signature: direct launches after its first call.

    Everything an implementation derives from its arguments' metadata (launch plan, keys, compiled
    handles) is fixed by the signature that :meth:`attnops._common.backend.Dispatcher.prepare`
    memoises, but for the pointers' alignment (and, for top-k, which side of 2**31 elements the
    logits' storage ends). A ``Bound`` is made per memo entry (see
    :meth:`~attnops._common.backend.Dispatcher.register`): ``general(*args)`` is the implementation;
    ``capture(*args)``, after a general call whose pointers were all 16-byte aligned, returns the
    launches of such calls with their static arguments fixed (from :meth:`Launcher.direct`), or
    ``None`` when it has none (an empty input, the interpreter); ``direct(handles, *args)`` reads the
    call's addresses and returns :data:`UNALIGNED` (unless all are aligned), :data:`UNBOUND` (while
    ``handles`` is ``None``) or :data:`UNPLANNED` (the call needs another plan) before launching
    anything, else launches ``handles`` and returns the result. A registered launch hook (a
    profiler's) sends every call through ``general``, whose launches call it.
    """

    __slots__ = ("_capture", "_direct", "_general", "_handles")

    def __init__(self, general: Callable[..., Any], direct: Callable[..., Any], capture: Callable[..., Any]) -> None:
        self._general = general
        self._direct = direct
        self._capture = capture
        self._handles: Any = None

    def __call__(self, *args: Any) -> Any:
        if not hooks_idle():
            return self._general(*args)
        result = self._direct(self._handles, *args)
        if result is UNALIGNED or result is UNPLANNED:
            return self._general(*args)
        if result is UNBOUND:
            result = self._general(*args)
            self._handles = self._capture(*args)
        return result


@functools.cache
def head_tile(num_heads: int, head_size: int, element_size: int, tile_bytes: int) -> tuple[int, int]:
    """``(BLOCK_H, HEAD_PAD)`` of a program over one token's heads: the head size padded to a power of
    two, and as many heads (a power of two, at most all of them padded) as fit ``tile_bytes`` of
    ``element_size``-byte elements, at least one."""
    head_pad = next_power_of_2(head_size)
    heads_per_tile = max(1, tile_bytes // (head_pad * element_size))
    return min(next_power_of_2(num_heads), heads_per_tile), head_pad


def cdiv(a: int, b: int) -> int:
    """``ceil(a / b)`` for host code (``triton.cdiv`` is a constexpr function: microseconds a call)."""
    return -(-a // b)


def next_power_of_2(n: int) -> int:
    """The smallest power of two ``>= n`` (1 for ``n <= 1``), for host code (see :func:`cdiv`)."""
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


@functools.cache
def _driver() -> ctypes.CDLL:
    return ctypes.CDLL("libcuda.so.1")


def _resident_blocks(compiled: Any) -> int:
    """Blocks of a compiled Triton kernel one SM holds at once (``cuOccupancyMaxActiveBlocksPerMultiprocessor``)."""
    # Loading the module sets the function handle and its dynamic shared-memory limit.
    compiled._init_handles()
    blocks = ctypes.c_int()
    status = _driver().cuOccupancyMaxActiveBlocksPerMultiprocessor(
        ctypes.byref(blocks),
        ctypes.c_void_p(compiled.function),
        ctypes.c_int(32 * compiled.metadata.num_warps),
        ctypes.c_size_t(compiled.metadata.shared),
    )
    if status != 0:
        raise RuntimeError(f"cuOccupancyMaxActiveBlocksPerMultiprocessor failed: CUDA error {status}")
    return blocks.value
