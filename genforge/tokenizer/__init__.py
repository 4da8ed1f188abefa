"""Tokenizers for genforge models: text <-> token ids, chat templates and streaming decode.

Built on Hugging Face `tokenizers`; a GGUF file's tokenizer is rebuilt from its metadata. This
package never imports torch, so the CLI and server can tokenize without loading a model.
"""

from genforge.tokenizer.chat import render_chat_template
from genforge.tokenizer.core import StreamDecoder, Tokenizer

__all__ = ["StreamDecoder", "Tokenizer", "render_chat_template"]
