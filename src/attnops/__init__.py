"""attnops: vLLM's attention-stage ops in Triton and portable PyTorch."""

__version__ = "0.1.0"
