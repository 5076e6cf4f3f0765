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
import typing
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import torch

F = TypeVar("F", bound=Callable[..., Any])

LIBRARY = "attnops"


def register_op(
    name: str,
    *,
    mutates_args: Iterable[str],
    validate: Callable[..., Any],
    outputs: Callable[..., Any] | None = None,
) -> Callable[[F], F]:
    """Register ``impl`` as ``torch.ops.attnops.<name>`` and return its public wrapper.

    ``impl``'s type hints give the op schema. The fake implementation runs
    ``validate`` and returns ``outputs(...)`` (``None`` for ops that only write
    their arguments in place); both are called with the op's arguments *by
    name*, each receiving only the parameters it declares.
    """

    def decorate(impl: F) -> F:
        mutated = tuple(mutates_args)
        signature = inspect.signature(impl)
        op = torch.library.custom_op(f"{LIBRARY}::{name}", _schema_function(impl, mutated), mutates_args=mutated)

        def fake(*args: Any, **kwargs: Any) -> Any:
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            _call_by_name(validate, bound.arguments)
            return None if outputs is None else _call_by_name(outputs, bound.arguments)

        op.register_fake(fake)

        @functools.wraps(impl)
        def public(*args: Any, **kwargs: Any) -> Any:
            if torch.compiler.is_compiling():
                bound = signature.bind(*args, **kwargs)
                bound.apply_defaults()
                return op(*bound.args, **bound.kwargs)
            return impl(*args, **kwargs)

        public.custom_op = op  # type: ignore[attr-defined]
        return public  # type: ignore[return-value]

    return decorate


def _call_by_name(fn: Callable[..., Any], arguments: dict[str, Any]) -> Any:
    """``fn`` called with the entries of ``arguments`` that it has parameters for."""
    names = inspect.signature(fn).parameters
    return fn(**{key: value for key, value in arguments.items() if key in names})


def _schema_function(impl: Callable[..., Any], mutated: tuple[str, ...]) -> Callable[..., Any]:
    """``impl`` with a signature whose mutated arguments (and those before them) have no default.

    PyTorch (2.11 at least) drops trailing arguments equal to their schema default when it
    re-dispatches a call, then fails to find a mutable argument such as merge's ``output_lse``
    (``IndexError``). Without a default in the schema the argument is always passed; the public
    function supplies vLLM's defaults.
    """
    hints = typing.get_type_hints(impl)
    params = list(inspect.signature(impl).parameters.values())
    last = max((i for i, p in enumerate(params) if p.name in mutated), default=-1)
    params = [
        p.replace(annotation=hints[p.name], default=inspect.Parameter.empty if i <= last else p.default)
        for i, p in enumerate(params)
    ]

    def schema_function(*args: Any, **kwargs: Any) -> Any:
        return impl(*args, **kwargs)

    schema_function.__name__ = impl.__name__
    returns = None if hints["return"] is type(None) else hints["return"]
    schema_function.__signature__ = inspect.Signature(params, return_annotation=returns)  # type: ignore[attr-defined]
    return schema_function
