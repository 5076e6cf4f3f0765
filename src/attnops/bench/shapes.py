"""The benchmark grid of SPEC §3 and its CPU-sized ``--quick`` subset.

Each shape is a frozen dataclass that knows its label (for tables) and the
bytes an ideal kernel moves for it (``bytes_moved``: what the bandwidth
figures divide by). Dtypes are stored by name so that shapes serialise to
JSON as they are.
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass

import torch

OPS = ("paged_attention", "merge", "topk", "vertical_slash", "sparse_prefill", "cache")

_INT32 = 4
_FP32 = 4


def _element_size(dtype: str) -> int:
    return torch.empty((), dtype=getattr(torch, dtype)).element_size()


@dataclass(frozen=True)
class DecodeShape:
    """Paged decode: one query token per sequence, every sequence ``context`` tokens long."""

    num_seqs: int
    context: int
    num_heads: int = 32
    num_kv_heads: int = 8
    head_size: int = 128
    block_size: int = 16
    dtype: str = "bfloat16"

    @property
    def label(self) -> str:
        return f"seqs={self.num_seqs} ctx={self.context}"

    def bytes_moved(self) -> int:
        """K and V of every used token read, plus the query read and the output written."""
        elem = _element_size(self.dtype)
        kv = 2 * self.num_seqs * self.context * self.num_kv_heads * self.head_size * elem
        q_out = 2 * self.num_seqs * self.num_heads * self.head_size * elem
        return kv + q_out


@dataclass(frozen=True)
class MergeShape:
    """Merge of two partial attention results over ``num_tokens`` tokens."""

    num_tokens: int
    num_heads: int = 32
    head_size: int = 128
    dtype: str = "bfloat16"
    with_output_lse: bool = False

    @property
    def label(self) -> str:
        return f"tokens={self.num_tokens}"

    def bytes_moved(self) -> int:
        """Both partial outputs and both fp32 LSEs read, the output (and merged LSE if asked) written."""
        out = self.num_tokens * self.num_heads * self.head_size * _element_size(self.dtype)
        lse = self.num_tokens * self.num_heads * _FP32
        return 3 * out + 2 * lse + (lse if self.with_output_lse else 0)


@dataclass(frozen=True)
class TopKShape:
    """Per-row top-k over fp32 logits ``[num_rows, length]``.

    ``decode``: one row per sequence (``next_n`` = 1), every sequence
    ``length`` long. ``prefill``: the rows are the last ``num_rows`` query
    tokens of a causal prefill of ``length`` tokens, row r covering columns
    ``[0, length - num_rows + r + 1)``.
    """

    mode: str
    num_rows: int
    length: int
    k: int = 2048

    @property
    def label(self) -> str:
        return f"{self.mode} rows={self.num_rows} len={self.length}"

    def row_lengths(self) -> list[int]:
        if self.mode == "decode":
            return [self.length] * self.num_rows
        first = self.length - self.num_rows + 1
        return list(range(first, first + self.num_rows))

    def bytes_moved(self) -> int:
        """The valid logits of every row, read once."""
        return sum(self.row_lengths()) * _FP32


@dataclass(frozen=True)
class VerticalSlashShape:
    """MInference vertical/slash index conversion for one causal prefill of ``context`` tokens."""

    context: int
    batch: int = 1
    num_heads: int = 32
    block_size_m: int = 64
    block_size_n: int = 64
    nnz_vertical: int = 1000
    nnz_slash: int = 6096

    @property
    def label(self) -> str:
        return f"ctx={self.context} v={self.nnz_vertical} s={self.nnz_slash}"

    @property
    def num_row_blocks(self) -> int:
        return -(-self.context // self.block_size_m)

    def bytes_moved(self) -> int:
        """The index lists read and the four lookup tables written in full."""
        heads = self.batch * self.num_heads
        inputs = heads * (self.nnz_vertical + self.nnz_slash) * _INT32
        tables = heads * self.num_row_blocks * (2 + self.nnz_vertical + self.nnz_slash) * _INT32
        return inputs + tables


@dataclass(frozen=True)
class SparsePrefillShape:
    """Block-sparse (vertical/slash) causal prefill attention over ``context`` tokens."""

    context: int
    batch: int = 1
    num_heads: int = 32
    head_size: int = 128
    block_size_m: int = 64
    block_size_n: int = 64
    nnz_vertical: int = 1000
    nnz_slash: int = 6096
    dtype: str = "bfloat16"

    @property
    def label(self) -> str:
        return f"ctx={self.context} heads={self.num_heads} v={self.nnz_vertical} s={self.nnz_slash}"

    def index_shape(self) -> VerticalSlashShape:
        """The conversion that produces this prefill's lookup tables."""
        return VerticalSlashShape(
            self.context,
            self.batch,
            self.num_heads,
            self.block_size_m,
            self.block_size_n,
            self.nnz_vertical,
            self.nnz_slash,
        )

    def bytes_moved(self) -> int:
        """q, k and v read once and the output written once (the compulsory traffic)."""
        return 4 * self.batch * self.num_heads * self.context * self.head_size * _element_size(self.dtype)


@dataclass(frozen=True)
class CacheShape:
    """``reshape_and_cache`` of ``num_tokens`` new tokens (a decode step's batch or a prefill chunk)
    into slots scattered over a paged cache."""

    num_tokens: int
    num_kv_heads: int = 8
    head_size: int = 128
    block_size: int = 16
    dtype: str = "bfloat16"
    kv_cache_dtype: str = "auto"

    @property
    def label(self) -> str:
        return f"tokens={self.num_tokens} {self.kv_cache_dtype}"

    def bytes_moved(self) -> int:
        """Keys, values and slots read; keys and values written in the cache's element size."""
        elements = 2 * self.num_tokens * self.num_kv_heads * self.head_size
        stored = 1 if self.kv_cache_dtype != "auto" else _element_size(self.dtype)
        return elements * (_element_size(self.dtype) + stored) + self.num_tokens * 8


Shape = DecodeShape | MergeShape | TopKShape | VerticalSlashShape | SparsePrefillShape | CacheShape

_FULL: dict[str, tuple[Shape, ...]] = {
    "paged_attention": tuple(DecodeShape(n, c) for n, c in itertools.product((1, 8, 32, 128), (1024, 4096, 16384))),
    "merge": tuple(MergeShape(t) for t in (512, 4096, 32768)),
    "topk": (
        *(TopKShape("decode", r, n) for r, n in itertools.product((1, 32, 128), (8192, 32768, 131072))),
        *(TopKShape("prefill", 4096, n) for n in (8192, 32768)),
    ),
    "vertical_slash": tuple(VerticalSlashShape(c) for c in (32768, 131072)),
    "sparse_prefill": tuple(SparsePrefillShape(c) for c in (8192, 32768, 131072)),
    "cache": (*(CacheShape(t) for t in (256, 4096, 32768)), CacheShape(4096, kv_cache_dtype="fp8_e4m3")),
}

_QUICK: dict[str, tuple[Shape, ...]] = {
    "paged_attention": tuple(DecodeShape(n, c) for n, c in itertools.product((1, 8), (1024, 4096))),
    "merge": tuple(MergeShape(t) for t in (512, 4096)),
    "topk": (
        *(TopKShape("decode", r, n) for r, n in itertools.product((1, 32), (8192, 32768))),
        TopKShape("prefill", 1024, 8192),
    ),
    "vertical_slash": tuple(VerticalSlashShape(c) for c in (8192, 32768)),
    "sparse_prefill": (SparsePrefillShape(2048, num_heads=8, nnz_vertical=256, nnz_slash=512),),
    "cache": (CacheShape(256), CacheShape(256, kv_cache_dtype="fp8_e4m3")),
}


def grid(op: str, *, quick: bool = False) -> tuple[Shape, ...]:
    """The benchmark shapes of ``op`` (one of :data:`OPS`)."""
    if op not in OPS:
        raise ValueError(f"op: expected one of {OPS}, got {op!r}")
    return (_QUICK if quick else _FULL)[op]


def shape_params(shape: Shape) -> dict[str, object]:
    """The shape's fields as a JSON-ready dict."""
    return dataclasses.asdict(shape)
