"""Exported models give the same logits and token ids in transformers, llama.cpp and genforge."""

import os
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest
import torch
from components import require_module

from genforge.cli import main
from genforge.errors import GenforgeError
from genforge.model.config import ModelConfig
from genforge.model.transformer import Transformer
from genforge.tokenizer import Tokenizer, bpe
from genforge.train import checkpoint
from genforge.train.export import export
from genforge.weights.export import write_gguf, write_hf
from genforge.weights.gguf import read_gguf
from genforge.weights.load import build_model, load_gguf, load_hf_dir

CORPUS = [f"def add_{i}(a, b):\n    return a + b * {i}  # sum\n" for i in range(150)] + [
    f"The quick brown fox, {i} times, jumps over the lazy dog; café naïve 東京 {i % 7}.\n"
    for i in range(150)
]
TEXTS = [
    "def add_3(a, b):\n    return a - b\t# not a sum\n\n",
    "<|im_start|>user\nThe lazy dog? 東京!<|im_end|>\n<|im_start|>assistant\n",
    "  leading spaces,   runs   of spaces, 12345 digits, émoji 🦊 and <|endoftext|>",
]


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    return bpe.save(bpe.train_bpe(CORPUS, 400), tmp_path_factory.mktemp("export") / "tok")


def _model(vocab_size: int, arch: str = "llama", seed: int = 0) -> Transformer:
    """A random 2-layer model with grouped-query attention and non-trivial norms (and biases)."""
    qwen2 = arch == "qwen2"
    cfg = ModelConfig(
        arch=arch,
        vocab_size=vocab_size,
        dim=64,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        hidden_dim=128,
        max_seq_len=256,
        rope_theta=5000.0,
        qkv_bias=qwen2,
        tie_embeddings=not qwen2,
    )
    torch.manual_seed(seed)
    model = Transformer(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_(1.0, 0.3)
            else:
                p.normal_(0.0, 0.3 if name.endswith("bias") else 0.05)
    return model


def _ids(tokenizer_dir) -> list[int]:
    return Tokenizer.from_dir(tokenizer_dir).encode("".join(TEXTS))


def _logits(model: Transformer, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([ids]))[0]  # (T, vocab)


def test_hf_export_loads_in_transformers(tokenizer_dir, tmp_path):
    transformers = require_module("transformers")
    ours = Tokenizer.from_dir(tokenizer_dir)
    model = _model(ours.vocab_size)
    out = write_hf(model.state_dict(), model.cfg, tokenizer_dir, tmp_path / "hf")
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    for text in TEXTS:
        assert hf_tok(text)["input_ids"] == ours.encode(text), text
        assert hf_tok.decode(ours.encode(text)) == text
    ids = _ids(tokenizer_dir)
    with torch.no_grad():
        theirs = hf(torch.tensor([ids])).logits[0]
    torch.testing.assert_close(theirs, _logits(model, ids), rtol=1e-4, atol=1e-4)
    assert hf.config.eos_token_id == ours.encode("<|endoftext|>")[0]


@pytest.fixture
def llama_cpp(monkeypatch):
    """llama-cpp-python with weight repacking off (its AMX path crashes on some CPUs)."""
    llama_cpp = require_module("llama_cpp", "llama-cpp")
    lib = llama_cpp.llama_cpp
    default_params = lib.llama_model_default_params

    def without_repack():
        params = default_params()
        params.use_extra_bufts = False
        return params

    monkeypatch.setattr(lib, "llama_model_default_params", without_repack)
    return llama_cpp


@pytest.mark.parametrize("arch,padding", [("llama", 0), ("qwen2", 0), ("llama", 8)])
def test_gguf_export_runs_in_llama_cpp(arch, padding, tokenizer_dir, tmp_path, llama_cpp):
    ours = Tokenizer.from_dir(tokenizer_dir)
    model = _model(ours.vocab_size + padding, arch)  # padding: embedding rows with no token
    path = write_gguf(model.state_dict(), model.cfg, tokenizer_dir, tmp_path / "m.gguf")
    llm = llama_cpp.Llama(str(path), n_ctx=256, n_threads=2, logits_all=True, verbose=False)
    try:
        for text in TEXTS:
            assert llm.tokenize(text.encode(), add_bos=False, special=True) == ours.encode(text)
        assert llm.token_eos() == llm.token_bos() == ours.encode("<|endoftext|>")[0]
        assert llm.n_vocab() == model.cfg.vocab_size
        assert llm.metadata["tokenizer.chat_template"] == ours.chat_template
        ids = _ids(tokenizer_dir)
        llm.eval(ids)
        theirs = torch.from_numpy(np.array(llm.scores[: len(ids)]))
    finally:
        llm.close()
    # llama.cpp's f32 kernels sum in another order; a wrong Q/K layout is off by ~0.2.
    torch.testing.assert_close(theirs, _logits(model, ids), rtol=1e-3, atol=3e-3)


@pytest.mark.parametrize(
    "arch,dtype", [("llama", "f32"), ("qwen2", "f32"), ("llama", "f16"), ("llama", "bf16")]
)
def test_gguf_export_round_trips_through_genforge(arch, dtype, tokenizer_dir, tmp_path):
    ours = Tokenizer.from_dir(tokenizer_dir)
    model = _model(ours.vocab_size, arch)
    path = write_gguf(model.state_dict(), model.cfg, tokenizer_dir, tmp_path / "m.gguf", dtype)
    ckpt = load_gguf(path)
    assert ckpt.config.norm_eps == pytest.approx(model.cfg.norm_eps, rel=1e-7)  # GGUF holds f32
    assert replace(ckpt.config, norm_eps=model.cfg.norm_eps) == model.cfg
    assert ckpt.quantization == {"f32": "ALL_F32", "f16": "F16", "bf16": "BF16"}[dtype]
    cast = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}[dtype]
    state = model.state_dict()
    assert set(ckpt.state) == set(state)
    for name, w in state.items():
        expected = w if w.dim() == 1 else w.to(cast).float()  # norms and biases stay f32
        assert torch.equal(ckpt.state[name], expected), name
    if dtype == "f32":
        ids = _ids(tokenizer_dir)
        got = _logits(build_model(ckpt), ids)
        torch.testing.assert_close(got, _logits(model, ids), rtol=1e-5, atol=1e-5)
    theirs = Tokenizer.from_gguf_metadata(ckpt.metadata)
    for text in TEXTS:
        assert theirs.encode(text) == ours.encode(text), text
    assert theirs.eos_ids == ours.eos_ids and not theirs.add_bos
    chat = [{"role": "user", "content": "hi"}]
    assert theirs.encode_chat(chat) == ours.encode_chat(chat)


def test_a_failed_gguf_export_leaves_the_earlier_file(tokenizer_dir, tmp_path):
    model = _model(Tokenizer.from_dir(tokenizer_dir).vocab_size)
    path = write_gguf(model.state_dict(), model.cfg, tokenizer_dir, tmp_path / "m.gguf")
    before = path.read_bytes()
    bad = {**model.state_dict(), "layers.0.attn.wx.weight": torch.zeros(2, 2)}
    with pytest.raises(GenforgeError, match="no GGUF name"):
        write_gguf(bad, model.cfg, tokenizer_dir, path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf"]  # no temporary file left


def test_gguf_export_refuses_a_tokenizer_it_cannot_describe(tokenizer_dir, tmp_path):
    import json
    import shutil

    other = shutil.copytree(tokenizer_dir, tmp_path / "tok")
    spec = json.loads((other / "tokenizer.json").read_text())
    spec["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [spec["pre_tokenizer"]]}
    (other / "tokenizer.json").write_text(json.dumps(spec))
    model = _model(Tokenizer.from_dir(tokenizer_dir).vocab_size)
    with pytest.raises(GenforgeError, match="not a plain byte-level BPE"):
        write_gguf(model.state_dict(), model.cfg, other, tmp_path / "m.gguf")


def _run(tmp_path, tokenizer_dir):
    """A training run folder with two checkpoints of different weights; returns (run, newest)."""
    run = tmp_path / "run"
    for step in (1, 2):
        model = _model(Tokenizer.from_dir(tokenizer_dir).vocab_size, seed=step)
        state = {"step": step, "model": asdict(model.cfg)}
        checkpoint.save(
            run,
            step,
            checkpoint.model_writer(model.state_dict(), model.cfg, tokenizer_dir),
            state,
            2,
        )
    return run, model


def test_cli_exports_the_newest_checkpoint_of_a_run(tokenizer_dir, tmp_path, capsys):
    run, newest = _run(tmp_path, tokenizer_dir)
    expected = newest.state_dict()
    assert main(["export", str(run), "--format", "gguf", "--out", str(tmp_path / "m.gguf")]) == 0
    assert "step_0000002" in capsys.readouterr().out
    got = load_gguf(tmp_path / "m.gguf").state
    assert all(torch.equal(got[k], v) for k, v in expected.items())
    assert read_gguf(tmp_path / "m.gguf").metadata["general.name"] == "m"

    out = tmp_path / "hf"
    assert main(["export", str(run), "--format", "hf", "--out", str(out), "--dtype", "bf16"]) == 0
    assert not (out / checkpoint.STATE).exists()  # the training state stays behind
    got = load_hf_dir(out)
    assert got.quantization == "BF16"
    assert all(torch.equal(got.state[k], v.to(torch.bfloat16).float()) for k, v in expected.items())
    assert main(["export", str(run), "--format", "hf", "--out", str(out)]) == 0  # replaces it
    assert load_hf_dir(out).quantization == "F32"


def test_exported_files_get_the_mode_the_umask_gives(tokenizer_dir, tmp_path, capsys):
    run, _ = _run(tmp_path, tokenizer_dir)
    copied = Path(tokenizer_dir) / "tokenizer.json"
    mode = copied.stat().st_mode
    copied.chmod(0o600)  # a copied file does not keep its mode either
    previous = os.umask(0o027)
    try:
        assert main(["export", str(run), "--format", "hf", "--out", str(tmp_path / "hf")]) == 0
        assert (
            main(["export", str(run), "--format", "gguf", "--out", str(tmp_path / "m.gguf")]) == 0
        )
    finally:
        os.umask(previous)
        copied.chmod(mode)
    files = [*(tmp_path / "hf").iterdir(), tmp_path / "m.gguf"]
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= {f.name for f in files}
    assert {f.name: oct(f.stat().st_mode & 0o777) for f in files} == {
        f.name: oct(0o640) for f in files
    }


def test_bad_export_requests_are_one_line_errors(tokenizer_dir, tmp_path, capsys):
    run, _ = _run(tmp_path, tokenizer_dir)
    (tmp_path / "empty-run" / "checkpoints").mkdir(parents=True)
    (tmp_path / "notes.txt").write_text("keep me")
    (tmp_path / "stuff").mkdir()
    (tmp_path / "stuff" / "a.txt").write_text("keep me")
    newest = checkpoint.latest(run)
    cases = [
        ([str(tmp_path / "nope"), "--format", "hf", "--out", "x"], "does not exist"),
        ([str(tmp_path / "stuff"), "--format", "hf", "--out", "x"], "neither a training run"),
        ([str(tmp_path / "empty-run"), "--format", "hf", "--out", "x"], "without checkpoints"),
        ([str(run), "--format", "hf", "--out", str(tmp_path / "notes.txt")], "is a file"),
        ([str(run), "--format", "hf", "--out", str(tmp_path / "stuff")], "not a model folder"),
        ([str(run), "--format", "gguf", "--out", str(tmp_path / "stuff")], "is a folder"),
        ([str(run), "--format", "gguf", "--out", str(tmp_path / "notes.txt")], "not a GGUF file"),
        ([str(run), "--format", "hf", "--out", str(newest)], "training checkpoint"),
    ]
    for args, message in cases:
        assert main(["export", *args]) == 1, args
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, (args, err)
    assert (tmp_path / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in (tmp_path / "stuff").iterdir()) == ["a.txt"]
    assert (newest / checkpoint.STATE).is_file()
    with pytest.raises(GenforgeError, match="--format must be"):
        export(run, "onnx", tmp_path / "m.onnx")
    with pytest.raises(GenforgeError, match="--dtype must be"):
        export(run, "gguf", tmp_path / "m.gguf", "q4")
