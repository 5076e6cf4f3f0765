"""Merging of partial attention results by log-sum-exp (vLLM's ``merge_attn_states``)."""

from attnops.merge.api import merge_attn_states

__all__ = ["merge_attn_states"]
