"""Memoised validation and dispatch, and compiled-handle launches (the eager host fast path)."""

from __future__ import annotations

import weakref

import pytest
import torch

from attnops._common import backend as backend_mod
from attnops._common.backend import Dispatcher
from attnops._common.fastpath import UNALIGNED, Bound, cdiv, next_power_of_2, signature

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def reference(*args, **kwargs):
    return "torch"


def kernel(*args, **kwargs):
    return "triton"


def counting_dispatcher():
    """A dispatcher with a kernel whose validator records its calls and rejects ``n < 0``."""
    calls = []

    def validate(x: torch.Tensor, n: int, buffer: torch.Tensor | None = None) -> int:
        calls.append(n)
        if n < 0:
            raise ValueError("n: expected a value >= 0")
        return x.shape[0] + n

    dispatcher = Dispatcher("op", reference, validate)
    dispatcher.register("triton")(kernel)
    return dispatcher, calls


def paged_v1_arguments(max_seq_len: int) -> list:
    """``paged_attention_v1``'s arguments, sequences of 5 and 12 tokens."""
    from attnops.cache import make_paged_kv_cache

    cache = make_paged_kv_cache([5, 12], 2, 32, 8, torch.float16)
    query = torch.randn(2, 4, 32, dtype=torch.float16)
    return [torch.empty_like(query), query, cache.key_cache, cache.value_cache, 2, 0.2, cache.block_tables,
            cache.seq_lens, 8, max_seq_len, None, "auto", cache.k_scale, cache.v_scale]  # fmt: skip


@pytest.fixture
def clean_environment(monkeypatch):
    for name in ("ATTNOPS_CHECK", "ATTNOPS_BACKEND", "TRITON_INTERPRET"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(backend_mod, "triton_available", lambda: True)


@pytest.fixture
def as_cuda(monkeypatch, clean_environment):
    """CPU tensors take the CUDA tensors' memoised path (``is_cuda`` holds for plain tensors)."""
    monkeypatch.setattr(torch.Tensor, "is_cuda", True)


@pytest.fixture
def on_cuda(monkeypatch, as_cuda):
    """CPU tensors also say they are on a CUDA device, where ``"auto"`` picks the kernel (run no op on them)."""
    monkeypatch.setattr(torch.Tensor, "device", torch.device("cuda"))


def test_cpu_tensors_are_validated_every_call(clean_environment):
    dispatcher, calls = counting_dispatcher()
    x = torch.zeros(3)
    assert dispatcher.prepare(None, x, 1) == dispatcher.prepare(None, x, 1) == (4, reference)
    assert len(calls) == 2


def test_tensors_by_keyword_count_as_tensors(clean_environment):
    # A CPU tensor passed by keyword is validated every call, as one passed by position: the key
    # never holds a tensor itself (it would keep it alive and match it after an in-place reshape).
    dispatcher, calls = counting_dispatcher()
    x = torch.zeros(3)
    assert dispatcher.prepare(None, x, 1, buffer=x) == dispatcher.prepare(None, x, 1, buffer=x) == (4, reference)
    assert len(calls) == 2


def test_fake_tensors_are_validated_every_call(clean_environment):
    from torch._subclasses.fake_tensor import FakeTensorMode

    dispatcher, calls = counting_dispatcher()
    with FakeTensorMode() as mode:
        x = mode.from_tensor(torch.zeros(3))
        dispatcher.prepare(None, x, 1)
        dispatcher.prepare(None, x, 1)
    assert len(calls) == 2


def test_signature_keys_plain_cuda_tensors_by_metadata(as_cuda):
    x = torch.zeros(2, 3)
    key = signature((x, 1, None, 0.5), {"y": x.t(), "z": "auto"})
    assert key == (
        (torch.float32, (2, 3), (3, 1), -1), 1, None, (float, 0.5), (torch.float32, (3, 2), (1, 3), -1), "auto",
        "y", "z",
    )  # fmt: skip
    assert not any(value is x for value in key)
    # Any other tensor: not memoised.
    assert signature((torch.nn.Parameter(x),), {}) is None


def test_signature_refuses_calls_not_led_by_a_cuda_tensor():
    assert signature((torch.zeros(2), 1), {}) is None
    assert signature((1,), {"x": torch.zeros(2)}) is None
    assert signature((1, "a"), {}) is None
    assert signature((), {}) is None


def test_signature_keys_the_device_of_every_tensor(as_cuda, monkeypatch):
    # Validators check that every tensor shares the first one's device: a tensor on another device
    # (a CPU tensor: index -1) must give another key, so that validation runs (and raises).
    x, y = torch.zeros(2), torch.zeros(2)
    devices = {id(x): 0}
    monkeypatch.setattr(torch.Tensor, "get_device", lambda self: devices.get(id(self), -1))
    on_cpu = signature((x, y), {})
    devices[id(y)] = 0
    same = signature((x, y), {})
    devices[id(y)] = 1
    assert len({on_cpu, same, signature((x, y), {})}) == 3


def test_signature_tells_equal_values_of_other_types_apart(as_cuda):
    x = torch.zeros(2)
    assert len({signature((x, value), {}) for value in (1, 1.0, True)}) == 3


def test_signature_keys_the_unkeyed_argument_by_its_type(as_cuda):
    x = torch.zeros(2)
    assert signature((x, 5, 7), {}, unkeyed=1) == signature((x, 6, 7), {}, unkeyed=1)
    assert signature((x, 5, 7), {}, unkeyed=1) != signature((x, 5.0, 7), {}, unkeyed=1)
    assert signature((x, 5, 7), {}, unkeyed=1) != signature((x, 5, 8), {}, unkeyed=1)
    # Passed by keyword (past the positional arguments), it is keyed by value.
    assert signature((x,), {"n": 5}, unkeyed=1) != signature((x,), {"n": 6}, unkeyed=1)


def test_verdicts_are_memoised_per_signature(on_cuda):
    dispatcher, calls = counting_dispatcher()
    x = torch.zeros(3)
    assert dispatcher.prepare(None, x, 1) == dispatcher.prepare(None, torch.ones(3), 1) == (4, kernel)
    assert len(calls) == 1
    assert dispatcher.prepare(None, torch.zeros(5), 1) == (6, kernel)  # another shape: validated
    assert len(calls) == 2


def test_a_value_equal_to_a_memoised_one_but_of_another_type_is_checked(as_cuda):
    # block_size=8 is memoised; 8.0 and True compare equal to ints but are rejected.
    from attnops import paged_attention_v1

    args = paged_v1_arguments(12)
    paged_attention_v1(*args)
    for value in (8.0, True):
        args[8] = value
        with pytest.raises(TypeError, match="block_size: expected an int"):
            paged_attention_v1(*args)


def test_an_unkeyed_argument_is_keyed_by_its_type(on_cuda):
    calls = []
    dispatcher = Dispatcher("op", reference, lambda x, limit, n: calls.append(limit), unkeyed="limit")
    x = torch.zeros(3)
    for limit in (1, 2, 3):
        dispatcher.prepare(None, x, limit, 1)
    assert calls == [1]
    dispatcher.prepare(None, x, 1.5, 1)
    dispatcher.prepare(None, x, 1, 2)  # keyed arguments still are
    assert calls == [1, 1.5, 1]


def test_a_growing_max_seq_len_hits_the_memoised_checks(as_cuda, monkeypatch):
    from attnops import paged_attention_v1
    from attnops.paged_attention import api

    validated = []
    validate = api._v1_dispatcher.validate
    monkeypatch.setattr(api._v1_dispatcher, "validate", lambda *a, **k: validated.append(1) or validate(*a, **k))
    monkeypatch.setattr(api._v1_dispatcher, "_prepared", {})  # nothing memoised by earlier tests
    args = paged_v1_arguments(12)
    for max_seq_len in range(12, 20):
        args[9] = max_seq_len
        paged_attention_v1(*args)
    assert len(validated) == 1


@pytest.mark.parametrize(
    ("max_seq_len", "error", "message"),
    [(-1, ValueError, "max_seq_len: expected a value >= 0"), (13.0, TypeError, "max_seq_len: expected an int")],
)
def test_a_bad_max_seq_len_raises_after_a_memoised_call(as_cuda, max_seq_len, error, message):
    from attnops import paged_attention_v1

    args = paged_v1_arguments(12)
    paged_attention_v1(*args)
    args[9] = max_seq_len
    for _ in range(2):
        with pytest.raises(error, match=message):
            paged_attention_v1(*args)


def test_paged_decode_checks_every_max_seq_len(as_cuda, monkeypatch):
    from attnops import paged_decode
    from attnops.paged_attention import api

    validated = []
    validate = api._decode_dispatcher.validate
    monkeypatch.setattr(api._decode_dispatcher, "validate", lambda *a, **k: validated.append(1) or validate(*a, **k))
    monkeypatch.setattr(api._decode_dispatcher, "_prepared", {})  # nothing memoised by earlier tests
    _, query, key_cache, value_cache, _, _, block_tables, seq_lens, *_ = paged_v1_arguments(12)
    for max_seq_len in range(12, 16):
        paged_decode(query, key_cache, value_cache, block_tables, seq_lens, max_seq_len=max_seq_len)
    assert len(validated) == 1
    with pytest.raises(ValueError, match="max_seq_len: expected a value >= 0"):
        paged_decode(query, key_cache, value_cache, block_tables, seq_lens, max_seq_len=-1)


def test_v2_checks_its_partitions_against_every_max_seq_len(as_cuda):
    from attnops import paged_attention_v2

    out, *tail = paged_v1_arguments(12)
    buffers = [torch.zeros(2, 4, 1), torch.zeros(2, 4, 1), torch.zeros(2, 4, 1, 32, dtype=torch.float16)]
    paged_attention_v2(out, *buffers, *tail)
    tail[8] = 513  # two partitions of 512 tokens, one allocated
    for _ in range(2):
        with pytest.raises(ValueError, match="exp_sum: expected at least"):
            paged_attention_v2(out, *buffers, *tail)


def test_failures_are_never_memoised(on_cuda):
    dispatcher, calls = counting_dispatcher()
    x = torch.zeros(3)
    dispatcher.prepare(None, x, 1)
    for _ in range(2):
        with pytest.raises(ValueError, match="n: expected"):
            dispatcher.prepare(None, x, -1)
    assert len(calls) == 3


def test_value_checks_requested_after_a_memoised_call_validate_every_call(on_cuda, monkeypatch):
    dispatcher, calls = counting_dispatcher()
    x = torch.zeros(3)
    dispatcher.prepare(None, x, 1)
    monkeypatch.setenv("ATTNOPS_CHECK", "1")
    dispatcher.prepare(None, x, 1)
    dispatcher.prepare(None, x, 1)
    assert len(calls) == 3
    monkeypatch.setenv("ATTNOPS_CHECK", "0")
    dispatcher.prepare(None, x, 1)
    assert len(calls) == 3


def test_the_backend_is_chosen_per_call(on_cuda, monkeypatch):
    dispatcher, _ = counting_dispatcher()
    x = torch.zeros(3)
    assert dispatcher.prepare(None, x, 1)[1] is kernel
    monkeypatch.setenv("ATTNOPS_BACKEND", "torch")
    assert dispatcher.prepare(None, x, 1)[1] is reference
    assert dispatcher.prepare("triton", x, 1)[1] is kernel
    monkeypatch.setenv("ATTNOPS_BACKEND", "auto")
    assert dispatcher.prepare(None, x, 1)[1] is kernel
    assert dispatcher.prepare("torch", x, 1)[1] is reference
    # A bad name raises on every call, memoised signature or not.
    monkeypatch.setenv("ATTNOPS_BACKEND", "cuda")
    for _ in range(2):
        with pytest.raises(ValueError, match="ATTNOPS_BACKEND"):
            dispatcher.prepare(None, x, 1)
    with pytest.raises(ValueError, match="backend: expected one of"):
        dispatcher.prepare("fast", x, 1)


def test_a_kernel_registered_later_is_picked(on_cuda):
    validated = []
    dispatcher = Dispatcher("op", reference, lambda x, n: validated.append(n))
    x = torch.zeros(3)
    assert dispatcher.prepare(None, x, 1)[1] is reference
    dispatcher.register("triton")(kernel)
    assert dispatcher.prepare(None, x, 1)[1] is kernel


@pytest.mark.parametrize("by_keyword", [False, True])
def test_memoised_calls_do_not_keep_tensors_alive(on_cuda, by_keyword):
    # paged_attention_v2 passes its fresh-per-call buffers by keyword: they must hit the memo by
    # metadata and must not be kept alive by it.
    dispatcher, calls = counting_dispatcher()

    def prepare(x):
        return dispatcher.prepare(None, torch.zeros(2), 1, buffer=x) if by_keyword else dispatcher.prepare(None, x, 1)

    buffer = torch.zeros(3)
    alive = weakref.ref(buffer)
    prepare(buffer)
    del buffer
    assert alive() is None
    prepare(torch.ones(3))
    assert len(calls) == 1


def test_public_call_checks_values_when_asked_after_a_memoised_call(as_cuda, monkeypatch):
    """``ATTNOPS_CHECK=1`` set after a memoised call of the same metadata still reads the block table."""
    from attnops import paged_attention_v1

    args = paged_v1_arguments(12)
    paged_attention_v1(*args)
    args[6] = torch.full_like(args[6], args[2].shape[0])
    monkeypatch.setenv("ATTNOPS_CHECK", "1")
    for _ in range(2):
        with pytest.raises(ValueError, match="block_tables: expected values in"):
            paged_attention_v1(*args)


def test_public_call_raises_on_every_bad_call_after_a_memoised_one(as_cuda):
    from attnops import merge_attn_states

    prefix, suffix = torch.randn(2, 4, 2, 8)
    lse = torch.randn(2, 2, 4)
    merge_attn_states(torch.empty_like(prefix), prefix, lse[0], suffix, lse[1])
    for _ in range(2):
        with pytest.raises(TypeError, match="output: expected dtype"):
            merge_attn_states(torch.empty_like(prefix).double(), prefix, lse[0], suffix, lse[1])


def test_host_integer_helpers():
    assert [cdiv(a, 4) for a in (0, 1, 4, 5, 9)] == [0, 1, 1, 2, 3]
    assert [next_power_of_2(n) for n in (0, 1, 2, 3, 64, 65, 1000)] == [1, 1, 2, 4, 64, 128, 1024]


@pytest.mark.gpu
@gpu
def test_cuda_verdicts_are_memoised_per_signature(monkeypatch):
    monkeypatch.delenv("ATTNOPS_CHECK", raising=False)
    dispatcher, calls = counting_dispatcher()
    x = torch.zeros(3, device="cuda")
    assert dispatcher.prepare("torch", x, 1) == (4, reference)
    assert dispatcher.prepare("torch", torch.ones(3, device="cuda"), 1) == (4, reference)
    assert len(calls) == 1
    assert dispatcher.prepare("torch", torch.zeros(5, device="cuda"), 1)[0] == 6  # another shape
    assert len(calls) == 2
    for _ in range(2):  # failures are never memoised
        with pytest.raises(ValueError, match="n: expected"):
            dispatcher.prepare("torch", x, -1)
    assert len(calls) == 4
    monkeypatch.setenv("ATTNOPS_CHECK", "1")
    dispatcher.prepare("torch", x, 1)
    assert len(calls) == 5


@pytest.mark.gpu
@gpu
def test_cuda_keyword_tensors_are_keyed_by_metadata(monkeypatch):
    # paged_attention_v2 passes its fresh-per-call buffers by keyword: they must hit the memo by
    # metadata and must not be kept alive by it.
    monkeypatch.delenv("ATTNOPS_CHECK", raising=False)
    dispatcher, calls = counting_dispatcher()
    buffer = torch.zeros(3, device="cuda")
    alive = weakref.ref(buffer)
    x = torch.zeros(2, device="cuda")
    dispatcher.prepare("torch", x, 1, buffer=buffer)
    del buffer
    assert alive() is None
    dispatcher.prepare("torch", x, 1, buffer=torch.ones(3, device="cuda"))
    assert len(calls) == 1
    dispatcher.prepare("torch", x, 1, torch.ones(3, device="cuda"))  # by position: another key
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


def test_direct_launches_pass_what_the_launcher_passes(monkeypatch):
    """A direct launch (:meth:`Launcher.direct`) hands the compiled handle exactly what a cached launch does."""
    from attnops._common.fastpath import Launcher

    monkeypatch.setattr(torch._C, "_cuda_getCurrentRawStream", lambda index: 1000 + index, raising=False)
    kernel = FakeKernel()
    launcher = Launcher(kernel)
    device = torch.device("cuda", 1)
    x, y = torch.zeros(4), torch.zeros(4)
    assert launcher.direct(("k",), (2, 5), (x,), (), device) is None  # nothing compiled yet
    assert launcher.direct(None, (2, 5), (x,), (), device) is None
    for pointer in (x, y):
        launcher.launch(("k",), (2, 5), (pointer,), (11, 12), lambda: {"C": 3, "D": 4}, device)
    # Given dtypes or tensors; the scalars after the first are fixed, the first passed per call.
    for pointers in ((x,), (torch.float32,)):
        direct = launcher.direct(("k",), (2, 5), pointers, (12,), device)
        direct(1001, y.data_ptr(), 11)
    launches = kernel.compiled.launches
    assert len(launches) == 3
    assert launches[1] == launches[2] == launches[0]
    assert launcher.direct(("k",), (2, 5), (torch.float16,), (12,), device) is None  # another dtype
    assert launcher.direct(("k",), (2, 5), (x,), (12,), torch.device("cuda", 0)) is None  # another device


def test_direct_launches_only_reuse_kernels_compiled_for_aligned_pointers(monkeypatch):
    from attnops._common.fastpath import Launcher

    monkeypatch.setattr(torch._C, "_cuda_getCurrentRawStream", lambda index: 0, raising=False)
    launcher = Launcher(FakeKernel())
    device = torch.device("cuda", 0)
    x = torch.zeros(16)
    launcher.launch(("k",), (1,), (x[1:],), (1,), lambda: {"C": 0, "D": 0}, device)
    assert launcher.direct(("k",), (1,), (x,), (1,), device) is None
    launcher.launch(("k",), (1,), (x,), (1,), lambda: {"C": 0, "D": 0}, device)
    assert launcher.direct(("k",), (1,), (x,), (1,), device) is not None


class RecordingBound:
    """The three functions of a :class:`Bound` over one "pointer" argument (an int address), recording calls."""

    def __init__(self):
        self.calls = []

    def general(self, address, value):
        self.calls.append(("general", address))
        return value

    def direct(self, handles, address, value):
        from attnops._common.fastpath import UNALIGNED, UNBOUND

        if address & 15:
            return UNALIGNED
        if handles is None:
            return UNBOUND
        self.calls.append(("direct", address, handles))
        return value

    def capture(self, address, value):
        self.calls.append(("capture", address))
        return "handles"


def test_a_bound_call_goes_direct_once_captured():
    from attnops._common.fastpath import Bound

    recorded = RecordingBound()
    bound = Bound(recorded.general, recorded.direct, recorded.capture)
    assert [bound(address, address + 1) for address in (16, 32, 8, 48)] == [17, 33, 9, 49]
    assert recorded.calls == [
        ("general", 16), ("capture", 16), ("direct", 32, "handles"), ("general", 8), ("direct", 48, "handles"),
    ]  # fmt: skip


def test_a_bound_call_captures_after_an_aligned_call_only():
    from attnops._common.fastpath import Bound

    recorded = RecordingBound()
    bound = Bound(recorded.general, recorded.direct, recorded.capture)
    for address in (8, 24, 32, 48):
        bound(address, None)
    assert recorded.calls == [
        ("general", 8),
        ("general", 24),
        ("general", 32),
        ("capture", 32),
        ("direct", 48, "handles"),
    ]


def test_a_launch_hook_sends_bound_calls_through_the_general_path(monkeypatch):
    knobs = pytest.importorskip("triton").knobs
    from attnops._common.fastpath import Bound, hooks_idle

    recorded = RecordingBound()
    bound = Bound(recorded.general, recorded.direct, recorded.capture)
    bound(16, None)
    assert hooks_idle()
    monkeypatch.setattr(knobs.runtime, "launch_exit_hook", lambda metadata: None)
    assert not hooks_idle()
    bound(32, None)
    monkeypatch.undo()
    bound(48, None)
    assert recorded.calls == [("general", 16), ("capture", 16), ("general", 32), ("direct", 48, "handles")]


def test_hooks_idle_reads_triton_hook_chains(monkeypatch):
    knobs = pytest.importorskip("triton").knobs
    from attnops._common.fastpath import hooks_idle

    chain = type(knobs.runtime.launch_enter_hook)()
    monkeypatch.setattr(knobs.runtime, "launch_enter_hook", chain)
    assert hooks_idle()
    chain.add(lambda metadata: None)
    assert not hooks_idle()
    monkeypatch.setattr(knobs.runtime, "launch_enter_hook", None)
    assert hooks_idle()


def test_memoised_signatures_get_a_bound_implementation_each(on_cuda):
    dispatcher = Dispatcher("op", reference, lambda x, n: n)

    def direct(handles, x, n):
        return UNALIGNED  # always the implementation itself

    dispatcher.register("triton", direct=direct, capture=lambda x, n: None)(kernel)
    x = torch.zeros(3)
    first = dispatcher.prepare(None, x, 1)[1]
    assert isinstance(first, Bound) and dispatcher.prepare(None, torch.ones(3), 1)[1] is first
    second = dispatcher.prepare(None, x, 2)[1]  # another signature
    assert isinstance(second, Bound) and second is not first
    assert dispatcher.prepare("torch", x, 1)[1] is reference  # an implementation without direct launches
    dispatcher.clear()
    again = dispatcher.prepare(None, x, 1)[1]
    assert isinstance(again, Bound) and again is not first
    assert again(x, 1) == kernel(x, 1)


def test_calls_outside_the_memo_run_the_implementation_itself(clean_environment, monkeypatch):
    monkeypatch.setattr(backend_mod, "triton_interpreted", lambda: True)
    dispatcher = Dispatcher("op", reference, lambda x, n: n)
    never = lambda *args: pytest.fail("bound outside the memo")
    dispatcher.register("triton", direct=never, capture=never)(kernel)
    assert dispatcher.prepare("triton", torch.zeros(3), 1) == (1, kernel)  # a CPU tensor
