"""Registration of ops as ``torch.library`` custom ops (``torch.ops.attnops.*``).

:func:`register_op` turns an eager implementation into a custom op with a
fake (meta) implementation, so ``torch.compile(fullgraph=True)`` traces it
and CUDA graphs capture it. The returned public function calls the eager
implementation directly outside of compilation: the custom-op dispatcher
costs several microseconds of host time a call, which a decode loop run
eagerly should not pay.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import torch

F = TypeVar("F", bound=Callable[..., Any])

LIBRARY = "attnops"


def register_op(name: str, *, mutates_args: Iterable[str], fake: Callable[..., Any]) -> Callable[[F], F]:
    """Register ``impl`` as ``torch.ops.attnops.<name>`` and return its public wrapper.

    ``impl``'s type hints give the op schema. ``fake`` takes the same
    arguments, validates metadata and returns outputs of the right shape
    (or ``None`` for ops that only write their arguments in place).
    """

    def decorate(impl: F) -> F:
        op = torch.library.custom_op(f"{LIBRARY}::{name}", impl, mutates_args=tuple(mutates_args))
        op.register_fake(fake)
        signature = inspect.signature(impl)

        @functools.wraps(impl)
        def public(*args: Any, **kwargs: Any) -> Any:
            if torch.compiler.is_compiling():
                # Every argument is passed explicitly: PyTorch 2.11 fails on a mutable argument
                # (e.g. merge's output_lse) left to its default.
                bound = signature.bind(*args, **kwargs)
                bound.apply_defaults()
                return op(*bound.args, **bound.kwargs)
            return impl(*args, **kwargs)

        public.custom_op = op  # type: ignore[attr-defined]
        return public  # type: ignore[return-value]

    return decorate
