"""genforge's LoRA adapters are peft's: each side loads the other's and gives the same logits.

On the real SmolLM2-135M in float32. Its Hugging Face folder is genforge's own export of the GGUF
file's dequantized fp32 weights (`write_hf`), so transformers, peft and genforge all run the same
numbers. The genforge adapter is made by hand (`add_lora`, random B), not trained.

TOL, argued: the same fp32 weights on every side and fp32 arithmetic throughout, so only the
order of float sums differs (genforge fuses q/k/v and gate/up into one matmul each and runs its own
attention and norm kernels, transformers runs SDPA; a merged export sums W x + s B A x as one
matmul). Over 30 layers that noise reaches the logits (up to |44| here) as ~1e-4 absolute: against
the same peft model run in float64, peft's own fp32 logits are off by up to 9.7e-5, genforge's by
1.2e-4, the merged export's by 8.3e-5, so two correct fp32 paths can be ~2.4e-4 apart. Measured
pairwise maxima: 6.9e-5 to 8.6e-5 genforge vs peft, 1.1e-4 merged export vs peft (the base alone,
genforge vs transformers: 8.4e-5). TOL = 3e-4 absolute. A real fault moves the logits by far more:
the adapters here move them by ~2 (MIN_EFFECT checks that each comparison has an effect to get
wrong), rsLoRA read as plain LoRA by 0.9, and dropping one module's adapter by 0.01 to 0.2 (of
four tried, layers.0 k_proj the least): 30x TOL or more.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from components import require_module

import genforge
from genforge import compute
from genforge.cli import main
from genforge.errors import GenforgeError
from genforge.generate.loading import adapter_folder
from genforge.model import lora
from genforge.model.transformer import Transformer
from genforge.tokenizer import Tokenizer
from genforge.train.export import export
from genforge.weights import peft
from genforge.weights.export import write_hf
from genforge.weights.load import build_model, load_checkpoint

pytestmark = pytest.mark.slow
transformers = require_module("transformers")
hf_peft = require_module("peft")

TOL = 3e-4  # max |difference| of float32 logits, see the module docstring
# genforge's adapter on peft's transformers model vs genforge: the figure the adapter format is
# held to (measured 6.9e-5; one model's fp32 noise against another's, not a sum of three)
INTEROP_TOL = 1e-4
MIN_EFFECT = 0.1  # how far an adapter must move the logits for a comparison to mean anything
HF_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
PROMPTS = [
    "<|im_start|>user\nWhat is the capital of France? Answer in one word.<|im_end|>\n"
    "<|im_start|>assistant\n",
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n",
    "The quick brown fox jumps over the lazy dog. Café, naïve, 東京, 12345 and émoji 🦊.",
]
Logits = list[torch.Tensor]  # one (T, vocab) tensor per prompt


@pytest.fixture(scope="module")
def base(smollm2_path, tmp_path_factory):
    """The SmolLM2 base as a Hugging Face folder, the prompts' ids, and a genforge LoRA adapter
    (rank 8, alpha 16, every projection of every layer) with random A and B."""
    root = tmp_path_factory.mktemp("peft")
    ckpt = load_checkpoint(smollm2_path, torch.float32)
    tokenizer = Tokenizer.from_gguf_metadata(ckpt.metadata)
    tokenizer.save(root / "tokenizer")
    hf_dir = write_hf(ckpt.state, ckpt.config, root / "tokenizer", root / "hf")
    model = build_model(ckpt)
    ids = [tokenizer.encode(p) for p in PROMPTS]
    torch.manual_seed(0)  # A: add_lora's Kaiming-uniform init
    assert len(lora.add_lora(model, lora.TARGETS, rank=8, alpha=16)) == 7 * ckpt.config.n_layers
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for _, m in lora.lora_modules(model):
            b = m.lora_b[lora.DEFAULT_ADAPTER]
            b.copy_(torch.randn(b.shape, generator=g) * 0.01)
    adapter = root / "adapter"
    adapter.mkdir()
    config = peft.AdapterConfig(rank=8, alpha=16, targets=HF_TARGETS)
    peft.write_adapter(adapter, lora.lora_state(model), ckpt.config, config)
    lora.set_adapter(model, None)
    base_logits = _forward(model, ids)
    return {
        "cfg": ckpt.config,
        "hf_dir": hf_dir,
        "ids": ids,
        "adapter": adapter,
        "logits": base_logits,
    }


def _forward(model, ids: list[list[int]]) -> Logits:
    """Each prompt's logits, one sequence at a time (no padding), by genforge or transformers."""

    def run():
        with torch.inference_mode():
            out = [model(torch.tensor([seq])) for seq in ids]
        return [getattr(o, "logits", o)[0].float() for o in out]

    return compute.run(run)


def _hf_model(hf_dir: Path):
    model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    return model.eval()


def _genforge(smollm2_path, adapter: Path, ids) -> Logits:
    llm = genforge.load(str(smollm2_path), adapter=adapter, dtype="fp32", kv_dtype="fp32")
    return _forward(llm.model, ids)


def _max_diff(a: Logits, b: Logits) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(a, b, strict=True))


@pytest.fixture(scope="module")
def peft_logits(base) -> Logits:
    """peft's logits with genforge's adapter on transformers' model of the same base."""
    model = hf_peft.PeftModel.from_pretrained(_hf_model(base["hf_dir"]), base["adapter"])
    return _forward(model.eval(), base["ids"])


@pytest.fixture(scope="module")
def genforge_logits(base, smollm2_path) -> Logits:
    return _genforge(smollm2_path, base["adapter"], base["ids"])


def test_genforge_adapter_loads_in_peft(base, peft_logits, genforge_logits):
    effect = _max_diff(genforge_logits, base["logits"])
    diff = _max_diff(genforge_logits, peft_logits)
    print(f"genforge adapter: moves logits by {effect:.3f}; |genforge - peft| {diff:.2e}")
    assert effect > MIN_EFFECT
    assert diff <= INTEROP_TOL


@pytest.mark.parametrize("rslora", [False, True], ids=["lora", "rslora"])
def test_peft_adapter_loads_in_genforge(rslora, base, smollm2_path, tmp_path):
    torch.manual_seed(2)  # peft's Kaiming-uniform A
    config = hf_peft.LoraConfig(
        r=4, lora_alpha=8, target_modules=list(HF_TARGETS), use_rslora=rslora
    )
    model = hf_peft.get_peft_model(_hf_model(base["hf_dir"]), config)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.01)
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / peft.CONFIG).read_text())["use_rslora"] is rslora
    theirs = _forward(model.eval(), base["ids"])
    ours = _genforge(smollm2_path, tmp_path, base["ids"])
    # rsLoRA scales by alpha / sqrt(r) = 4 instead of alpha / r = 2: read as plain LoRA, genforge
    # would be off by about half the effect.
    effect = _max_diff(ours, base["logits"])
    diff = _max_diff(ours, theirs)
    print(f"peft adapter (rslora={rslora}): moves logits by {effect:.3f}; |diff| {diff:.2e}")
    assert effect > MIN_EFFECT
    assert diff <= TOL


def test_merged_hf_export_matches_peft(base, peft_logits, tmp_path):
    out = export("smollm2-135m-instruct", "hf", tmp_path / "hf", adapter=base["adapter"])
    merged = _forward(_hf_model(out), base["ids"])
    # W + (alpha / r) B A folded in float32 sums in another order than peft's W x + s B (A x).
    effect = _max_diff(merged, base["logits"])
    diff = _max_diff(merged, peft_logits)
    print(f"merged HF export: moves logits by {effect:.3f}; |transformers - peft| {diff:.2e}")
    assert effect > MIN_EFFECT
    assert diff <= TOL


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


GGML_TYPE_F32 = 0


def test_merged_gguf_export_runs_in_llama_cpp(base, genforge_logits, tmp_path, llama_cpp):
    path = export("smollm2-135m-instruct", "gguf", tmp_path / "m.gguf", adapter=base["adapter"])
    # Keys and values in f32 too: llama.cpp's default f16 cache rounds them, which over SmolLM2's
    # 30 layers moves the logits by up to 0.05 (measured), beyond the tolerance below.
    llm = llama_cpp.Llama(
        str(path),
        n_ctx=256,
        n_threads=2,
        logits_all=True,
        verbose=False,
        type_k=GGML_TYPE_F32,
        type_v=GGML_TYPE_F32,
    )
    theirs = []
    try:
        for text, ids in zip(PROMPTS, base["ids"], strict=True):
            assert llm.tokenize(text.encode(), add_bos=False, special=True) == ids
            llm.reset()
            llm.eval(ids)
            theirs.append(torch.from_numpy(np.array(llm.scores[: len(ids)])))
    finally:
        llm.close()
    effect = _max_diff(theirs, base["logits"])
    diff = _max_diff(theirs, genforge_logits)
    print(f"merged GGUF export: moves logits by {effect:.3f}; |llama.cpp - genforge| {diff:.2e}")
    assert effect > MIN_EFFECT
    # tests/weights/test_export.py's tolerance and argument: llama.cpp's f32 kernels sum in
    # another order; a wrong Q/K layout is off by ~0.2 (and this adapter moves logits by ~2).
    for ours, llama in zip(genforge_logits, theirs, strict=True):
        torch.testing.assert_close(llama, ours, rtol=1e-3, atol=3e-3)


# --- refusals -------------------------------------------------------------------------------------

Q_A = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
Q_B = "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"
O_B = "base_model.model.model.layers.0.self_attn.o_proj.lora_B.weight"


def _config(**changes):
    return lambda config: config.update(changes)


def _renamed(old: str, new: str):
    """Move layer 0's q_proj adapter (lora_A and lora_B) to the module named with `old` -> `new`."""

    def edit(tensors: dict) -> None:
        for part in ("lora_A", "lora_B"):
            tensors[Q_A.replace(old, new).replace("lora_A", part)] = tensors.pop(
                Q_A.replace("lora_A", part)
            )

    return edit


def _reshaped(key: str, shape: tuple[int, ...]):
    return lambda tensors: tensors.update({key: torch.zeros(shape)})


# (adapter_config.json edit, tensors edit, words of the message): the adapter is rank 8
REFUSED = [
    pytest.param(_config(use_dora=True), None, "use_dora", id="dora"),
    pytest.param(None, _renamed("layers.0.", "layers.30."), "does not have", id="no-layer-30"),
    pytest.param(None, _renamed("q_proj", "qkv_proj"), "does not have", id="no-qkv_proj"),
    pytest.param(None, _reshaped(Q_A, (8, 100)), "needs", id="A-input-size"),
    pytest.param(None, _reshaped(O_B, (100, 8)), "needs", id="B-output-size"),
    pytest.param(None, _reshaped(Q_B, (576, 4)), "needs", id="B-rank-fused"),
    pytest.param(None, _reshaped(O_B, (576, 4)), "needs", id="B-rank"),
    pytest.param(None, _reshaped(Q_A, (576,)), "needs", id="A-one-dimensional"),
    # peft refuses it too (size mismatch): the scale is alpha / r, so r must be the tensors' rank
    pytest.param(_config(r=16), None, "needs", id="r-not-the-tensors-rank"),
]


def _broken(base, folder: Path, edit_config, edit_tensors) -> Path:
    from safetensors.torch import load_file, save_file

    shutil.copytree(base["adapter"], folder)
    if edit_config is not None:
        config = json.loads((folder / peft.CONFIG).read_text())
        edit_config(config)
        (folder / peft.CONFIG).write_text(json.dumps(config))
    if edit_tensors is not None:
        tensors = load_file(folder / peft.WEIGHTS)
        edit_tensors(tensors)
        save_file(tensors, folder / peft.WEIGHTS)
    return folder


def _load_adapter(folder: Path, cfg) -> None:
    """What `genforge.load(adapter=folder)` does with the adapter, on an empty (meta) model of
    `cfg` fused as genforge.load fuses it: no weights needed to see whether it is refused."""
    with torch.device("meta"):
        model = Transformer(cfg).fuse_projections()
    state, alpha = peft.read_adapter(adapter_folder(folder), cfg)
    lora.load_lora(model, state, alpha, "adapter")


def _assert_one_sentence(error: GenforgeError, words: str) -> None:
    message = str(error)
    assert words in message and "\n" not in message and message.endswith("."), message
    assert error.__cause__ is None  # raised from None: no chained safetensors/torch traceback
    assert error.__suppress_context__ or error.__context__ is None


@pytest.mark.parametrize("edit_config,edit_tensors,words", REFUSED)
def test_unloadable_adapters_are_refused(edit_config, edit_tensors, words, base, tmp_path):
    folder = _broken(base, tmp_path / "adapter", edit_config, edit_tensors)
    with pytest.raises(GenforgeError) as raised:
        _load_adapter(folder, base["cfg"])
    _assert_one_sentence(raised.value, words)


def test_cli_refuses_a_dora_adapter_in_one_line(base, tmp_path, capsys):
    folder = _broken(base, tmp_path / "adapter", _config(use_dora=True), None)
    args = ["smollm2-135m-instruct", "--adapter", str(folder), "--format", "hf"]
    assert main(["export", *args, "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "use_dora" in err, err
    assert not (tmp_path / "out").exists()
