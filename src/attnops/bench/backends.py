"""Which backends each op has, found on the op families' dispatchers.

Every op family's ``api`` module holds one :class:`Dispatcher` per op. A
Triton kernel registers itself on that dispatcher, so reading
``dispatcher.impls`` here makes ``check`` and ``bench`` cover new backends
without any change to this package.
"""

from __future__ import annotations

import importlib

import torch

from attnops._common.backend import Dispatcher


def dispatchers(family: str) -> dict[str, Dispatcher]:
    """The dispatchers of ``attnops.<family>``, keyed by op name."""
    importlib.import_module(f"attnops.{family}")  # kernels register when the package imports
    api = importlib.import_module(f"attnops.{family}.api")
    return {d.op: d for d in vars(api).values() if isinstance(d, Dispatcher)}


def runnable_backends(family: str, op: str, device: torch.device) -> list[str]:
    """The backends of ``op`` that can run on ``device`` in this process ("torch" first)."""
    dispatcher = dispatchers(family).get(op)
    if dispatcher is None:
        return ["torch"]
    names = []
    for name in dispatcher.impls:
        try:
            dispatcher.select(name, device)
        except ValueError:
            continue
        names.append(name)
    return sorted(names, key=lambda n: n != "torch")
