"""Shared fixtures of the generation tests."""

import pytest
from tiny import random_transformer

from genforge.model.config import ModelConfig


@pytest.fixture(scope="module")
def random_model():
    """Weights drawn with gain 2 and an untied output, so that the next token depends on the whole
    context: a default-initialised tiny model with tied embeddings just repeats its last input
    token, and then equal outputs would prove nothing."""
    cfg = ModelConfig(
        vocab_size=256,
        dim=64,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        hidden_dim=128,
        max_seq_len=256,
        tie_embeddings=False,
        sliding_window=8,
        layer_types=("sliding", "full"),
    )
    return random_transformer(cfg).eval()
