"""Memoised validation and compiled-handle launches (the eager host fast path)."""

from __future__ import annotations

import pytest
import torch

from attnops._common.fastpath import cdiv, memoize_validation, next_power_of_2

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def counting_validator():
    calls = []

    @memoize_validation
    def validate(x: torch.Tensor, n: int) -> int:
        calls.append(n)
        if n < 0:
            raise ValueError("n: expected a value >= 0")
        return x.shape[0] + n

    return validate, calls


def test_cpu_tensors_are_validated_every_call():
    validate, calls = counting_validator()
    x = torch.zeros(3)
    assert validate(x, 1) == validate(x, 1) == 4
    assert len(calls) == 2


def test_tensors_by_keyword_count_as_tensors():
    # A CPU tensor passed by keyword is validated every call, as one passed by position: the key
    # never holds a tensor itself (it would keep it alive and match it after an in-place reshape).
    validate, calls = counting_validator()
    x = torch.zeros(3)
    assert validate(n=1, x=x) == validate(n=1, x=x) == 4
    assert len(calls) == 2


def test_fake_tensors_are_validated_every_call():
    from torch._subclasses.fake_tensor import FakeTensorMode

    validate, calls = counting_validator()
    with FakeTensorMode() as mode:
        x = mode.from_tensor(torch.zeros(3))
        validate(x, 1)
        validate(x, 1)
    assert len(calls) == 2


def test_host_integer_helpers():
    assert [cdiv(a, 4) for a in (0, 1, 4, 5, 9)] == [0, 1, 1, 2, 3]
    assert [next_power_of_2(n) for n in (0, 1, 2, 3, 64, 65, 1000)] == [1, 1, 2, 4, 64, 128, 1024]


@pytest.mark.gpu
@gpu
def test_cuda_verdicts_are_memoised_per_signature(monkeypatch):
    validate, calls = counting_validator()
    x = torch.zeros(3, device="cuda")
    assert validate(x, 1) == validate(torch.ones(3, device="cuda"), 1) == 4
    assert len(calls) == 1
    assert validate(torch.zeros(5, device="cuda"), 1) == 6  # another shape: validated
    assert len(calls) == 2
    for _ in range(2):  # failures are never memoised
        with pytest.raises(ValueError, match="n: expected"):
            validate(x, -1)
    assert len(calls) == 4
    monkeypatch.setenv("ATTNOPS_CHECK", "1")
    validate(x, 1)
    assert len(calls) == 5


@pytest.mark.gpu
@gpu
def test_cuda_keyword_tensors_are_keyed_by_metadata():
    # paged_attention_v2 passes its fresh-per-call buffers by keyword: they must hit the memo by
    # metadata and must not be kept alive by it.
    import weakref

    validate, calls = counting_validator()
    buffer = torch.zeros(3, device="cuda")
    alive = weakref.ref(buffer)
    validate(x=buffer, n=1)
    del buffer
    assert alive() is None
    validate(x=torch.ones(3, device="cuda"), n=1)
    assert len(calls) == 1
    validate(torch.ones(3, device="cuda"), n=1)  # by position: another key
    assert len(calls) == 2


class FakeCompiled:
    """Stands for a compiled Triton kernel: records the launches through its handle, direct
    (``run``, as Triton's runner calls it without hooks) or through the runner (``[grid]``)."""

    function = object()
    packed_metadata = object()

    def __init__(self):
        self.launches = []
        self.runner_launches = 0

    def run(self, grid_x, grid_y, grid_z, stream, function, packed_metadata, *args):
        assert function is self.function and packed_metadata is self.packed_metadata
        assert args[:3] == (None, None, None)  # launch metadata and the two hooks
        self.launches.append(((grid_x, grid_y, grid_z), args[3:], stream))

    def __getitem__(self, grid):
        self.runner_launches += 1
        return lambda *args, stream: self.launches.append((grid, args, stream))


class FakeKernel:
    """Stands for a ``@triton.jit`` function with runtime parameters a, b and constexprs C, D."""

    arg_names = ("a", "b", "C", "D")

    def __init__(self):
        self.jit_launches = []
        self.compiled = FakeCompiled()

    def __getitem__(self, grid):
        def run(*args, **kwargs):
            self.jit_launches.append((grid, args, kwargs))
            return self.compiled

        return run


def test_launcher_reuses_the_compiled_handle(monkeypatch):
    from attnops._common.fastpath import Launcher

    monkeypatch.setattr(torch._C, "_cuda_getCurrentRawStream", lambda index: 1000 + index, raising=False)
    kernel = FakeKernel()
    launcher = Launcher(kernel)
    made = []

    def constexprs():
        made.append(1)
        return {"D": 4, "C": 3, "num_warps": 8}

    device = torch.device("cuda", 1)
    first, second = torch.zeros(3), torch.zeros(5)
    launcher.launch(("k",), (2, 5), (first,), (11,), constexprs, device)
    launcher.launch(("k",), (2, 5), (second,), (13,), constexprs, device)
    launcher.launch(None, (7,), (14,), (15,), constexprs, device)
    assert kernel.jit_launches == [
        ((2, 5), (first, 11), {"D": 4, "C": 3, "num_warps": 8}),
        ((7,), (14, 15), {"D": 4, "C": 3, "num_warps": 8}),
    ]
    # Tensors as addresses, constexprs in signature order, launch options left out, the grid
    # made three-dimensional.
    assert kernel.compiled.launches == [((2, 5, 1), (second.data_ptr(), 13, 3, 4), 1001)]
    assert kernel.compiled.runner_launches == 0
    assert len(made) == 2


def test_launcher_keeps_triton_launch_hooks(monkeypatch):
    """With a launch hook registered (a profiler's), launches go through Triton's runner, which calls it."""
    knobs = pytest.importorskip("triton").knobs
    from attnops._common.fastpath import Launcher

    monkeypatch.setattr(torch._C, "_cuda_getCurrentRawStream", lambda index: 7, raising=False)
    kernel = FakeKernel()
    launcher = Launcher(kernel)
    device = torch.device("cuda", 0)
    x = torch.zeros(4)
    # Triton's default (an empty chain of hooks), then a hook.
    for hook in (knobs.runtime.launch_enter_hook, lambda metadata: None):
        monkeypatch.setattr(knobs.runtime, "launch_enter_hook", hook)
        for _ in range(2):
            launcher.launch(("k",), (3,), (x,), (5,), lambda: {"C": 1, "D": 2}, device)
    # The first launch compiles; the second goes direct, the last two through the runner.
    assert len(kernel.jit_launches) == 1
    assert kernel.compiled.runner_launches == 2
    assert kernel.compiled.launches == [((3, 1, 1), (x.data_ptr(), 5, 1, 2), 7)] * 3


@pytest.mark.parametrize(
    "other",
    [
        lambda x: x[1:],  # not 16-byte aligned
        lambda x: x.double(),  # another dtype
        lambda x: None,  # a pointer the launch never reads
    ],
    ids=["misaligned", "dtype", "none"],
)
def test_launcher_keys_on_pointer_layout(monkeypatch, other):
    from attnops._common.fastpath import Launcher

    monkeypatch.setattr(torch._C, "_cuda_getCurrentRawStream", lambda index: 0, raising=False)
    kernel = FakeKernel()
    launcher = Launcher(kernel)
    x = torch.zeros(16)
    device = torch.device("cuda", 0)
    for pointer in (x, torch.zeros(16), other(x)):
        launcher.launch(("k",), (1,), (pointer,), (1,), lambda: {"C": 0, "D": 0}, device)
    # The second launch reuses the first's compiled kernel; the third specialises differently.
    assert len(kernel.jit_launches) == 2
    assert len(kernel.compiled.launches) == 1
