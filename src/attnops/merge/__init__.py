"""Merging of partial attention results by log-sum-exp (vLLM's ``merge_attn_states``)."""

from attnops._common.backend import triton_available
from attnops.merge.api import merge_attn_states

if triton_available():
    # Registers the "triton" backend on the op's dispatcher.
    from attnops.merge import triton as _triton  # noqa: F401

__all__ = ["merge_attn_states"]
