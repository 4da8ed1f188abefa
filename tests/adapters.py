"""Untrained LoRA adapters for tests: random B (seeded), written as `genforge finetune` writes them."""

from __future__ import annotations

import torch

from genforge.model import lora
from genforge.model.config import ModelConfig
from genforge.model.transformer import Transformer
from genforge.weights import peft

RANK, ALPHA = 8, 16.0
STD = 0.08  # of B: changes SmolLM2's answers within a few tokens, keeps them English


def make_adapter(folder, cfg: ModelConfig, seed: int, std: float = STD):
    """A peft adapter folder for a model of `cfg`, on all seven linear layers."""
    with torch.device("meta"):  # the structure only: add_lora puts the adapters on the CPU
        net = Transformer(cfg)
    with torch.random.fork_rng():
        torch.manual_seed(seed)  # A's Kaiming start
        lora.add_lora(net, lora.TARGETS, RANK, ALPHA)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, m in lora.lora_modules(net):
            m.lora_b["default"].normal_(0, std, generator=g)
    folder.mkdir(parents=True)
    targets = tuple(peft.hf_target(t, cfg) for t in lora.TARGETS)
    peft.write_adapter(folder, lora.lora_state(net), cfg, peft.AdapterConfig(RANK, ALPHA, targets))
    return folder
