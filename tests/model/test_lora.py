"""LoRA on a tiny random transformer: start, training, fusing, merging, per-row routing, quantized
bases, and peft's files (written, read back, and loaded by peft itself)."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from components import require_module
from tiny import random_transformer

from genforge.generate.loading import cpu_kernels
from genforge.model import lora
from genforge.model.config import ModelConfig
from genforge.model.kv_cache import PagedBatch, PagedKVCache
from genforge.model.quant import QuantLinear, layer_kind
from genforge.model.transformer import Transformer
from genforge.weights import peft
from genforge.weights.load import build_model, load_hf_dir

# q (64) and k/v (32 each) of different sizes, so that a block of the fused B in the wrong rows
# shows; 2 layers so that an adapter's effect goes through attention into the next block.
CFG = ModelConfig(
    vocab_size=97, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=96, max_seq_len=64
)
RANK, ALPHA = 4, 8.0
HF_TARGETS = ("down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj")
# Logits reach ~40 here, and the float32 forward pass is itself ~1e-4 off the float64 one there.
# Two float32 computations of the same sums in another order (a fused matmul, (W + sBA)x instead
# of Wx + sB(Ax)) differ by that rounding, not more: `assert_same_sums` allows 4x the float32
# forward's own error against float64, far below what an adapter changes (asserted each time).
ROUNDING = 4
TOL = dict(rtol=1e-5, atol=1e-4)  # where float64 cannot run (the paged cache attends in float32)


def assert_same_sums(got: torch.Tensor, want: torch.Tensor, model, tokens=None) -> None:
    """`got` equals `want` (float32 logits of `model`) up to float32 rounding, measured on `model`."""
    tokens = TOKENS if tokens is None else tokens
    exact = logits(copy.deepcopy(model).double(), tokens)
    own_error = (want.double() - exact).abs().max().item()
    assert 0 < own_error < 1e-3
    assert (got - want).abs().max().item() <= ROUNDING * own_error


def tiny_model(seed: int = 0) -> Transformer:
    """Random weights with gain 2, so that logits depend on every layer (not just the embedding)."""
    return random_transformer(CFG, seed).eval()


def randomize(model: torch.nn.Module, name: str, seed: int, std: float = 0.3) -> None:
    """Give adapter `name` a nonzero B (A keeps its Kaiming start), as training would."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, m in lora.lora_modules(model):
            if name in m.lora_b:
                m.lora_b[name].copy_(torch.randn(m.lora_b[name].shape, generator=g) * std)


def adapted(seed: int, name: str = "default", targets=lora.TARGETS, base_seed: int = 0):
    """The tiny model with adapter `name` (active), randomized with `seed`."""
    model = tiny_model(base_seed)
    torch.manual_seed(seed)  # A's Kaiming init
    lora.add_lora(model, targets, RANK, ALPHA, name=name)
    randomize(model, name, seed)
    return model


def logits(model, tokens) -> torch.Tensor:
    with torch.inference_mode():
        return model(tokens)


TOKENS = torch.randint(0, CFG.vocab_size, (2, 12), generator=torch.Generator().manual_seed(7))


# -- start and training --------------------------------------------------------------------------


def test_a_fresh_adapter_leaves_the_logits_unchanged():
    model = tiny_model()
    before = logits(model, TOKENS)
    names = lora.add_lora(model, rank=RANK, alpha=ALPHA)
    assert len(names) == CFG.n_layers * len(lora.TARGETS)
    for _, m in lora.lora_modules(model):
        assert m.lora_a["default"].abs().sum() > 0  # A is random: B alone keeps the start exact
        assert not m.lora_b["default"].any()
    assert torch.equal(logits(model, TOKENS), before)  # + exactly zero: the same bits


def test_a_training_step_changes_only_the_adapter():
    model = tiny_model()
    lora.add_lora(model, rank=RANK, alpha=ALPHA)
    base = {k: v.clone() for k, v in model.state_dict().items() if ".lora_" not in k}
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_a." in n or ".lora_b." in n for n in trainable)
    opt = torch.optim.SGD(trainable.values(), lr=0.5)
    model.train()
    targets = TOKENS.roll(-1, dims=1)
    losses = []
    for _ in range(2):
        opt.zero_grad()
        loss = model(TOKENS, targets=targets)
        loss.backward()
        losses.append(loss.item())
        if len(losses) == 1:
            # B = 0: A's gradient (B^T dy x^T) is zero at the first step, B's is not
            assert all(not p.grad.any() for n, p in trainable.items() if ".lora_a." in n)
            assert all(p.grad.any() for n, p in trainable.items() if ".lora_b." in n)
        opt.step()
    assert losses[1] < losses[0]
    for name, p in model.named_parameters():
        if name not in trainable:
            assert p.grad is None and not p.requires_grad, name
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in base.items())  # the base did not move
    assert all(p.grad.any() for p in trainable.values())  # A learns from the second step on


# -- fused projections ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "targets",
    [lora.TARGETS, ("wq", "wv", "w_up", "w_down")],
    ids=["all", "some-parts-of-fused-layers"],
)
def test_an_adapter_on_the_fused_model_gives_the_unfused_logits(targets):
    unfused = adapted(seed=1, targets=targets)
    base = tiny_model()
    fused = copy.deepcopy(base).fuse_projections()
    lora.load_lora(fused, lora.lora_state(unfused), ALPHA, "x")
    lora.set_adapter(fused, "x")
    # the layers inference runs: one adapter per fused layer, parts stacked block-diagonally
    wqkv = fused.layers[0].attn.wqkv
    assert isinstance(wqkv, lora.LoRALinear)
    n_parts = sum(t in targets for t in ("wq", "wk", "wv"))
    assert wqkv.lora_a["x"].shape == (RANK * n_parts, CFG.dim)
    assert wqkv.scaling["x"] == ALPHA / RANK

    want, got = logits(unfused, TOKENS), logits(fused, TOKENS)
    assert_same_sums(got, want, unfused)
    base_fused = copy.deepcopy(base).fuse_projections()
    assert (want - logits(base, TOKENS)).abs().max() > 0.05
    lora.set_adapter(fused, None)
    assert torch.equal(logits(fused, TOKENS), logits(base_fused, TOKENS))


def test_load_lora_refuses_tensors_that_do_not_fit():
    state = lora.lora_state(adapted(seed=1))
    model = tiny_model()
    bad = dict(state)
    bad["layers.0.attn.wq.lora_b"] = torch.zeros(CFG.dim + 1, RANK)
    with pytest.raises(ValueError, match="layers.0.attn.wq"):
        lora.load_lora(model, bad, ALPHA)
    extra = {**state, "layers.9.attn.wq.lora_a": state["layers.0.attn.wq.lora_a"]}
    extra["layers.9.attn.wq.lora_b"] = state["layers.0.attn.wq.lora_b"]
    with pytest.raises(ValueError, match="layers.9.attn.wq"):
        lora.load_lora(tiny_model(), extra, ALPHA)


# -- merging -------------------------------------------------------------------------------------


def test_merged_weights_give_the_adapters_logits():
    model = adapted(seed=2)
    lora.load_lora(model, lora.lora_state(adapted(seed=3)), ALPHA, "other")
    lora.set_adapter(model, "default")
    want = logits(model, TOKENS)
    base = logits(tiny_model(), TOKENS)
    assert (want - base).abs().max() > 0.05
    reference = copy.deepcopy(model)
    lora.merge_lora(model, "default")
    assert not list(lora.lora_modules(model)) and lora.adapter_names(model) == set()
    assert type(model.layers[1].attn.wq) is type(model.layers[1].mlp.w_down) is torch.nn.Linear
    assert_same_sums(logits(model, TOKENS), want, reference)

    fused = tiny_model().fuse_projections()
    lora.load_lora(fused, lora.lora_state(adapted(seed=2)), ALPHA, "default")
    lora.merge_lora(fused, "default")  # a fused layer's block-diagonal B merges the same way
    assert_same_sums(logits(fused, TOKENS), want, reference)


# -- per-row routing -----------------------------------------------------------------------------


def test_routed_rows_get_their_adapters_delta():
    """route() on one layer: each row group gets base(x) plus its adapter's delta computed on that
    group alone, the same bits as the group through the layer with that adapter on (the same
    operands, the same addmm); rows of no adapter get base(x) untouched."""
    torch.manual_seed(0)
    layer = lora.LoRALinear(torch.nn.Linear(64, 48))
    layer.add("a", RANK, ALPHA)
    layer.add("b", 2 * RANK, ALPHA)
    layer.active = None  # add() made "b" every row's adapter
    holder = torch.nn.Module()
    holder.layer = layer
    randomize(holder, "a", 1)
    randomize(holder, "b", 2)
    x = torch.randn(1, 10, 64)
    groups = [("a", slice(0, 3)), ("b", slice(3, 7)), (None, slice(7, 10))]
    with torch.no_grad():
        base = layer.base(x)
        lora.route(holder, groups)
        y = layer(x)
        assert holder.adapter_rows
        lora.route(holder, None)
        assert layer.rows is None and not holder.adapter_rows
        for name, rows in groups:
            want = base[:, rows]
            if name is not None:
                want = layer.plus_delta(name, base[:, rows], x[:, rows])
                assert (want - base[:, rows]).abs().max() > 0.05
            # fp32 matmuls of another row count may block (and so round) differently on some CPUs
            # (AVX2 machines do): equal to fp32 rounding, not bit for bit
            torch.testing.assert_close(y[:, rows], want, rtol=1e-5, atol=1e-5, msg=name)
            layer.active = name  # and the group alone, through the layer with that adapter on
            torch.testing.assert_close(
                y[:, rows], layer(x[:, rows]), rtol=1e-5, atol=1e-5, msg=name
            )


def paged_logits(model, prompts: list[list[int]], adapters: list[str | None]) -> torch.Tensor:
    """Logits of every row of `prompts`, laid end to end in one PagedBatch as the engine does,
    each prompt's rows routed through its adapter."""
    cache = PagedKVCache.for_model(model.cfg, 4 * len(prompts), 4, torch.float32)
    seqs, routes, row = [], [], 0
    for i, p in enumerate(prompts):
        seqs.append((list(range(4 * i, 4 * i + 4)), 0, len(p), True))
        routes.append((adapters[i], slice(row, row + len(p))))
        row += len(p)
    tokens = torch.tensor([[t for p in prompts for t in p]])
    lora.route(model, routes)
    try:
        with torch.inference_mode():
            return model(tokens, PagedBatch(cache, seqs))[0]
    finally:
        lora.route(model, None)


def alone_logits(model, prompt: list[int], adapter: str | None) -> torch.Tensor:
    """The same through `set_adapter` (every row, no routing): another code path."""
    cache = PagedKVCache.for_model(model.cfg, 4, 4, torch.float32)
    lora.set_adapter(model, adapter)
    try:
        with torch.inference_mode():
            return model(
                torch.tensor([prompt]), PagedBatch(cache, [([0, 1, 2, 3], 0, len(prompt), True)])
            )[0]
    finally:
        lora.set_adapter(model, None)


def test_a_batch_of_rows_for_two_adapters_and_the_base_equals_each_alone():
    """The engine's way: fused layers, the adapters loaded as load_lora does, three prompts of
    different lengths in one (1, N) batch."""
    model = tiny_model().fuse_projections()
    lora.load_lora(model, lora.lora_state(adapted(seed=4)), ALPHA, "a")
    lora.load_lora(model, lora.lora_state(adapted(seed=5, targets=("wv", "w_down"))), ALPHA, "b")
    assert lora.adapter_names(model) == {"a", "b"}
    g = torch.Generator().manual_seed(3)
    prompts = [torch.randint(0, CFG.vocab_size, (n,), generator=g).tolist() for n in (5, 9, 7)]
    names = ["a", "b", None]
    together = paged_logits(model, prompts, names)
    alone = [alone_logits(model, p, n) for p, n in zip(prompts, names, strict=True)]
    torch.testing.assert_close(together, torch.cat(alone), **TOL)
    assert torch.equal(paged_logits(model, prompts[1:2], ["b"]), alone[1])  # one group: same bits
    base_alone = [alone_logits(model, p, None) for p in prompts[:2]]
    for adapter_run, base_run in zip(alone[:2], base_alone, strict=True):
        assert (adapter_run - base_run).abs().max() > 0.05  # each adapter matters
    assert not model.adapter_rows and all(m.rows is None for _, m in lora.lora_modules(model))


# -- quantized base (QLoRA) ----------------------------------------------------------------------


def test_gradients_through_a_q8_base_are_those_of_its_dequantized_weight():
    if cpu_kernels() is None:
        pytest.skip("genforge's kernels are not built here (no compiler, or GENFORGE_KERNELS=0)")
    torch.manual_seed(0)
    linear = torch.nn.Linear(128, 64, bias=True)
    quant = QuantLinear.from_linear(linear, "q8", torch.float32)
    float_base = torch.nn.Linear(128, 64, bias=True)
    with torch.no_grad():
        float_base.weight.copy_(quant.dequantize())
        float_base.bias.copy_(quant.bias)
    layers = [lora.LoRALinear(quant), lora.LoRALinear(float_base)]
    for layer in layers:
        torch.manual_seed(1)
        layer.add("default", RANK, ALPHA)
        with torch.no_grad():
            layer.lora_b["default"].normal_(0, 0.3, generator=torch.Generator().manual_seed(2))
    x = torch.randn(3, 5, 128)
    dy = torch.randn(3, 5, 64)
    grads = []
    for layer in layers:
        xi = x.clone().requires_grad_(True)
        y = layer(xi)
        y.backward(dy)
        grads.append(
            (y.detach(), xi.grad, layer.lora_a["default"].grad, layer.lora_b["default"].grad)
        )
    (yq, dxq, daq, dbq), (yf, dxf, daf, dbf) = grads
    # dx = dy W + s (dy B) A: the same float32 products (the dequantized weight is the float one)
    torch.testing.assert_close(dxq, dxf, **TOL)
    assert (dxq - dy @ quant.dequantize()).abs().max() > 0.1  # the adapter's part is in there
    # the adapter's own gradients never see the base: the same bits
    assert torch.equal(daq, daf) and torch.equal(dbq, dbf)
    # the forward rounds activations to the kernels' int8 grid: close, not equal
    torch.testing.assert_close(yq, yf, rtol=0.02, atol=0.02)
    assert all(p.grad is None for p in quant.parameters())


def test_int8_matmuls_through_an_int8_base_stay_within_their_rounding():
    """`_FrozenInt8`: x and dy are rounded to int8 per row (a step s of max|row| / 127, each value
    off by s / 2 at most) and multiplied exactly in int32, so each output is off its float value
    by at most s / 2 times the sum of |W| it meets: a bound, not a tolerance."""
    torch.manual_seed(0)
    quant = QuantLinear.from_linear(torch.nn.Linear(96, 40, bias=True), "int8", torch.float32)
    w = quant.dequantize()  # the int8 weight exactly, in float32
    layer = lora.LoRALinear(quant)
    layer.add("default", RANK, ALPHA)
    with torch.no_grad():
        layer.lora_b["default"].normal_(0, 0.3, generator=torch.Generator().manual_seed(2))
    x = torch.randn(3, 7, 96) * torch.linspace(0.1, 4, 96)  # uneven channels, as activations are
    x.requires_grad_(True)
    dy = torch.randn(3, 7, 40)
    base = lora.frozen_forward(quant, x)
    y = layer(x)
    y.backward(dy)
    eps = 1e-5  # float32 sums of ~100 products of size ~10
    want = x.detach() @ w.t() + quant.bias
    step = x.detach().abs().amax(-1, keepdim=True) / 127
    assert ((base - want).abs() <= step / 2 * w.abs().sum(1) + eps).all()
    assert (base - want).abs().max() > 1e-4  # rounded: not the float32 product
    # dx = dy W + the adapter's part (exact float32, the same in both); W's scales go into dy's
    # columns before rounding, so dy's step is that of dy * scales, met by |qweight|
    a, b = layer.lora_a["default"].detach(), layer.lora_b["default"].detach()
    dx_want = dy @ w + layer.scaling["default"] * (dy @ b) @ a
    g = dy * quant.scales
    g_step = g.abs().amax(-1, keepdim=True) / 127
    bound = g_step / 2 * quant.qweight.float().abs().sum(0)
    assert ((x.grad - dx_want).abs() <= bound + eps).all()
    assert all(p.grad is None for p in quant.parameters())
    # no gradients: the layer's own inference path (torch's int8 kernel), also with bf16
    # activations (sampling under autocast) into the float32 scales of a training base
    with torch.no_grad():
        torch.testing.assert_close(lora.frozen_forward(quant, x), quant(x))
        y16 = lora.frozen_forward(quant, x.bfloat16()).float()
        torch.testing.assert_close(y16, want, rtol=0.02, atol=0.02)  # bf16's 2^-9 of ~10 sums


@pytest.mark.parametrize("kind", ["q8", "q4", "int8"])
def test_compiled_blocks_give_the_eager_loss_and_gradients_on_a_quantized_base(kind):
    """What `genforge finetune` runs by default: the blocks compiled (the dequantize kernel as an
    operator of its own, cheap activations recomputed in backward; int8: the int8 matmuls), next
    to the eager blocks."""
    if cpu_kernels() is None:
        pytest.skip("genforge's kernels are not built here (no compiler, or GENFORGE_KERNELS=0)")
    runs = []
    for compiled in (False, True):
        model = tiny_model()
        for block in model.layers:
            for module in list(block.modules()):
                for name, child in list(module.named_children()):
                    if (
                        isinstance(child, torch.nn.Linear)
                        and layer_kind(kind, child.in_features) == kind  # q4: w_down stays float
                    ):
                        with torch.no_grad():
                            quant = QuantLinear.from_linear(child, kind, torch.float32)
                        setattr(module, name, quant)
        torch.manual_seed(3)
        lora.add_lora(model, lora.TARGETS, RANK, ALPHA)
        randomize(model, "default", 4)
        model.train()
        if compiled:
            model.compile_blocks(memory_budget=0.5)
            torch._dynamo.utils.counters.clear()
        targets = torch.roll(TOKENS, -1, dims=1)
        for _ in range(2):  # the second step runs the compiled code without compiling
            model.zero_grad(set_to_none=True)
            loss = model(TOKENS, targets=targets)
            loss.backward()
        grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
        runs.append((loss.detach(), grads))
    counters = torch._dynamo.utils.counters
    assert counters["stats"]["unique_graphs"] >= 1 and not counters["graph_break"]  # whole
    (eager_loss, eager), (compiled_loss, compiled) = runs
    # float32 both ways; the compiler fuses and reorders sums: float32 rounding, not more
    torch.testing.assert_close(compiled_loss, eager_loss, rtol=1e-5, atol=1e-5)
    assert eager.keys() == compiled.keys() and len(eager) == 2 * CFG.n_layers * len(lora.TARGETS)
    for name, grad in eager.items():
        assert grad.abs().max() > 0, name  # B is random: A's gradients are not zero either
        torch.testing.assert_close(compiled[name], grad, rtol=1e-4, atol=1e-5, msg=name)


# -- peft's files --------------------------------------------------------------------------------


def test_write_then_read_gives_the_same_tensors(tmp_path):
    model = adapted(seed=6)
    state = lora.lora_state(model)
    targets = tuple(peft.hf_target(t, CFG) for t in lora.TARGETS)
    peft.write_adapter(tmp_path, state, CFG, peft.AdapterConfig(RANK, ALPHA, targets, 0.05))
    config = json.loads((tmp_path / peft.CONFIG).read_text())
    assert config["peft_type"] == "LORA"
    assert (config["r"], config["lora_alpha"], config["lora_dropout"]) == (RANK, ALPHA, 0.05)
    assert config["target_modules"] == list(HF_TARGETS)
    from safetensors.torch import load_file

    names = set(load_file(tmp_path / peft.WEIGHTS))
    assert "base_model.model.model.layers.1.self_attn.k_proj.lora_A.weight" in names
    assert "base_model.model.model.layers.0.mlp.down_proj.lora_B.weight" in names
    back, alpha = peft.read_adapter(tmp_path, CFG)
    assert alpha == ALPHA and back.keys() == state.keys()
    assert all(torch.equal(back[k], state[k]) for k in state)
    assert back["layers.1.attn.wk.lora_b"].shape == (CFG.n_kv_heads * CFG.head_dim, RANK)


def _hf_pair(tmp_path):
    """transformers' llama and genforge's model of the same tiny random checkpoint."""
    transformers = require_module("transformers")
    hf_cfg = transformers.LlamaConfig(
        vocab_size=CFG.vocab_size,
        hidden_size=CFG.dim,
        intermediate_size=CFG.hidden_dim,
        num_hidden_layers=CFG.n_layers,
        num_attention_heads=CFG.n_heads,
        num_key_value_heads=CFG.n_kv_heads,
        max_position_embeddings=CFG.max_seq_len,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    hf = transformers.AutoModelForCausalLM.from_config(hf_cfg, dtype=torch.float32).eval()
    folder = tmp_path / "base"
    hf.save_pretrained(folder)
    return hf, build_model(load_hf_dir(folder)).eval()


def test_peft_loads_our_adapter_and_computes_our_logits(tmp_path):
    peft_lib = require_module("peft")
    hf, ours = _hf_pair(tmp_path)
    torch.manual_seed(8)
    lora.add_lora(ours, rank=RANK, alpha=ALPHA)
    randomize(ours, "default", 8, std=0.5)
    folder = tmp_path / "adapter"
    folder.mkdir()
    peft.write_adapter(
        folder, lora.lora_state(ours), ours.cfg, peft.AdapterConfig(RANK, ALPHA, HF_TARGETS)
    )
    theirs = peft_lib.PeftModel.from_pretrained(hf, folder).eval()
    with torch.no_grad():
        want = theirs(TOKENS).logits
    torch.testing.assert_close(logits(ours, TOKENS), want, rtol=1e-4, atol=1e-4)
    with theirs.disable_adapter(), torch.no_grad():
        assert (want - theirs(TOKENS).logits).abs().max() > 0.05


@pytest.mark.parametrize("rslora", [False, True], ids=["lora", "rslora"])
def test_we_load_an_adapter_peft_wrote(tmp_path, rslora):
    peft_lib = require_module("peft")
    hf, ours = _hf_pair(tmp_path)
    config = peft_lib.LoraConfig(
        r=RANK, lora_alpha=ALPHA, target_modules=list(HF_TARGETS), use_rslora=rslora
    )
    theirs = peft_lib.get_peft_model(hf, config)
    g = torch.Generator().manual_seed(9)
    with torch.no_grad():
        for name, p in theirs.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    folder = tmp_path / "adapter"
    theirs.save_pretrained(folder)
    state, alpha = peft.read_adapter(folder, ours.cfg)
    assert alpha / RANK == pytest.approx(ALPHA / RANK**0.5 if rslora else ALPHA / RANK)
    lora.load_lora(ours.fuse_projections(), state, alpha)  # onto the layers inference runs
    lora.set_adapter(ours, "default")
    with torch.no_grad():
        want = theirs.eval()(TOKENS).logits
    torch.testing.assert_close(logits(ours, TOKENS), want, rtol=1e-4, atol=1e-4)


def test_siblings_share_one_matmul_by_their_stacked_a_with_the_same_results(monkeypatch):
    """q/k/v and gate/up read the same input: `shared_input` multiplies it by their A matrices
    stacked, once, and gives the loss and gradients of each layer on its own (float32)."""
    model = random_transformer(CFG, 0)
    lora.add_lora(model, lora.TARGETS, 4, 8.0)
    for name, p in model.named_parameters():
        if p.requires_grad and "lora_b" in name:
            torch.nn.init.normal_(p, std=0.3)
    model.train()
    tokens = torch.randint(0, CFG.vocab_size, (2, 12), generator=torch.Generator().manual_seed(1))
    given = []  # calls of plus_delta with x A^T made already (by shared_input)
    plus_delta = lora.LoRALinear.plus_delta

    def watch(self, name, y, x, xa=None):
        given.append(xa is not None)
        return plus_delta(self, name, y, x, xa)

    monkeypatch.setattr(lora.LoRALinear, "plus_delta", watch)
    runs = []
    for shared in (True, False):
        if not shared:
            monkeypatch.setattr(lora.LoRALinear, "trains_alone", lambda self: None)
        given.clear()
        model.zero_grad(set_to_none=True)
        loss = model(tokens, targets=torch.roll(tokens, -1, 1))
        loss.backward()
        grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
        runs.append((loss.detach(), grads, sum(given)))
    assert [shared for _, _, shared in runs] == [5 * CFG.n_layers, 0]  # q/k/v and gate/up
    (loss, grads, _), (want_loss, want, _) = runs
    torch.testing.assert_close(loss, want_loss, rtol=1e-6, atol=1e-6)
    assert grads.keys() == want.keys() and len(want) == 2 * 7 * CFG.n_layers
    for name, g in want.items():  # float32 sums in another order: within 1e-5 of the largest
        assert (grads[name] - g).abs().max() <= 1e-5 * g.abs().max(), name


def test_siblings_with_dropout_or_routed_rows_go_one_by_one():
    layers = [lora.LoRALinear(torch.nn.Linear(8, 6, bias=False)) for _ in range(2)]
    for layer in layers:
        layer.add("a", 2, 4.0, dropout=0.1)
        layer.train()
    assert layers[0].trains_alone() is None  # dropout draws a mask per layer
    layers[0].eval()
    assert layers[0].trains_alone() == "a"
    layers[0].rows = []
    assert layers[0].trains_alone() is None
