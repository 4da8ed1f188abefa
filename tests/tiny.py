"""Tiny random transformers for tests that compare two ways of computing the same thing."""

from __future__ import annotations

import torch

from genforge.model.config import ModelConfig
from genforge.model.transformer import Transformer


def random_transformer(cfg: ModelConfig, seed: int = 0) -> Transformer:
    """`cfg`'s model with its matrices drawn at gain 2 (the embedding as initialised), so that
    logits depend on every layer and the whole context: a default-initialised tiny model with tied
    embeddings mostly repeats its last input token, and equal outputs would then prove little."""
    torch.manual_seed(seed)
    model = Transformer(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2 and name != "tok_emb.weight":
                p.normal_(0, 2 / p.shape[1] ** 0.5)
    return model
