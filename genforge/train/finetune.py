"""Fine-tuning: the training loop on a loaded model, with LoRA or every weight, SFT or DPO.

Design choices:
- The same `Loop` as pretraining (optimizer, schedule, accumulation, checkpoints, resume, torchrun);
  what differs is the data (JSONL examples with loss masks, `genforge.data.sft`), the parameters
  that train (adapters, or all) and the objective (cross-entropy on the answers, or DPO).
- LoRA's frozen base stays quantized, in a fraction of the memory. Where the CPU has integer dot
  products (VNNI, AMX) it is int8 per output channel and every matmul of it runs in int8
  (`lora._FrozenInt8`: twice bf16's rate); elsewhere (or `--base-matmul float`) it is the blocks
  inference runs (the file's own Q4_1 / Q8_0, as `genforge chat` loads it), dequantized for each
  matmul, so an adapter trains on exactly the weights it will be used with.
- A micro-batch's examples run end to end in one row (packed: the matmuls see no padding), each
  attending to itself only; with --no-pack they are padded to the longest, rounded up to 64 tokens
  (right padding, so causal attention never sees it). No loss on prompt, padding or other turns.
- The data position is the step count, as in pretraining: the global batch of step s is the next
  rows of a seeded permutation per epoch, so a resumed run reads what an uninterrupted one would.
- DPO's reference is the model before training. Its log-probabilities of every pair are computed
  once at the start (for LoRA that is the base, adapter off; for full fine-tuning, the weights
  before the first step) and kept in each checkpoint: no second copy of the model in memory.
- Checkpoints: LoRA writes peft's adapter files (`genforge.weights.peft`), full fine-tuning a
  Hugging Face model folder; both with `train_state.pt` beside them.
"""

from __future__ import annotations

import contextlib
import logging
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from genforge import compute, hub
from genforge.data import sft
from genforge.errors import GenforgeError
from genforge.generate.loading import KERNEL_FORMATS, auto_dtype, cpu_kernels
from genforge.model import kernels, lora
from genforge.model.loss import IGNORE, target_logprobs
from genforge.model.quant import layer_converter, quantize_layers
from genforge.tokenizer import Tokenizer
from genforge.train import checkpoint, distributed
from genforge.train.config import FinetuneConfig
from genforge.train.loader import StepOrder
from genforge.train.loop import Loop, native_int8
from genforge.weights import peft
from genforge.weights.export import hf_config
from genforge.weights.gguf import forget_header
from genforge.weights.load import build_model, load_checkpoint

log = logging.getLogger(__name__)

REFERENCE = "reference_logps.pt"  # DPO: the reference model's log-probabilities, per pair
TOKENIZER = "tokenizer"  # a GGUF base's tokenizer, written into the run for full fine-tuning
# Micro-batches are padded to a multiple of this: oneDNN compiles each new matmul shape (seconds
# with bf16), and a handful of widths recur where every length would be new.
PAD_MULTIPLE = 64
# The share of activations compiled blocks keep for backward (the rest is recomputed: norms,
# activations, RoPE): a third less memory at the same step time (benchmarks/finetune_speed.py).
MEMORY_BUDGET = 0.5
# What the log calls each kind of LoRA base.
BASE_LABELS = {None: "fp32", "int8": "int8, int8 matmuls", "q8": "int8", "q4": "int4"}
# LoRA: the loss's float32 logits in blocks of this many bytes (~170 rows of a 49k vocabulary). The
# step's peak is there, at the end of the forward pass with every saved activation alive: 140 MB
# less than in the default 512 MB blocks, at the same step time (SmolLM2, 8 x ~204 tokens).
LORA_LOSS_BYTES = 32 << 20
# bf16_saved: saved tensors smaller than this stay float32 (scalars, LoRA's rank-wide products).
BF16_SAVED_MIN = 1 << 16


class FineTuner(Loop):
    cfg: FinetuneConfig
    eval_at_start = True  # the model before fine-tuning is the figure to beat

    def setup(self) -> None:
        cfg = self.cfg
        self.path = hub.resolve(cfg.model, progress=self.world.main)
        self.tokenizer = _tokenizer(self.path)
        self.dpo = cfg.objective == "dpo"
        self.template = self._template()
        self.train_items, self.val_items = self._read_data()
        self.model, self.base_dtype = self._load_model()
        self.model.checkpoint_blocks = cfg.checkpointing
        self.model.train()
        rows = cfg.batch_size * cfg.grad_accum * self.world.size
        n = len(self.train_items)
        self.order = StepOrder(n, cfg.seed, rows)  # the data position is the step, as pretraining
        self.steps = cfg.steps or max(1, math.ceil(cfg.epochs * n / rows))
        self.lr = cfg.lr or (2e-4 if cfg.method == "lora" else 2e-5)
        self.warmup = cfg.warmup if cfg.warmup >= 0 else max(1, self.steps // 50)
        self.reference = None
        if self.dpo and not cfg.resume:
            self.reference = self._reference_logps()
        log.info(
            "fine-tuning %s (%s, base %s) on %d examples, %d validation, %d steps",
            cfg.model,
            cfg.method,
            self.base_dtype,
            n,
            len(self.val_items),
            self.steps,
        )

    # Data.
    def _template(self) -> str | None:
        """The chat template examples are rendered with; a fallback is saved with the adapter."""
        if self.tokenizer.chat_template:
            return None
        try:
            template = sft.chat_template_for(self.tokenizer)
        except GenforgeError:
            return None
        return template

    def _read(self, path: str, stats: sft.ReadStats) -> list:
        tok = self.tokenizer
        if self.template is not None:  # chat lines on a model without its own template
            tok = _with_template(tok, self.template)
        read = sft.read_preferences if self.dpo else sft.read_sft
        return read(path, tok, self.cfg.seq_len, skip_bad=self.cfg.skip_bad, stats=stats)

    def _read_data(self) -> tuple[list, list]:
        cfg = self.cfg
        self.stats = sft.ReadStats()
        items = self._read(cfg.data, self.stats)
        if cfg.val:
            return items, self._read(cfg.val, sft.ReadStats())
        n_val = round(len(items) * cfg.val_fraction) if len(items) >= 2 else 0
        if cfg.val_fraction > 0:
            n_val = max(1, n_val) if len(items) >= 2 else 0
        order = np.random.default_rng([cfg.seed, 1 << 20]).permutation(len(items))
        held = set(order[:n_val].tolist())
        train = [x for i, x in enumerate(items) if i not in held]
        val = [x for i, x in enumerate(items) if i in held]
        return train, val

    def micro_batches(self, step: int) -> list:
        cfg, world = self.cfg, self.world
        per_rank = cfg.batch_size * cfg.grad_accum
        picked = [self.train_items[i] for i in self.order.indices(step)]
        mine = picked[world.rank * per_rank : (world.rank + 1) * per_rank]
        return [mine[i : i + cfg.batch_size] for i in range(0, per_rank, cfg.batch_size)]

    def _collate(self, examples: list[sft.Example]) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, targets), each (B, longest - 1): right-padded, IGNORE where nothing is learnt."""
        width = self._width(examples)
        x = torch.zeros(len(examples), width, dtype=torch.long)
        y = torch.full((len(examples), width), IGNORE, dtype=torch.long)
        for r, e in enumerate(examples):
            inputs, targets = _inputs_targets(e)
            x[r, : len(inputs)], y[r, : len(inputs)] = inputs, targets
        device = self.world.device
        return x.to(device), y.to(device)

    def _width(self, examples: list[sft.Example]) -> int:
        """The row width of a micro-batch: its longest input, rounded up to PAD_MULTIPLE."""
        longest = max(len(e.ids) for e in examples) - 1
        return min(-(-longest // PAD_MULTIPLE) * PAD_MULTIPLE, self.cfg.seq_len)

    def _packed(self, examples: list[sft.Example]):
        """(inputs, targets, positions), each (1, N): the examples end to end in one row, each
        counting positions from 0 and attending to itself only (`Transformer(positions=)`), N
        their tokens rounded up to PAD_MULTIPLE by a tail of padding (position -1: no attention,
        no targets). The matmuls run on the examples' tokens and barely more; attention, one
        example a row, on the longest example's width. The same tokens, targets and loss as
        `_collate`'s padded layout."""
        total = sum(len(e.ids) - 1 for e in examples)
        width = -(-total // PAD_MULTIPLE) * PAD_MULTIPLE
        x = torch.zeros(1, width, dtype=torch.long)
        y = torch.full((1, width), IGNORE, dtype=torch.long)
        pos = torch.full((1, width), -1, dtype=torch.long)
        at = 0
        for e in examples:
            inputs, targets = _inputs_targets(e)
            n = len(inputs)
            x[0, at : at + n], y[0, at : at + n] = inputs, targets
            pos[0, at : at + n] = torch.arange(n)
            at += n
        device = self.world.device
        return x.to(device), y.to(device), pos.to(device)

    def _lm_loss(self, net, examples: list[sft.Example]) -> torch.Tensor:
        """Mean loss over the examples' answer tokens, packed into one row unless --no-pack."""
        rows = 0  # full fine-tuning: the default blocks
        if self.cfg.method == "lora":
            rows = max(64, LORA_LOSS_BYTES // (4 * self.model_cfg.vocab_size))
        if not self.cfg.pack:
            x, y = self._collate(examples)
            return net(x, targets=y, loss_rows=rows)
        x, y, positions = self._packed(examples)
        return net(x, targets=y, positions=positions, loss_rows=rows)

    def batch_tokens(self, batch: list) -> int:
        examples = _examples(batch) if self.dpo else batch
        return sum(len(e.ids) - 1 for e in examples)

    def _autocast(self):
        """Loop's autocast, and for LoRA (`bf16_saved`) the float32 activations that backward needs
        kept in bf16: they are most of a LoRA step's peak memory (SmolLM2, 8 x 256 tokens in
        float32: ~1.2 of 2.7 GB; under bf16 autocast the residual stream and attention, 0.2 GB).
        Each compiled block's are packed when its forward returns and unpacked when its backward
        starts, so one block's float32 copies exist at a time."""
        autocast = super()._autocast()
        if not (self.cfg.bf16_saved and self.cfg.method == "lora"):
            return autocast
        stack = contextlib.ExitStack()
        stack.enter_context(torch.autograd.graph.saved_tensors_hooks(_pack_bf16, _unpack_bf16))
        stack.enter_context(autocast)
        return stack

    # Objectives.
    def loss(self, batch: list) -> torch.Tensor:
        if not self.dpo:
            return self._lm_loss(self.net, batch)
        return self._dpo(batch)[0]

    def _logps(self, net, examples: list[sft.Example]) -> torch.Tensor:
        """Summed log-probability of each example's answer tokens."""
        x, y = self._collate(examples)
        h = net(x, hidden=True)  # (B, T, C)
        keep = y != IGNORE
        rows = torch.arange(len(examples), device=y.device)[:, None].expand_as(y)[keep]
        lp = target_logprobs(h[keep], distributed.unwrap(self.model).head_weight, y[keep])
        return torch.zeros(len(examples), device=y.device).index_add(0, rows, lp)

    def _dpo(self, pairs: list[sft.Pair]) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean DPO loss, per-pair reward margins) of a micro-batch of pairs."""
        logps = self._logps(self.net, _examples(pairs))
        chosen, rejected = logps.chunk(2)
        ref = torch.tensor([self.reference[p.source] for p in pairs], device=logps.device)
        margins = self.cfg.beta * ((chosen - rejected) - (ref[:, 0] - ref[:, 1]))
        return -F.logsigmoid(margins).mean(), margins.detach()

    @torch.no_grad()
    def _reference_logps(self) -> dict[str, tuple[float, float]]:
        """log p(chosen), log p(rejected) of every pair under the model as loaded."""
        self.model.eval()
        out = {}
        items = [*self.train_items, *self.val_items]
        for start in range(0, len(items), self.cfg.batch_size):
            pairs = items[start : start + self.cfg.batch_size]
            with self._autocast():
                logps = self._logps(self.model, _examples(pairs)).float()
            chosen, rejected = logps.chunk(2)
            for p, c, r in zip(pairs, chosen.tolist(), rejected.tolist(), strict=True):
                out[p.source] = (c, r)
        self.model.train()
        return out

    # Figures.
    @torch.no_grad()
    def evaluate(self) -> dict:
        if not self.val_items:
            return {}
        self.model.eval()
        try:
            return self._evaluate()
        finally:
            self.model.train()

    def _evaluate(self) -> dict:
        world, B = self.world, self.cfg.batch_size
        mine = self.val_items[world.rank :: world.size]
        if self.dpo:
            sums = [0.0, 0.0, 0.0, 0.0]  # loss, correct, margin, pairs
            for start in range(0, len(mine), B):
                pairs = mine[start : start + B]
                with self._autocast():
                    loss, margins = self._dpo(pairs)
                sums[0] += float(loss) * len(pairs)
                sums[1] += float((margins > 0).sum())
                sums[2] += float(margins.sum())
                sums[3] += len(pairs)
            loss, correct, margin, n = distributed.total(sums, world)
            return {
                "val_loss": loss / max(n, 1),
                "val_accuracy": correct / max(n, 1),
                "val_margin": margin / max(n, 1),
            }
        sums = [0.0, 0.0]  # nats, target tokens
        for start in range(0, len(mine), B):
            examples = mine[start : start + B]
            with self._autocast():
                loss = self._lm_loss(self.net, examples)
            count = sum(int(sum(e.mask[1:])) for e in examples)
            sums[0] += float(loss) * count
            sums[1] += count
        nats, count = distributed.total(sums, world)
        return {"val_loss": nats / max(count, 1)}

    def eval_line(self, out: dict) -> str:
        line = f"val loss {out['val_loss']:.4f}"
        if "val_accuracy" in out:
            line += (
                f", preference accuracy {out['val_accuracy']:.3f}, margin {out['val_margin']:.3f}"
            )
        return line

    @torch.no_grad()
    def samples(self) -> list[tuple[str, str]]:
        self.model.eval()
        try:
            out = []
            for i, (prompt, ids) in enumerate(self._sample_prompts()):
                n = min(self.cfg.sample_tokens, self.cfg.seq_len - len(ids))
                answer = self.generate(ids, max(n, 0), self.cfg.seed + self.step + i, self._stop)
                out.append((prompt, self.tokenizer.decode(answer)))
            return out
        finally:
            self.model.train()

    @property
    def _stop(self) -> frozenset[int]:
        return self.tokenizer.eos_ids

    def _sample_prompts(self) -> list[tuple[str, list[int]]]:
        tok = self.tokenizer
        if self.cfg.sample_prompts:
            out = []
            for p in self.cfg.sample_prompts:
                if tok.chat_template or self.template:
                    t = _with_template(tok, self.template) if self.template else tok
                    ids = t.encode_chat([{"role": "user", "content": p}])
                else:
                    ids = tok.encode(p)
                out.append((p, ids))
            return out
        out = []
        for item in (self.val_items or self.train_items)[:2]:
            e = item.chosen if self.dpo else item
            first = e.mask.index(True) if True in e.mask else len(e.ids)
            ids = e.ids[:first]
            out.append((tok.decode(ids, skip_special=False), ids))
        return out

    # Model and checkpoints.
    def _load_model(self):
        cfg = self.cfg
        kind = self._base_kind()
        if kind is None:
            ckpt = load_checkpoint(self.path, torch.float32)
            model = build_model(ckpt)
        else:
            ckpt = load_checkpoint(self.path, convert=lambda c: layer_converter(kind))
            model = build_model(ckpt, prepare=lambda m: quantize_layers(m, kind))
        ckpt.state = {}
        if ckpt.format == "gguf":
            forget_header(self.path)  # read_gguf's kept header: the tokenizer holds the vocabulary
        # the load's freed blocks (each converted tensor's temporaries) back to the system, as
        # inference's load does (glibc keeps them otherwise; a no-op under mimalloc)
        compute.release_free_memory()
        self.model_cfg = ckpt.config
        if cfg.method == "full":
            try:
                hf_config(self.model_cfg)  # its checkpoints are Hugging Face folders
            except GenforgeError as e:
                raise GenforgeError(f"full fine-tuning writes model folders, but {e}") from None
            for p in model.parameters():
                p.requires_grad_(True)
        else:
            leaves = [_leaf(t, self.model_cfg) for t in cfg.targets]
            lora.add_lora(model, tuple(leaves), cfg.rank, cfg.alpha, cfg.dropout)
            if self.autocast == torch.bfloat16:
                # frozen, and read by autocast's bf16 matmuls only: held in bf16 (half the memory,
                # no cast each step), as inference holds a quantized model's embedding
                model.tok_emb.to(torch.bfloat16)
                if model.output is not None:
                    model.output.to(torch.bfloat16)
        return model, BASE_LABELS[kind]

    def _base_kind(self) -> str | None:
        """The `QuantLinear` kind LoRA's frozen base is held in (None: float32): per-channel int8
        where its matmuls run in int8 (`lora._FrozenInt8`), else the blocks inference runs."""
        cfg, device = self.cfg, self.world.device
        int8_base = cfg.method == "lora" and cfg.base_dtype in ("auto", "int8")
        if cfg.base_matmul == "int8" and not (int8_base and device.type == "cpu"):
            raise GenforgeError(
                "--base-matmul int8 multiplies LoRA's int8 base on the CPU; use it with --method "
                "lora and --base-dtype auto or int8 on the CPU, or use --base-matmul float."
            )
        if cfg.method != "lora" or cfg.base_dtype == "fp32":
            return None
        # int8 matmuls are torch's kernels (genforge's need not be built)
        wants_int8 = cfg.base_matmul == "int8" or (
            cfg.base_matmul == "auto" and native_int8(device)
        )
        if int8_base and wants_int8:
            return "int8"
        quant = auto_dtype(self.path) if cfg.base_dtype == "auto" else cfg.base_dtype
        if cpu_kernels() is None or device.type != "cpu":
            if cfg.base_dtype != "auto":
                raise GenforgeError(
                    f"--base-dtype {cfg.base_dtype} needs genforge's CPU kernels (a C++ "
                    "compiler at set-up) and the CPU; use --base-dtype fp32."
                )
            return None
        return KERNEL_FORMATS[quant]

    def compile(self) -> None:
        """Compile the blocks (traced once for all layers) where a compiler can build them."""
        device = self.world.device
        if device.type == "cpu" and kernels.compiler() is None:
            log.warning("no C++ compiler found: fine-tuning runs without torch.compile (slower)")
            return
        distributed.unwrap(self.model).compile_blocks(memory_budget=MEMORY_BUDGET)

    def describe(self) -> dict:
        return {"base": str(self.path), "arch": self.model_cfg.arch}

    def describe_mismatch(self) -> str:
        return "another base model"

    def adapter_config(self) -> peft.AdapterConfig:
        cfg = self.cfg
        return peft.AdapterConfig(
            cfg.rank, cfg.alpha, tuple(cfg.targets), cfg.dropout, base_model=cfg.model
        )

    def write_weights(self, folder: Path, model_state: dict[str, torch.Tensor]) -> None:
        model = distributed.unwrap(self.model)
        if self.cfg.method == "lora":
            peft.write_adapter(
                folder, lora.lora_state(model), self.model_cfg, self.adapter_config()
            )
            if self.template:  # a fallback template: chat with the adapter as it was trained
                (folder / "chat_template.jinja").write_text(self.template)
        else:
            checkpoint.model_writer(model_state, self.model_cfg, self._tokenizer_dir())(folder)
        if self.reference is not None:
            torch.save(self.reference, folder / REFERENCE)

    def _tokenizer_dir(self) -> Path:
        if Path(self.path).is_dir():
            return Path(self.path)
        folder = self.run / TOKENIZER
        if not (folder / "tokenizer.json").is_file():
            self.tokenizer.save(folder, self.template)
        return folder

    def load_weights(self, folder: Path) -> None:
        model = distributed.unwrap(self.model)
        if self.cfg.method == "lora":
            state, _ = peft.read_adapter(folder, self.model_cfg)
            params = dict(model.named_parameters())
            with torch.no_grad():
                for key, value in state.items():
                    module, _, part = key.rpartition(".")
                    params[f"{module}.{part}.{lora.DEFAULT_ADAPTER}"].copy_(value)
        else:
            weights, _ = checkpoint.load(folder)
            model.load_state_dict(weights, strict=True)
        if self.dpo:
            self.reference = torch.load(folder / REFERENCE, weights_only=True)


def _inputs_targets(e: sft.Example) -> tuple[torch.Tensor, torch.Tensor]:
    """An example's inputs (its tokens but the last) and targets (the next tokens, IGNORE where
    nothing is learnt)."""
    ids, mask = torch.tensor(e.ids), torch.tensor(e.mask[1:])
    return ids[:-1], torch.where(mask, ids[1:], IGNORE)


def _examples(pairs: list[sft.Pair]) -> list[sft.Example]:
    """The chosen answers, then the rejected ones."""
    return [p.chosen for p in pairs] + [p.rejected for p in pairs]


def _leaf(target: str, cfg) -> str:
    """A Hugging Face layer name (q_proj) as genforge's (wq)."""
    for ours, hf in peft.module_names(cfg).items():
        if hf.rpartition(".")[2] == target:
            return ours.rpartition(".")[2]
    raise GenforgeError(f"a {cfg.arch} model has no {target} layers to adapt.")


def _tokenizer(path: Path) -> Tokenizer:
    if Path(path).is_dir():
        return Tokenizer.from_dir(path)
    from genforge.weights.gguf import read_gguf

    return Tokenizer.from_gguf_metadata(read_gguf(path).metadata)


def _with_template(tok: Tokenizer, template: str) -> Tokenizer:
    import copy

    out = copy.copy(tok)
    out.chat_template = template
    return out


def finetune(cfg: FinetuneConfig, progress: bool = True) -> dict:
    """Run (or resume) the fine-tuning run `cfg` describes, under torchrun or in this process."""
    with distributed.joined(cfg.fsdp) as world:
        tuner = FineTuner(cfg, world)
        return tuner.fit(progress) | {"method": cfg.method, "skipped": tuner.stats.skipped}


def _pack_bf16(t: torch.Tensor):
    """Activations saved for backward -> bf16; parameters (the adapters, a float base) as they are."""
    if t.dtype == torch.float32 and t.numel() >= BF16_SAVED_MIN and not isinstance(t, nn.Parameter):
        return t.to(torch.bfloat16), True
    return t, False


def _unpack_bf16(packed) -> torch.Tensor:
    t, rounded = packed
    return t.float() if rounded else t
