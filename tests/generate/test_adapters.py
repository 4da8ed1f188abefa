"""LoRA adapters on the real SmolLM2-135M-Instruct: requests for two adapters and the base model
batched in the same engine steps answer as each does alone, the prefix cache keeps adapters apart,
and bad adapters are refused with one sentence.

The adapters are made here, untrained: random B (seeded) on the model's structure, strong enough
that each changes the greedy answers (checked), small enough that the answers stay sentences.
"""

from __future__ import annotations

import json
import queue
import re
import subprocess
import sys

import pytest
from adapters import RANK, make_adapter

import genforge
from genforge import compute
from genforge.errors import GenforgeError
from genforge.generate.engine import BLOCK_SIZE, Engine, TokenStream
from genforge.generate.sampling import SamplingParams
from genforge.model.config import ModelConfig
from genforge.weights import peft
from genforge.weights.configs import config_from_gguf
from genforge.weights.gguf import read_gguf

MODEL = "smollm2-135m-instruct"
MESSAGES = ("Name three colours.", "Write one sentence about the sea.")
GREEDY = SamplingParams(temperature=0, max_tokens=24)
NAMES = (None, "a", "b")  # None: the base model


@pytest.fixture(scope="module")
def smollm2_cfg(smollm2_path) -> ModelConfig:
    g = read_gguf(smollm2_path)
    return config_from_gguf(g.metadata, set(g.tensors))


@pytest.fixture(scope="module")
def adapter_dirs(smollm2_cfg, tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    return {n: make_adapter(root / n, smollm2_cfg, seed) for n, seed in (("a", 1), ("b", 2))}


@pytest.fixture(scope="module")
def llm(adapter_dirs):
    """Both adapters beside the weights; float32 weights and cache, so that batching changes no
    bits that matter (fp16 keys would round float32-sized differences up to fp16 steps)."""
    return genforge.load(
        MODEL, adapters=adapter_dirs, dtype="fp32", kv_dtype="fp32", progress=False
    )


@pytest.fixture(scope="module")
def prompts(llm) -> list[list[int]]:
    return [llm.chat_prompt(m).ids for m in MESSAGES]


@pytest.fixture(scope="module")
def alone(llm, prompts) -> dict[tuple[int, str | None], list[int]]:
    """(prompt index, adapter) -> greedy token ids, each request run by itself."""
    eos = llm.tokenizer.eos_ids
    out = {}
    for i, ids in enumerate(prompts):
        for name in NAMES:
            out[i, name] = list(llm.engine.generate(ids, GREEDY, eos, adapter=name))
    return out


def test_each_adapter_changes_the_answers(llm, alone):
    """Without this, equal answers in a batch would prove nothing about routing."""
    for i, message in enumerate(MESSAGES):
        assert len({tuple(alone[i, n]) for n in NAMES}) == 3, message
    for name in NAMES:  # the public way gives the same answers, as text
        text = llm.with_adapter(name).chat(MESSAGES[0], temperature=0, max_tokens=24)
        assert text == llm.tokenizer.decode(alone[0, name]) and text.strip(), name
    assert llm.adapters == ["a", "b"] and llm.with_adapter("a").adapter == "a"


def test_two_adapters_and_the_base_in_one_step_answer_as_each_alone(llm, prompts, alone):
    """Steps driven by hand on an engine of the same model: all six requests (two prompts of
    different lengths, each through a, b and the base) get a token at every step, and each ends
    with the tokens it gets alone."""
    engine = Engine(llm.model, 2048, kv_dtype="fp32")  # its own: not stepped by the compute thread
    eos = llm.tokenizer.eos_ids
    reqs = {
        (i, n): engine.add_request(ids, GREEDY, eos, adapter=n)
        for i, ids in enumerate(prompts)
        for n in NAMES
    }

    def drive() -> list[set[int]]:
        """Step to the end; per step, which running requests got no token."""
        missed = []
        while engine.has_work():
            running = {id(r) for r in reqs.values() if not r.finished}
            missed.append(running - {id(r) for r, _ in engine.step()})
        return missed

    missed = compute.run(drive)  # on the process's compute thread, as every step runs
    assert missed and not any(missed)
    assert len(missed) == max(len(a) for a in alone.values())  # the first step prefilled all
    for key, req in reqs.items():
        assert req.output == alone[key], key


def test_requests_submitted_together_answer_as_each_alone(llm, prompts, alone):
    """The way the server submits: `submit_all` admits them at the same step, the compute thread
    runs them batched."""
    eos = llm.tokenizer.eos_ids
    keys = [(i, n) for i in range(len(prompts)) for n in NAMES]
    outs = [queue.SimpleQueue() for _ in keys]
    jobs = [
        dict(prompt_ids=prompts[i], params=GREEDY, eos_ids=eos, out=out, adapter=n)
        for (i, n), out in zip(keys, outs, strict=True)
    ]
    reqs = llm.engine.submit_all(jobs)
    for key, req, out in zip(keys, reqs, outs, strict=True):
        assert list(TokenStream(llm.engine, req, out)) == alone[key], key


def test_the_prefix_cache_does_not_leak_between_adapters(llm):
    engine, eos = llm.engine, llm.tokenizer.eos_ids
    text = "Here is a list of animals: cat, dog, horse, cow, sheep, goat, pig, duck, goose. "
    ids = llm.chat_prompt(text * 3 + "Which of them can swim?").ids
    assert len(ids) > 4 * BLOCK_SIZE
    params = SamplingParams(temperature=0, max_tokens=12)

    def run(name):
        stream = engine.generate(ids, params, eos, adapter=name)
        return list(stream), stream.request.n_cached

    cold = {}
    for name in ("a", None, "b"):
        engine.reset_prefix_cache()
        cold[name], _ = run(name)
    assert len({tuple(v) for v in cold.values()}) == 3  # each reads its own keys and values
    engine.reset_prefix_cache()
    for name in ("a", None, "b"):  # each after the other has cached the same prompt
        answer, cached = run(name)
        assert answer == cold[name] and cached == 0, name
    answer, cached = run("a")
    assert answer == cold["a"] and cached >= 4 * BLOCK_SIZE  # within one adapter it is reused


@pytest.fixture(scope="module")
def single(adapter_dirs):
    """`load(adapter=...)`: one adapter every request goes through."""
    return genforge.load(
        MODEL, adapter=adapter_dirs["a"], dtype="fp32", kv_dtype="fp32", progress=False
    )


def test_one_adapter_for_every_request_equals_the_named_one(single, llm, prompts, alone):
    for i, message in enumerate(MESSAGES):
        assert single.chat(message, temperature=0, max_tokens=24) == llm.tokenizer.decode(
            alone[i, "a"]
        )
    eos = single.tokenizer.eos_ids
    assert list(single.engine.generate(prompts[0], GREEDY, eos)) == alone[0, "a"]
    with pytest.raises(GenforgeError, match="not both"):
        genforge.load(MODEL, adapter="x", adapters={"y": "z"}, progress=False)


def test_a_views_scores_go_through_its_adapter(single, llm):
    pairs = [("The capital of France is", " Paris"), ("Roses are red, violets are", " blue")]
    base = [s.logprob for s in llm.loglikelihood(pairs)]
    through_a = [s.logprob for s in single.loglikelihood(pairs)]  # adapter "a" on every row
    assert max(abs(x - y) for x, y in zip(base, through_a, strict=True)) > 0.1
    view = [s.logprob for s in llm.with_adapter("a").loglikelihood(pairs)]
    assert view == pytest.approx(through_a, abs=1e-4)


def test_one_adapter_for_every_request_is_part_of_the_model(single, prompts):
    """With `load(adapter=...)` the adapter is on for every row: no request can name it or step
    around it (mixing it with routed requests would leave the unnamed ones on the base)."""
    assert single.adapters == []
    for name in ("adapter", None):
        with pytest.raises(GenforgeError, match="every request through the adapter"):
            single.with_adapter(name)
    with pytest.raises(GenforgeError, match="no adapter 'adapter'"):
        single.engine.add_request(prompts[0], GREEDY, adapter="adapter")


# -- refused ---------------------------------------------------------------------------------------


def test_an_unknown_adapter_name_is_refused(llm, prompts):
    with pytest.raises(GenforgeError, match=r"no adapter 'c' is loaded \(loaded: a, b\)"):
        llm.with_adapter("c")
    with pytest.raises(GenforgeError, match="no adapter 'c'"):
        llm.engine.add_request(prompts[0], GREEDY, adapter="c")
    assert llm.with_adapter(None).adapter is None


def _load_error(adapter) -> str:
    with pytest.raises(GenforgeError) as e:
        genforge.load(MODEL, adapters={"x": adapter}, progress=False)
    return str(e.value)


def test_an_adapter_of_another_model_is_refused_naming_the_mismatch(smollm2_cfg, tmp_path):
    narrow = ModelConfig(
        dim=128, hidden_dim=256, n_layers=smollm2_cfg.n_layers, n_heads=4, n_kv_heads=2
    )
    msg = _load_error(make_adapter(tmp_path / "narrow", narrow, seed=3))
    # one sentence naming the layer and the adapter's sizes that do not fit it
    assert re.search(r"adapter of layers\.\d+\.(attn|mlp)\.w\w+ ", msg), msg
    assert re.search(r"\b(128|256)\b", msg) and "use the adapter with the model" in msg, msg
    deeper = ModelConfig(dim=smollm2_cfg.dim, n_layers=32, n_heads=9, n_kv_heads=3)
    msg = _load_error(make_adapter(tmp_path / "deeper", deeper, seed=3))
    assert "model.layers.3" in msg and "of 30 layers does not have" in msg


def test_a_folder_that_is_no_adapter_is_refused(tmp_path, smollm2_path):
    assert "is not a LoRA adapter" in _load_error(smollm2_path.parent)  # the model's own folder
    assert "does not exist" in _load_error(tmp_path / "missing")
    (tmp_path / peft.CONFIG).write_text(json.dumps({"peft_type": "IA3"}))
    assert "holds a IA3 adapter; only LoRA loads" in _load_error(tmp_path)


def test_an_adapter_with_mismatched_ranks_is_refused(adapter_dirs, tmp_path):
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "bad-rank"
    folder.mkdir()
    (folder / peft.CONFIG).write_text((adapter_dirs["a"] / peft.CONFIG).read_text())
    tensors = load_file(adapter_dirs["a"] / peft.WEIGHTS)
    key = "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"
    tensors[key] = tensors[key][:, : RANK // 2].contiguous()
    save_file(tensors, folder / peft.WEIGHTS)
    assert "layers.0.attn.wq" in _load_error(folder)


# -- the command ----------------------------------------------------------------------------------


def _chat(*args: str) -> str:
    r = subprocess.run(
        [sys.executable, "-m", "genforge", "chat", "-m", MODEL, *args],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_chat_with_an_adapter_answers_differently(adapter_dirs):
    """The default weights (int4 kernels) this time: the adapter goes on quantized layers."""
    flags = (MESSAGES[0], "--temperature", "0", "--max-tokens", "8")
    with_adapter = _chat("--adapter", str(adapter_dirs["a"]), *flags)
    base = _chat(*flags)
    assert with_adapter.strip() and base.strip() and with_adapter != base
