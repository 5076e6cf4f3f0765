"""Bound implementations of memoised calls (``fastpath.Bound``): direct launches, and when they fall back.

CPU tests run the public calls with CPU tensors on the CUDA tensors' path (as
``bench/tuning/host_python.py`` does) against recording stand-ins of the compiled kernels; GPU
tests compare eager results with the reference over repeated calls.
"""

from __future__ import annotations

import pytest
import torch

from attnops import (
    merge_attn_states,
    paged_attention_v1,
    paged_attention_v2,
    paged_decode,
    top_k_per_row_decode,
    top_k_per_row_prefill,
)
from attnops._common import backend as backend_mod
from attnops.cache import api as cache_api
from attnops.cache import make_paged_kv_cache, reshape_and_cache
from attnops.cache import triton as cache_kernels
from attnops.merge import api as merge_api
from attnops.merge import triton as merge_kernels
from attnops.paged_attention import api as paged_api
from attnops.paged_attention import triton as paged_kernels
from attnops.topk import api as topk_api
from attnops.topk import triton as topk_kernels
from helpers.launches import named, record_launches

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

DISPATCHERS = (
    paged_api._v1_dispatcher, paged_api._v2_dispatcher, paged_api._decode_dispatcher, merge_api._dispatcher,
    topk_api._prefill_dispatcher, topk_api._decode_dispatcher,
)  # fmt: skip


@pytest.fixture
def as_cuda(monkeypatch):
    """Public calls on CPU tensors take the CUDA path: memoised validation, the Triton implementation
    (bound per signature), recorded launches; nothing memoised or planned before is kept."""
    for name in ("ATTNOPS_CHECK", "ATTNOPS_BACKEND", "TRITON_INTERPRET"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(backend_mod, "triton_available", lambda: True)
    monkeypatch.setattr(torch.Tensor, "is_cuda", True)
    for dispatcher in DISPATCHERS:
        monkeypatch.setitem(dispatcher.impls, "torch", dispatcher.impls["triton"])
        monkeypatch.setattr(dispatcher, "_prepared", {})
    paged_kernels._clear_plans()
    yield
    paged_kernels._clear_plans()


@pytest.fixture
def paged_launches(monkeypatch, as_cuda):
    return record_launches(monkeypatch, paged_kernels, ("_partition_launcher", "_reduce_launcher"))


@pytest.fixture
def layouts(monkeypatch):
    """Counts the layouts the paged implementations derive (the general path's work, which bound calls skip)."""
    made = []
    layout = paged_kernels._layout
    monkeypatch.setattr(paged_kernels, "_layout", lambda *args: made.append(1) or layout(*args))
    return made


def paged_inputs(split_tokens: int | None, monkeypatch, kv_cache_dtype: str = "auto", num_seqs: int = 2):
    """v1's public arguments over sequences of 5, 40 (and 17) tokens; ``split_tokens`` per program
    (``None``: one split)."""
    if split_tokens is not None:
        monkeypatch.setattr(paged_kernels, "_auto_split", lambda *args: split_tokens)
    cache = make_paged_kv_cache([5, 40, 17][:num_seqs], 2, 32, 8, torch.float16, kv_cache_dtype=kv_cache_dtype)
    query = torch.randn(num_seqs, 4, 32, dtype=torch.float16)
    return dict(
        out=torch.empty_like(query), query=query, key_cache=cache.key_cache, value_cache=cache.value_cache,
        num_kv_heads=2, scale=0.2, block_tables=cache.block_tables, seq_lens=cache.seq_lens, block_size=8,
        max_seq_len=40, alibi_slopes=None, kv_cache_dtype=kv_cache_dtype, k_scale=cache.k_scale,
        v_scale=cache.v_scale,
    )  # fmt: skip


def tensors_of(arguments: dict) -> dict:
    return {name: value for name, value in arguments.items() if isinstance(value, torch.Tensor)}


def general_v1(arguments: dict) -> None:
    """The Triton implementation itself (never bound), as the public call would run it."""
    a = arguments
    paged_kernels.paged_attention_v1(
        a["out"], a["query"], a["key_cache"], a["value_cache"], a["block_tables"], a["seq_lens"], a["scale"],
        a["alibi_slopes"], a["kv_cache_dtype"], a["k_scale"], a["v_scale"], None,
    )  # fmt: skip


def unaligned_copy(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor``'s values in a view of the same shape and strides (so of the same call signature),
    one element further into a fresh buffer: off 16-byte alignment."""
    elements = tensor.untyped_storage().nbytes() // tensor.element_size()
    storage = torch.empty(elements + 1, dtype=tensor.dtype, device=tensor.device)
    view = storage.as_strided(tensor.shape, tensor.stride(), tensor.storage_offset() + 1)
    view.copy_(tensor)
    assert view.data_ptr() % 16 != 0
    return view


@pytest.mark.parametrize("split_tokens", [None, 16], ids=["one split", "splits"])
@pytest.mark.parametrize("kv_cache_dtype", ["auto", "fp8"])
def test_bound_v1_launches_what_the_general_path_launches(
    paged_launches, layouts, monkeypatch, split_tokens, kv_cache_dtype
):
    arguments = paged_inputs(split_tokens, monkeypatch, kv_cache_dtype)
    for _ in range(2):  # compiles, then launches the compiled handles
        general_v1(arguments)
    general = paged_launches[-2 if split_tokens else -1 :]
    paged_launches.clear()
    paged_attention_v1(**arguments)  # the general path, then the handles are captured
    made = len(layouts)
    paged_attention_v1(**arguments)
    assert len(layouts) == made  # the bound call derived nothing
    bound = paged_launches[-len(general) :]
    assert [launch.how for launch in paged_launches] == ["run"] * 2 * len(general)
    tensors = tensors_of(arguments)
    assert named(bound, **tensors) == named(general, **tensors)
    if split_tokens:
        assert [launch.kernel for launch in bound] == ["_partition_launcher", "_reduce_launcher"]


@pytest.mark.parametrize("whole", [True, False], ids=["whole partitions", "sub-splits"])
def test_bound_v2_launches_what_the_general_path_launches(paged_launches, layouts, monkeypatch, whole):
    arguments = paged_inputs(None if whole else 16, monkeypatch)
    arguments["max_seq_len"] = 600
    buffers = dict(
        exp_sum=torch.zeros(2, 4, 2), max_logits=torch.zeros(2, 4, 2), tmp_out=torch.zeros(2, 4, 2, 32).half()
    )
    a = {**arguments, **buffers}
    for _ in range(2):
        paged_kernels.paged_attention_v2(
            a["out"], a["exp_sum"], a["max_logits"], a["tmp_out"], a["query"], a["key_cache"], a["value_cache"],
            a["block_tables"], a["seq_lens"], a["scale"], None, "auto", a["k_scale"], a["v_scale"], None,
        )  # fmt: skip
    general = paged_launches[-2:]
    paged_launches.clear()
    for _ in range(2):
        paged_attention_v2(**a)
    assert len(layouts) == 4  # two general calls, the public call's and its capture's
    tensors = tensors_of(a)
    assert named(paged_launches[-2:], **tensors) == named(general, **tensors)
    assert [launch.how for launch in paged_launches] == ["run"] * 4


def test_bound_paged_decode_launches_what_the_general_path_launches(paged_launches, layouts, monkeypatch):
    arguments = paged_inputs(16, monkeypatch)
    inputs = {name: arguments[name] for name in ("query", "key_cache", "value_cache", "block_tables", "seq_lens")}
    ones = torch.ones(())
    results = []
    for _ in range(2):
        results.append(paged_kernels.paged_decode(*inputs.values(), 0.2, None, "auto", ones, ones))
    general = named(paged_launches[-2:], **inputs, out=results[-1][0], lse=results[-1][1])
    paged_launches.clear()
    for _ in range(2):
        results.append(paged_decode(*inputs.values(), scale=0.2, return_lse=True))
    assert len(layouts) == 4
    assert named(paged_launches[-2:], **inputs, out=results[-1][0], lse=results[-1][1]) == general
    out, lse = results[-1]
    assert (out.shape, out.dtype, lse.shape, lse.dtype) == ((2, 4, 32), torch.float16, (4, 2), torch.float32)


def test_an_unaligned_pointer_never_reuses_the_aligned_handle(paged_launches, monkeypatch):
    arguments = paged_inputs(16, monkeypatch)
    for _ in range(2):
        paged_attention_v1(**arguments)
    aligned = paged_launches[-2].compiled  # the partition kernel's: it reads the query
    unaligned = {**arguments, "query": unaligned_copy(arguments["query"])}  # the same signature
    paged_launches.clear()
    for _ in range(2):
        paged_attention_v1(**unaligned)
    # The partition kernel compiled for an unaligned query, then launched through that handle.
    partitions = [launch for launch in paged_launches if launch.kernel == "_partition_launcher"]
    assert [launch.how for launch in partitions] == ["jit", "run"]
    assert partitions[1].compiled is partitions[0].compiled is not aligned
    assert named(partitions[1:], query=unaligned["query"])[0][4] == "query"
    paged_launches.clear()
    paged_attention_v1(**arguments)  # aligned again: the bound handles
    assert paged_launches[-2].compiled is aligned


def test_a_launch_hook_sends_bound_calls_through_the_runner(paged_launches, monkeypatch):
    knobs = pytest.importorskip("triton").knobs
    arguments = paged_inputs(16, monkeypatch)
    for _ in range(2):
        paged_attention_v1(**arguments)
    monkeypatch.setattr(knobs.runtime, "launch_enter_hook", lambda metadata: None)
    paged_launches.clear()
    paged_attention_v1(**arguments)
    assert [launch.how for launch in paged_launches] == ["runner", "runner"]


def test_a_new_signature_is_validated_and_planned_again(paged_launches, layouts, monkeypatch):
    validated = []
    validate = paged_api._v1_dispatcher.validate
    monkeypatch.setattr(paged_api._v1_dispatcher, "validate", lambda *a: validated.append(1) or validate(*a))
    arguments = paged_inputs(16, monkeypatch)
    for _ in range(2):
        paged_attention_v1(**arguments)
    assert (len(validated), len(layouts)) == (1, 2)
    three = paged_inputs(16, monkeypatch, num_seqs=3)
    for _ in range(2):
        paged_attention_v1(**three)
    assert (len(validated), len(layouts)) == (2, 4)
    assert paged_launches[-2].grid == (2, 3, 3)  # kv heads, sequences, splits of 16 of 40 tokens
    three["block_size"] = 16
    with pytest.raises(ValueError, match="block_size: expected 8"):
        paged_attention_v1(**three)


def test_max_seq_len_is_still_checked_by_bound_calls(paged_launches, monkeypatch):
    arguments = paged_inputs(16, monkeypatch)
    for _ in range(2):
        paged_attention_v1(**arguments)
    with pytest.raises(ValueError, match="max_seq_len: expected a value >= 0"):
        paged_attention_v1(**{**arguments, "max_seq_len": -1})


def merge_inputs(**extra):
    prefix, suffix = torch.randn(2, 4, 8, 32, dtype=torch.float16)
    lse = torch.randn(3, 8, 4)
    return dict(
        output=torch.empty_like(prefix), prefix_output=prefix, prefix_lse=lse[0], suffix_output=suffix,
        suffix_lse=lse[1], output_lse=lse[2], **extra,
    )  # fmt: skip


@pytest.mark.parametrize("extra", [{}, {"prefill_tokens_with_context": 2}], ids=["all", "context"])
def test_bound_merge_launches_what_the_general_path_launches(monkeypatch, as_cuda, extra):
    launches = record_launches(monkeypatch, merge_kernels, ("_launcher",))
    arguments = merge_inputs(**extra)
    full = {"output_lse": None, "prefill_tokens_with_context": None, "output_scale": None, **arguments}
    for _ in range(2):
        merge_kernels.merge_attn_states(**full)
    general = launches[-1:]
    launches.clear()
    for _ in range(2):
        merge_attn_states(**arguments)
    assert [launch.how for launch in launches] == ["run", "run"]
    tensors = tensors_of(arguments)
    assert named(launches[-1:], **tensors) == named(general, **tensors)
    unaligned = {**arguments, "suffix_output": unaligned_copy(arguments["suffix_output"])}
    merge_attn_states(**unaligned)
    assert launches[-1].how == "jit" and launches[-1].compiled is not general[0].compiled


@pytest.fixture
def topk_launches(monkeypatch, as_cuda):
    topk_kernels._plan.cache_clear()
    yield record_launches(monkeypatch, topk_kernels, ("_chunk_launcher", "_finish_launcher"))
    topk_kernels._plan.cache_clear()


@pytest.fixture
def topk_general(monkeypatch):
    """Counts the general path's calls (which bound calls skip)."""
    made = []
    launch = topk_kernels._launch
    monkeypatch.setattr(topk_kernels, "_launch", lambda *args: made.append(1) or launch(*args))
    return made


def topk_inputs(width: int, prefill: bool, per_row: bool = False, rows: int = 3) -> dict:
    """A public top-k call's arguments over ``rows`` rows of ``width`` (more than 8192: chunk programs)."""
    logits = torch.randn(rows, width)
    common = dict(raw_topk_indices=torch.empty(rows, 16, dtype=torch.int32), num_rows=rows, stride0=width, stride1=1)
    if prefill:
        starts = torch.tensor([0, 3, 0], dtype=torch.int32)[:rows]
        ends = torch.tensor([width, width, 120], dtype=torch.int32)[:rows]
        return dict(logits=logits, cu_seqlen_ks=starts, cu_seqlen_ke=ends, **common, topk_tokens=16)
    lens = torch.tensor([width, width - 5, 7], dtype=torch.int32)[:rows]
    return dict(logits=logits, next_n=1, seq_lens=lens[:, None] if per_row else lens, **common, topk_tokens=16)


TOPK_CASES = [
    pytest.param(True, False, 20000, id="prefill chunks"),
    pytest.param(False, False, 20000, id="decode chunks"),
    pytest.param(False, True, 20000, id="decode per-row lengths"),
    pytest.param(False, False, 300, id="decode short rows"),
]


@pytest.mark.parametrize(("prefill", "per_row", "width"), TOPK_CASES)
def test_bound_topk_launches_what_the_general_path_launches(topk_launches, topk_general, prefill, per_row, width):
    arguments = topk_inputs(width, prefill, per_row)
    general_fn = topk_kernels.top_k_per_row_prefill if prefill else topk_kernels.top_k_per_row_decode
    public = top_k_per_row_prefill if prefill else top_k_per_row_decode
    for _ in range(2):  # compiles, then launches the compiled handles
        general_fn(**arguments)
    launches = 2 if width > topk_kernels._SHORT_ROW else 1
    general = topk_launches[-launches:]
    topk_launches.clear()
    public(**arguments)  # the general path, then the handles are captured
    made = len(topk_general)
    public(**arguments)
    assert len(topk_general) == made  # the bound call went straight to the handles
    assert [launch.how for launch in topk_launches] == ["run"] * 2 * launches
    tensors = tensors_of(arguments)
    assert named(topk_launches[-launches:], **tensors) == named(general, **tensors)


def test_topk_storage_past_2_31_elements_takes_the_general_path(topk_launches, topk_general, monkeypatch):
    arguments = topk_inputs(20000, prefill=False)
    for _ in range(2):
        top_k_per_row_decode(**arguments)
    bound = topk_launches[-1].compiled
    made = len(topk_general)
    # The same signature over a logits storage of 2**31 elements or more: int64 offsets, another plan.
    wide = [True]
    storage_elements = topk_kernels.storage_elements
    monkeypatch.setattr(topk_kernels, "storage_elements", lambda logits: 2**31 if wide[0] else storage_elements(logits))
    top_k_per_row_decode(**arguments)
    assert len(topk_general) == made + 1
    assert topk_launches[-1].how == "jit" and topk_launches[-1].args[-4] == 2**31  # available
    wide[0] = False
    top_k_per_row_decode(**arguments)
    assert topk_launches[-1].compiled is bound and len(topk_general) == made + 1


def test_topk_prefill_bounds_of_two_strides_are_never_bound(topk_launches, topk_general):
    arguments = topk_inputs(300, prefill=True)
    arguments["cu_seqlen_ke"] = torch.stack([arguments["cu_seqlen_ke"]] * 2, dim=1)[:, 0]  # stride 2
    for _ in range(3):
        top_k_per_row_prefill(**arguments)
    assert len(topk_general) == 3  # the general path copies the bounds to one stride every call


@pytest.mark.parametrize("kv_cache_dtype", ["auto", "fp8"])
def test_bound_cache_writes_launch_what_the_general_path_launches(monkeypatch, as_cuda, kv_cache_dtype):
    launches = record_launches(monkeypatch, cache_kernels, ("_launcher",))
    cache = make_paged_kv_cache([40], 2, 32, 8, torch.float16, kv_cache_dtype=kv_cache_dtype)
    # Only now: filling the cache above writes it through reshape_and_cache's reference.
    dispatcher = cache_api._dispatcher
    monkeypatch.setitem(dispatcher.impls, "torch", dispatcher.impls["triton"])
    monkeypatch.setattr(dispatcher, "_prepared", {})
    qkv = torch.randn(5, 3, 2, 32, dtype=torch.float16)
    arguments = dict(
        key=qkv[:, 1], value=qkv[:, 2], key_cache=cache.key_cache, value_cache=cache.value_cache,
        slot_mapping=torch.tensor([3, 9, -1, 17, 30]), kv_cache_dtype=kv_cache_dtype, k_scale=cache.k_scale,
        v_scale=cache.v_scale,
    )  # fmt: skip
    for _ in range(2):
        cache_kernels.reshape_and_cache(**arguments)
    general = launches[-1:]
    launches.clear()
    for _ in range(2):
        reshape_and_cache(**arguments)
    assert [launch.how for launch in launches] == ["run", "run"]
    tensors = tensors_of(arguments)
    assert named(launches[-1:], **tensors) == named(general, **tensors)
    unaligned = {**arguments, "slot_mapping": unaligned_copy(arguments["slot_mapping"])}
    reshape_and_cache(**unaligned)
    assert launches[-1].how == "jit" and launches[-1].compiled is not general[0].compiled


def gpu_paged_inputs(seq_lens, kv_cache_dtype="auto"):
    cache = make_paged_kv_cache(seq_lens, 2, 128, 16, torch.bfloat16, kv_cache_dtype=kv_cache_dtype, device="cuda")
    # A query that is a view of a wider qkv buffer, as vLLM passes it.
    qkv = torch.randn(len(seq_lens), 3 * 8 * 128, dtype=torch.bfloat16, device="cuda")
    query = qkv[:, : 8 * 128].view(len(seq_lens), 8, 128)
    return cache, query


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("kv_cache_dtype", ["auto", "fp8"])
def test_eager_calls_match_the_reference_over_a_decode_loop(monkeypatch, kv_cache_dtype):
    """Repeated eager calls (bound after the first) with changing sequence lengths, then a query off
    16-byte alignment (the same signature), give the reference's results (v1, v2, paged_decode)."""
    from attnops.paged_attention import reference

    monkeypatch.delenv("ATTNOPS_CHECK", raising=False)
    cache, query = gpu_paged_inputs([70, 1000, 333], kv_cache_dtype)
    scale = 128**-0.5
    for step in range(4):
        lens = cache.seq_lens - 5 * step  # cache slots past a sequence hold NaN
        max_seq_len = int(lens.max())
        if step == 3:
            query = unaligned_copy(query)
        common = (query, cache.key_cache, cache.value_cache, 2, scale, cache.block_tables, lens, 16, max_seq_len,
                  None, kv_cache_dtype, cache.k_scale, cache.v_scale)  # fmt: skip
        expected = torch.empty_like(query)
        reference.paged_attention_v1(
            expected, query, cache.key_cache, cache.value_cache, cache.block_tables, lens, scale, None,
            kv_cache_dtype, cache.k_scale, cache.v_scale, None,
        )  # fmt: skip
        out = torch.empty_like(query)
        paged_attention_v1(out, *common)
        torch.testing.assert_close(out, expected, atol=2e-2, rtol=2e-2)
        stats = torch.empty(2, 3, 8, 2, device="cuda")  # two partitions of 512 tokens
        tmp = torch.empty(3, 8, 2, 128, dtype=query.dtype, device="cuda")
        out2 = torch.empty_like(query)
        paged_attention_v2(out2, stats[0], stats[1], tmp, *common)
        torch.testing.assert_close(out2, expected, atol=2e-2, rtol=2e-2)
        fp8 = kv_cache_dtype != "auto"  # an "auto" cache's call passes no scales
        decoded, lse = paged_decode(
            query, cache.key_cache, cache.value_cache, cache.block_tables, lens, scale=scale,
            kv_cache_dtype=kv_cache_dtype, k_scale=cache.k_scale if fp8 else None,
            v_scale=cache.v_scale if fp8 else None, return_lse=True,
        )  # fmt: skip
        torch.testing.assert_close(decoded, out, atol=0, rtol=0)
        expected_lse = reference.paged_decode(
            query, cache.key_cache, cache.value_cache, cache.block_tables, lens, scale, None, kv_cache_dtype,
            cache.k_scale, cache.v_scale,
        )[1]  # fmt: skip
        torch.testing.assert_close(lse, expected_lse, atol=1e-3, rtol=1e-3)


@pytest.mark.gpu
@gpu
def test_eager_merges_match_the_reference_over_repeated_calls(monkeypatch):
    from attnops.merge import reference

    monkeypatch.delenv("ATTNOPS_CHECK", raising=False)
    for step in range(4):
        prefix, suffix = torch.randn(2, 64, 8, 128, dtype=torch.bfloat16, device="cuda")
        if step == 3:
            prefix = unaligned_copy(prefix)
        lse = torch.randn(2, 8, 64, device="cuda")
        out, out_lse = torch.empty_like(prefix), torch.empty(8, 64, device="cuda")
        merge_attn_states(out, prefix, lse[0], suffix, lse[1], out_lse)
        expected, expected_lse = torch.empty_like(prefix), torch.empty(8, 64, device="cuda")
        reference.merge_attn_states(expected, prefix, lse[0], suffix, lse[1], expected_lse, None, None)
        torch.testing.assert_close(out, expected, atol=1e-2, rtol=1e-2)
        torch.testing.assert_close(out_lse, expected_lse)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("width", [300, 20000], ids=["short rows", "chunks"])
def test_eager_topk_matches_torch_topk_over_repeated_calls(monkeypatch, width):
    monkeypatch.delenv("ATTNOPS_CHECK", raising=False)
    rows, k = 4, 64
    out = torch.empty(rows, k, dtype=torch.int32, device="cuda")
    for step in range(4):
        logits = torch.randn(rows, width, device="cuda")
        if step == 3:
            logits = unaligned_copy(logits)
        lens = torch.randint(k, width + 1, (rows,), dtype=torch.int32, device="cuda")
        top_k_per_row_decode(logits, 1, lens, out, rows, width, 1, k)
        for row in range(rows):
            valid = logits[row, : int(lens[row])]
            want = valid.topk(k).values.sort().values
            assert torch.equal(valid[out[row].long()].sort().values, want)


@pytest.mark.gpu
@gpu
def test_bound_calls_captured_in_a_cuda_graph_replay_with_new_lengths(monkeypatch):
    """Bound calls (their scratch from the graph's pool, launched on the capture stream) replay
    with the sequence lengths of each step, as vLLM's decode graphs do."""
    from attnops.paged_attention import reference

    monkeypatch.delenv("ATTNOPS_CHECK", raising=False)
    cache, query = gpu_paged_inputs([70, 1000, 333])
    lens = cache.seq_lens.clone()
    scale = 128**-0.5
    out, out2 = torch.empty_like(query), torch.empty_like(query)
    stats = torch.empty(2, 3, 8, 2, device="cuda")
    tmp = torch.empty(3, 8, 2, 128, dtype=query.dtype, device="cuda")
    common = (query, cache.key_cache, cache.value_cache, 2, scale, cache.block_tables, lens, 16, 1000, None, "auto",
              cache.k_scale, cache.v_scale)  # fmt: skip

    def step():
        paged_attention_v1(out, *common)
        paged_attention_v2(out2, stats[0], stats[1], tmp, *common)
        return paged_decode(query, cache.key_cache, cache.value_cache, cache.block_tables, lens, scale=scale)

    for _ in range(2):  # compiled, then bound, outside the capture
        step()
    graph = torch.cuda.CUDAGraph()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream), torch.cuda.graph(graph, stream=stream):
        decoded = step()
    torch.cuda.current_stream().wait_stream(stream)
    for shift in (0, 7, 40):
        lens.copy_(cache.seq_lens - shift)
        graph.replay()
        expected = torch.empty_like(query)
        reference.paged_attention_v1(
            expected, query, cache.key_cache, cache.value_cache, cache.block_tables, lens, scale, None, "auto",
            cache.k_scale, cache.v_scale, None,
        )  # fmt: skip
        torch.testing.assert_close(out, expected, atol=2e-2, rtol=2e-2)
        torch.testing.assert_close(out2, expected, atol=2e-2, rtol=2e-2)
        torch.testing.assert_close(decoded, out, atol=0, rtol=0)


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_one_signature_on_two_devices_binds_twice(monkeypatch):
    monkeypatch.delenv("ATTNOPS_CHECK", raising=False)
    results = []
    for index in (0, 1, 0, 1):
        with torch.cuda.device(index):
            prefix, suffix = torch.ones(2, 16, 8, 128, dtype=torch.bfloat16, device=f"cuda:{index}")
            lse = torch.zeros(2, 8, 16, device=f"cuda:{index}")
            out = torch.empty_like(prefix)
            merge_attn_states(out, prefix, lse[0], suffix * (index + 2), lse[1])
            results.append(out.float().mean().item())
    assert results == [1.5, 2.0, 1.5, 2.0]
