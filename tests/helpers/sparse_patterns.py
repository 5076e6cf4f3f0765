"""Random vertical/slash patterns for the conversion tests (reference and Triton)."""

from __future__ import annotations


def random_case(rng, *, causal, mergehead, M, N, context, batch=2, heads=3, nnz_v=6, nnz_s=9, diagonal=False):
    """Ragged q/kv lengths; slashes mix near-diagonal and far offsets so gaps around M and 2M occur."""
    q = [rng.randint(0, context) for _ in range(batch)]
    q[0] = context
    kv = [n + rng.randint(0, 3 * M) for n in q] if causal else [rng.randint(1, 3 * context) for _ in q]
    vertical, slash = [], []
    for b in range(batch):
        v_hi = (context + 2 * M) if causal else kv[b]
        vertical.append([sorted(rng.randrange(v_hi) for _ in range(nnz_v)) for _ in range(heads)])
        per_head = []
        for _ in range(heads):
            values = [rng.choice([rng.randint(0, 3 * M), rng.randint(0, context + 2 * M)]) for _ in range(nnz_s)]
            if diagonal:
                values[0] = 0
            per_head.append(sorted(values, reverse=True))
        slash.append(per_head)
    nv = [rng.randint(1, nnz_v) for _ in range(heads)] if mergehead else None
    ns = [rng.randint(1, nnz_s) for _ in range(heads)] if mergehead else None
    return q, kv, vertical, slash, nv, ns, context, M, N, causal
