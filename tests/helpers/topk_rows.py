"""Row lengths of top-k decode calls, as the tests spell them (lists, not tensors)."""

from __future__ import annotations


def decode_lengths(seq_lens, next_n, num_rows):
    if isinstance(seq_lens[0], list):
        flat = [n for row in seq_lens for n in row]
        return [max(0, flat[r]) for r in range(num_rows)]
    return [max(0, seq_lens[r // next_n] - next_n + r % next_n + 1) for r in range(num_rows)]
