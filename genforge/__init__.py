"""genforge: local-first generative AI — load, train, adapt and serve open-weight models.

import genforge
m = genforge.load("smollm2-135m-instruct")
print(m.chat("Name the capital of France."))

Importing genforge changes nothing in the process (no environment variables); see docs/engine.md
for the OpenMP setting a program that generates should make before it imports torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0"


if TYPE_CHECKING:
    from genforge.generate.llm import LLM


def load(model: str | None = None, **kwargs) -> LLM:
    """Load a named model (pulled on first use), a .gguf file or a Hugging Face model folder."""
    from genforge.generate.llm import load as _load  # torch is imported only when needed

    return _load(model, **kwargs) if model else _load(**kwargs)


__all__ = ["load", "__version__"]
