"""Python cost of the Triton implementations' host paths, on any CPU (no GPU, no kernel runs).

PYTHONPATH=src python bench/tuning/host_python.py [CASE]
Every launcher gets a stand-in kernel whose compiled handle does nothing, and the device queries a
GPU would answer (SM count, resident programs, the current stream) are fixed, so what is timed is
our host code up to Triton's C launcher, on CPU tensors of the SPEC §3 shapes. Two kinds of case:

- ``paged v1 1x1024`` …: the Triton implementation alone (validation and dispatch excluded);
- ``public paged v1 1x1024`` …: the whole public call as vLLM makes it (``backend`` and
  ``ATTNOPS_BACKEND`` unset): the public wrapper, the memoised validation, the backend dispatch,
  then the Triton implementation bound to the call's signature (its direct launches, after the
  first call). The CPU stand-ins take the CUDA tensors' path: they count as CUDA tensors for the
  memoised validation, whose paged checks read no values (as without ``ATTNOPS_CHECK=1`` on a
  GPU), and each dispatcher's reference entry is its Triton implementation (what ``"auto"`` picks
  on a GPU). Only this script is patched, never the library.
  ``public paged v1 1x1024 growing`` passes a ``max_seq_len`` one larger every call, as a decode loop does.

Prints µs per call of each case; with a CASE name, a cProfile of it instead.
"""

import cProfile
import functools
import itertools
import pstats
import sys
import timeit

import torch

import attnops
from attnops.cache import api as cache_api
from attnops.cache import make_paged_kv_cache
from attnops.cache import triton as cache_kernels
from attnops.merge import api as merge_api
from attnops.merge import triton as merge_kernels
from attnops.paged_attention import api as paged_api
from attnops.paged_attention import triton as paged_kernels
from attnops.topk import api as topk_api
from attnops.topk import triton as topk_kernels

SMS = 132


class _Compiled:
    function = 1
    packed_metadata = ()

    def run(self, *args):
        pass

    def __getitem__(self, grid):
        return lambda *args, stream=None: None


class _Kernel:
    def __init__(self, kernel):
        self.arg_names = kernel.arg_names

    def __getitem__(self, grid):
        return lambda *args, **kwargs: _Compiled()


def _stand_ins() -> None:
    torch._C._cuda_getCurrentRawStream = lambda index: 0
    launchers = ((paged_kernels, ("_partition_launcher", "_reduce_launcher")),
                 (topk_kernels, ("_chunk_launcher", "_finish_launcher")), (merge_kernels, ("_launcher",)),
                 (cache_kernels, ("_launcher",)))  # fmt: skip
    for module, names in launchers:
        for name in names:
            launcher = getattr(module, name)
            launcher.kernel = _Kernel(launcher.kernel)
        module.sm_count = lambda device: SMS
    paged_kernels._resident_programs = lambda layout: 8
    paged_kernels._many_programs = lambda programs, device: programs >= 2 * SMS

    def auto_split(num_seqs, num_kv_heads, capacity, device):
        split = paged_kernels._MAX_SPLIT
        wanted = paged_kernels._PROGRAMS_PER_SM * SMS
        while split > paged_kernels._MIN_SPLIT and num_seqs * num_kv_heads * -(-capacity // split) < wanted:
            split //= 2
        return split

    paged_kernels._auto_split = auto_split


def _public_as_on_cuda() -> None:
    """CPU tensors take the public call's CUDA path: memoised validation, then the Triton implementation."""
    # The memo takes plain tensors whose ``is_cuda`` holds (a class attribute shadows the property).
    torch.Tensor.is_cuda = True
    # A memo miss of a paged call costs what it costs on a GPU without ATTNOPS_CHECK=1: no value checks.
    paged_api.values_checked = lambda *tensors: False
    for dispatcher in (paged_api._v1_dispatcher, paged_api._v2_dispatcher, merge_api._dispatcher,
                       topk_api._decode_dispatcher, cache_api._dispatcher):  # fmt: skip
        dispatcher.impls["torch"] = dispatcher.impls["triton"]


def public_cases() -> dict:
    """Whole public calls (see the module docstring); call :func:`_public_as_on_cuda` first."""
    calls = {}
    cache = make_paged_kv_cache([1024], 8, 128, 16, torch.bfloat16, device="cpu")
    query = torch.randn(1, 32, 128, dtype=torch.bfloat16)
    out = torch.empty_like(query)
    tail = (query, cache.key_cache, cache.value_cache, 8, 128**-0.5, cache.block_tables, cache.seq_lens, 16,
            cache.max_seq_len, None, "auto", cache.k_scale, cache.v_scale)  # fmt: skip
    stats = torch.empty(2, 1, 32, 2)
    tmp = torch.empty(1, 32, 2, 128, dtype=torch.bfloat16)
    calls["public paged v1 1x1024"] = functools.partial(attnops.paged_attention_v1, out, *tail)
    max_seq_lens = itertools.count(1024)
    head = functools.partial(attnops.paged_attention_v1, out, *tail[:8])
    calls["public paged v1 1x1024 growing"] = lambda: head(next(max_seq_lens), *tail[9:])
    calls["public paged v2 1x1024"] = functools.partial(attnops.paged_attention_v2, out, stats[0], stats[1], tmp, *tail)
    logits = torch.randn(1, 8192)
    lens = torch.full((1,), 8192, dtype=torch.int32)
    indices = torch.empty(1, 2048, dtype=torch.int32)
    calls["public top-k decode 1x8192"] = functools.partial(
        attnops.top_k_per_row_decode, logits, 1, lens, indices, 1, 8192, 1, 2048
    )
    qkv = torch.randn(256, 3, 8, 128, dtype=torch.bfloat16)
    slots = torch.randperm(1024)[:256]
    calls["public cache 256"] = functools.partial(
        attnops.reshape_and_cache, qkv[:, 1], qkv[:, 2], cache.key_cache, cache.value_cache, slots, "auto",
        cache.k_scale, cache.v_scale,
    )  # fmt: skip
    prefix, suffix = torch.randn(2, 512, 32, 128, dtype=torch.bfloat16)
    lse = torch.randn(3, 32, 512)
    calls["public merge 512"] = functools.partial(
        attnops.merge_attn_states, torch.empty_like(prefix), prefix, lse[0], suffix, lse[1], lse[2]
    )
    return calls


def cases() -> dict:
    calls = {}
    for num_seqs, context in ((1, 1024), (8, 4096)):
        cache = make_paged_kv_cache([context] * num_seqs, 8, 128, 16, torch.bfloat16, device="cpu")
        query = torch.randn(num_seqs, 32, 128, dtype=torch.bfloat16)
        out = torch.empty_like(query)
        common = (query, cache.key_cache, cache.value_cache, cache.block_tables, cache.seq_lens, 0.1, None, "auto",
                  cache.k_scale, cache.v_scale, None)  # fmt: skip
        parts = -(-context // 512)
        stats = torch.empty(2, num_seqs, 32, parts)
        tmp = torch.empty(num_seqs, 32, parts, 128, dtype=torch.bfloat16)
        calls[f"paged v1 {num_seqs}x{context}"] = functools.partial(paged_kernels.paged_attention_v1, out, *common)
        calls[f"paged v2 {num_seqs}x{context}"] = functools.partial(
            paged_kernels.paged_attention_v2, out, stats[0], stats[1], tmp, *common
        )
    for rows, width in ((1, 8192), (1, 32768), (128, 131072)):
        logits = torch.randn(rows, width)
        lens = torch.full((rows,), width, dtype=torch.int32)
        out = torch.empty(rows, 2048, dtype=torch.int32)
        calls[f"top-k decode {rows}x{width}"] = functools.partial(
            topk_kernels.top_k_per_row_decode, logits, 1, lens, out, rows, width, 1, 2048
        )
    prefix, suffix = torch.randn(2, 512, 32, 128, dtype=torch.bfloat16)
    lse = torch.randn(3, 32, 512)
    merged = torch.empty_like(prefix)
    calls["merge 512"] = functools.partial(
        merge_kernels.merge_attn_states, merged, prefix, lse[0], suffix, lse[1], lse[2], None, None
    )
    return calls


def main() -> None:
    _stand_ins()
    _public_as_on_cuda()
    calls = {**cases(), **public_cases()}
    if len(sys.argv) > 1:
        call = calls[sys.argv[1]]
        profiler = cProfile.Profile()
        profiler.runcall(lambda: [call() for _ in range(3000)])
        pstats.Stats(profiler).sort_stats("tottime").print_stats(20)
        return
    for name, call in calls.items():
        call()
        print(f"{name}: {timeit.timeit(call, number=5000) / 5000 * 1e6:.1f} us per call", flush=True)


if __name__ == "__main__":
    main()
