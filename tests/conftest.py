"""Shared fixtures: the real embedded models, pulled into the genforge cache on first use."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach for a model hub

# Under CI, a skip for a missing component fails (the hooks of tests/components.py).
from components import (  # noqa: E402, F401
    pytest_make_collect_report,
    pytest_runtest_makereport,
    require_module,
)

from genforge import hub  # noqa: E402


def pytest_configure(config):
    """Under pytest-xdist (`make test` runs two workers), each worker gets its share of the cores,
    for its own torch and for the servers and CLIs its tests start (OMP_NUM_THREADS): two workers
    of two threads each on two cores oversubscribe them, and OpenMP threads that spin while
    waiting made the suite twice as slow."""
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if workers:
        import torch

        share = max(1, len(os.sched_getaffinity(0)) // int(workers))
        os.environ["OMP_NUM_THREADS"] = str(share)
        torch.set_num_threads(share)


def _model_file(name: str):
    return hub.resolve(name)  # pulls (and verifies) the model if the cache lacks it


@pytest.fixture(scope="session")
def smollm2_path():
    return _model_file("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def qwen_path():
    return _model_file("qwen2.5-coder-0.5b-instruct")


@pytest.fixture(scope="session")
def gemma_path():
    return _model_file("gemma3-270m")


@pytest.fixture(scope="session")
def smollm2(smollm2_path):
    import genforge

    # compared with transformers: float32 weights and a float32 KV cache (fp16 keys would round
    # float32-sized differences between batchings up to fp16 steps)
    return genforge.load(str(smollm2_path), dtype="fp32", kv_dtype="fp32")


@pytest.fixture(scope="session")
def tokenizer_pair(request):
    """name -> (our tokenizer, transformers' tokenizer) for that real GGUF file, built once."""
    from genforge.tokenizer import Tokenizer
    from genforge.weights.gguf import read_gguf

    transformers = require_module("transformers")
    built = {}

    def pair(name: str):
        if name not in built:
            path = request.getfixturevalue(f"{name}_path")
            ours = Tokenizer.from_gguf_metadata(read_gguf(path).metadata)
            theirs = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
            built[name] = (ours, theirs)
        return built[name]

    return pair


@pytest.fixture(scope="session")
def hf_smollm2(smollm2_path):
    """transformers' own GGUF loader on the same file (dequantized to fp32)."""
    import torch

    transformers = require_module("transformers")
    model = transformers.AutoModelForCausalLM.from_pretrained(
        smollm2_path.parent, gguf_file=smollm2_path.name, dtype=torch.float32
    )
    return model.eval()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A Hugging Face-style folder: random 2-layer llama, a tokenizer trained here, no chat template."""
    import json

    import torch
    from safetensors.torch import save_file
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from genforge.model.config import ModelConfig
    from genforge.model.transformer import Transformer
    from genforge.weights.names import HF_NAMES, expand

    path = tmp_path_factory.mktemp("tiny-model")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(
        ["hello world, this is a tiny corpus for a tiny tokenizer"] * 20, trainer
    )
    tok.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|endoftext|>"}))
    cfg = ModelConfig(
        vocab_size=tok.get_vocab_size(),
        dim=32,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        hidden_dim=64,
        max_seq_len=64,
    )
    torch.manual_seed(0)
    model = Transformer(cfg)
    ours_to_hf = {v: k for k, v in expand(HF_NAMES["llama"], cfg.n_layers).items()}
    save_file(
        {ours_to_hf[k]: v.contiguous() for k, v in model.state_dict().items()},
        str(path / "model.safetensors"),
    )
    (path / "config.json").write_text(
        json.dumps(
            {
                "model_type": "llama",
                "vocab_size": cfg.vocab_size,
                "hidden_size": 32,
                "num_hidden_layers": 2,
                "num_attention_heads": 4,
                "num_key_value_heads": 2,
                "intermediate_size": 64,
                "max_position_embeddings": 64,
                "tie_word_embeddings": True,
            }
        )
    )
    return path


@contextmanager
def _fed_fifo(path: Path) -> Iterator[Path]:
    os.mkfifo(path)
    writer = threading.Thread(target=path.write_text, args=("fed through a pipe\n",))
    writer.start()
    try:
        yield path
    finally:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # lets a writer still waiting finish
        writer.join()
        os.close(fd)
        path.unlink()


@pytest.fixture
def fifo():
    """`with fifo(path):` a FIFO at `path` (removed after the block) with a writer waiting on it:
    code that wrongly opens it reads a line, and the test fails on that, instead of hanging."""
    return _fed_fifo
