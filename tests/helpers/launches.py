"""Stand-ins for compiled Triton kernels that record what our launchers hand them (no GPU, nothing runs).

:func:`record_launches` swaps a module's :class:`attnops._common.fastpath.Launcher` kernels for
:class:`RecordingKernel` s: a JIT launch records its arguments and returns a fresh
:class:`RecordingCompiled`, whose launches (direct ``run`` or through the ``[grid]`` runner) are
recorded too. :func:`named` turns a launch's addresses into the names of the tensors they point at,
so launches of two calls (and their scratch buffers) compare.
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class Launch(NamedTuple):
    kernel: str
    # "jit" (compiles), "run" (the compiled handle's launcher) or "runner" (Triton's runner: hooks).
    how: str
    compiled: object
    grid: tuple
    args: tuple


class RecordingCompiled:
    function = object()
    packed_metadata = object()

    def __init__(self, name: str, log: list) -> None:
        self.name = name
        self.log = log

    def run(self, grid_x, grid_y, grid_z, stream, function, metadata, launch_metadata, enter, leave, *args):
        assert (function, metadata) == (self.function, self.packed_metadata)
        assert (launch_metadata, enter, leave) == (None, None, None)
        self.log.append(Launch(self.name, "run", self, (grid_x, grid_y, grid_z), (stream, *args)))

    def __getitem__(self, grid):
        def runner(*args, stream):
            self.log.append(Launch(self.name, "runner", self, tuple(grid), (stream, *args)))

        return runner


class RecordingKernel:
    def __init__(self, kernel, name: str, log: list) -> None:
        self.arg_names = kernel.arg_names
        self.name = name
        self.log = log

    def __getitem__(self, grid):
        def jit(*args, **constexprs):
            compiled = RecordingCompiled(self.name, self.log)
            # The launch's pointers lead its arguments: tensors, or None for those it never reads.
            compiled.pointers = next(
                (i for i, arg in enumerate(args) if not (arg is None or isinstance(arg, torch.Tensor))), len(args)
            )
            self.log.append(Launch(self.name, "jit", compiled, tuple(grid), args))
            return compiled

        return jit


def record_launches(monkeypatch, module, names: tuple[str, ...]) -> list[Launch]:
    """Every launch of ``module``'s launchers ``names`` from now on (the current stream is 7)."""
    from attnops._common.fastpath import Launcher

    monkeypatch.setattr(torch._C, "_cuda_getCurrentRawStream", lambda index: 7, raising=False)
    log: list[Launch] = []
    for name in names:
        kernel = getattr(module, name).kernel
        monkeypatch.setattr(module, name, Launcher(RecordingKernel(kernel, name, log)))
    return log


def named(launches: list[Launch], **tensors: torch.Tensor) -> list[tuple]:
    """``launches`` with each address (a pointer argument of a compiled launch) of one of ``tensors`` as
    its name, others (a scratch buffer) as ``"scratch+"`` their offset from the 64-byte alignment of
    CPU allocations. Addresses are told by position, not size: a CPU heap may sit below 2**32."""
    names = {tensor.data_ptr(): name for name, tensor in tensors.items()}
    result = []
    for launch in launches:
        stream, *args = launch.args
        pointers = launch.compiled.pointers
        args = [names.get(a, f"scratch+{a % 64}") if i < pointers and type(a) is int else a for i, a in enumerate(args)]
        result.append((launch.kernel, launch.compiled, launch.grid, stream, *args))
    return result
