"""The README's Python examples run as written and give what they claim."""

import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_examples_run():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert len(blocks) == 2
    namespace: dict = {}
    exec(blocks[0], namespace)
    torch.testing.assert_close(namespace["out"], namespace["out2"])
    assert namespace["lse"].shape == (32, 3)
    exec(blocks[1], namespace)
    assert namespace["out"].shape == (1, 8, 4096, 64)
    assert torch.isfinite(namespace["out"]).all()
