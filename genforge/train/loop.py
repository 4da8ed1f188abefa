"""The one training loop: a `Trainer` that steps, evaluates, samples and checkpoints a model.

Design choices:
- The model is genforge's own `Transformer` (llama family), sized by one dial (`depth`), initialised
  GPT-2 style (normal 0.02, residual projections scaled by 1/sqrt(2 x layers)).
- The data position is the step count (`TrainBatches`), so a checkpoint needs no data-loader state
  and N processes read exactly the rows one process would.
- AdamW (betas 0.9/0.95) with decoupled weight decay on matrices only; warmup then cosine or WSD;
  gradient accumulation; clipping; bf16 autocast where the hardware computes bf16 natively.
- Everything torch.distributed does is behind `genforge.train.distributed`; a world of one never
  touches it.
- Ctrl-C stops after the current step and saves a checkpoint; a second Ctrl-C stops at once.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import signal
import time
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from genforge import allocator
from genforge.data.shards import load_manifest
from genforge.errors import GenforgeError
from genforge.generate.loading import cpu_kernels
from genforge.generate.sampling import SamplingParams, sample
from genforge.model import kernels
from genforge.model.config import ModelConfig
from genforge.model.kv_cache import KVCache
from genforge.model.transformer import Transformer
from genforge.tokenizer import Tokenizer
from genforge.train import checkpoint, distributed
from genforge.train.config import (
    LoopConfig,
    TrainConfig,
    lr_at,
    model_config,
    peak_lr,
    total_steps,
)
from genforge.train.distributed import World
from genforge.train.loader import TokenWindows, TrainBatches, token_bytes, validation_windows
from genforge.train.metrics import MetricsLog, plot

log = logging.getLogger(__name__)
RUN_FILE = "run.json"
# Samples during training: the engine's own sampler, at its default temperature and top-k only.
SAMPLE_PARAMS = SamplingParams(temperature=0.8, top_k=40, top_p=1.0, min_p=0.0)
# Dense bf16 peak FLOP/s of common accelerators, for the MFU figure (omitted when unknown).
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "A10": 125e12}


def init_weights(model: Transformer) -> None:
    """GPT-2 initialisation; the output projections of each residual branch start smaller."""
    depth_scale = 1 / math.sqrt(2 * model.cfg.n_layers)
    for name, p in model.named_parameters():
        if p.dim() == 2:
            std = 0.02 * (depth_scale if name.endswith(("wo.weight", "w_down.weight")) else 1)
            nn.init.normal_(p, mean=0.0, std=std)


def native_bf16(device: torch.device) -> bool:
    """Whether bf16 matmuls run natively (faster than fp32) on `device`."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return not kernels.cpu_flags().isdisjoint({"avx512_bf16", "amx_bf16"})


def native_int8(device: torch.device) -> bool:
    """Whether the CPU `device` has integer dot products (VNNI, AMX): int8 matmuls at twice the
    rate of bf16's (`torch._int_mm`; benchmarks/finetune_speed.py)."""
    flags = {"avx512_vnni", "avx_vnni", "amx_int8"}
    return device.type == "cpu" and not kernels.cpu_flags().isdisjoint(flags)


def autocast_dtype(choice: str, device: torch.device) -> torch.dtype | None:
    if choice == "auto":
        return torch.bfloat16 if native_bf16(device) else None
    return torch.bfloat16 if choice == "bf16" else None


def memory_needed(cfg: ModelConfig, batch: int, seq_len: int, act_bytes: int) -> tuple[int, int]:
    """(bytes for weights + gradients + AdamW state, bytes of activations for one micro-batch)."""
    static = cfg.n_params * 16  # fp32 weights, gradients, and two moments
    per_layer = cfg.dim * 14 + cfg.hidden_dim * 5  # values autograd keeps, per token and layer
    per_token = cfg.n_layers * per_layer * act_bytes + cfg.vocab_size * (act_bytes + 12)
    return static, batch * seq_len * per_token


def available_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    import psutil

    return psutil.virtual_memory().available


def out_of_memory(cfg: TrainConfig, need: int | None = None, have: int | None = None):
    sizes = f" (about {need / 2**30:.1f} GiB needed, {have / 2**30:.1f} GiB free)" if need else ""
    return GenforgeError(
        f"a micro-batch of {cfg.batch_size} x {cfg.seq_len} tokens at depth {cfg.depth} does not "
        f"fit in memory{sizes}; lower --batch-size and raise --grad-accum to keep the same batch, "
        "or lower --seq-len or --depth."
    )


class Loop:
    """The training loop, whatever it trains: optimizer, schedule, accumulation, evaluation,
    samples, checkpoints, resume, progress. A subclass says what differs (`Trainer` pretrains a
    model from scratch, `genforge.train.finetune.FineTuner` adapts a loaded one):

    - `setup()` builds the data and `self.model` (trainable parameters: `requires_grad`), and sets
      `self.steps`, `self.lr`, `self.warmup`;
    - `micro_batches(step)` gives this process's micro-batches of optimizer step `step` (any
      objects), `loss(batch)` their mean loss and `batch_tokens(batch)` the tokens they train on;
    - `evaluate()`, `samples()` for the periodic figures; `describe()` what must match on resume;
    - `write_weights(folder)` / `load_weights(folder)` for checkpoints.
    """

    PLOT_UNITS = ("tokens", "loss (nats per token)")  # loss.png's axes

    def __init__(self, cfg: LoopConfig, world: World | None = None):
        cfg.check()
        self.cfg, self.world = cfg, world or World()
        self.run = Path(cfg.out)
        self.step, self.elapsed, self.tokens, self.last_tokens = 0, 0.0, 0, 0
        if not cfg.resume:
            self._refuse_existing()  # before any data or model is read
        torch.manual_seed(cfg.seed)
        self.autocast = autocast_dtype(cfg.dtype, self.world.device)  # setup() may run the model
        if self.world.device.type == "cpu" and self.autocast == torch.bfloat16:
            cpu_kernels()  # attention's (genforge.model.attention), built at set-up
        self.setup()
        self.check_memory()
        self.metrics = MetricsLog(self.run, enabled=self.world.main)
        state = self._resume_state() if cfg.resume else self._start()
        self.model.to(self.world.device)
        self.net = distributed.wrap(self.model, self.world)
        self.optimizer = self._optimizer()
        if state is not None:
            distributed.load_optimizer(self.net, self.optimizer, state["optimizer"], self.world)
        if cfg.compile:
            self.compile()

    def compile(self) -> None:
        """torch.compile what the steps run (here: the whole model)."""
        self.net = torch.compile(self.net)

    # What a subclass provides.
    def setup(self) -> None:
        raise NotImplementedError

    def micro_batches(self, step: int) -> list:
        raise NotImplementedError

    def loss(self, batch) -> torch.Tensor:
        raise NotImplementedError

    def batch_tokens(self, batch) -> int:
        raise NotImplementedError

    def evaluate(self) -> dict:
        return {}

    def samples(self) -> list[tuple[str, str]]:
        return []

    def describe(self) -> dict:
        """What, besides the config's identity fields, a resumed run must share with this one."""
        return {}

    def write_weights(self, folder: Path, model_state: dict[str, torch.Tensor]) -> None:
        """Write the model's files into a checkpoint folder; `model_state` is the unwrapped
        model's full state dict (gathered from every process)."""
        raise NotImplementedError

    def load_weights(self, folder: Path) -> None:
        raise NotImplementedError

    def check_memory(self) -> None:
        pass

    eval_at_start = False  # evaluate before the first step too (a fine-tuned model's baseline)

    # The loop.
    def _optimizer(self) -> torch.optim.Optimizer:
        params = [p for p in self.net.parameters() if p.requires_grad]
        groups = [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": self.cfg.weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]
        fused = not self.world.fsdp  # one kernel per step (half the time of foreach on CPU)
        return torch.optim.AdamW(groups, lr=self.lr, betas=(0.9, 0.95), eps=1e-8, fused=fused)

    def _refuse_existing(self) -> None:
        if existing := checkpoint.latest(self.run):
            raise GenforgeError(
                f"{self.run} already holds a run (checkpoint {existing.name}); add --resume to "
                "continue it, or choose another --out."
            )

    def _start(self) -> None:
        self._refuse_existing()
        if self.world.main:
            self.run.mkdir(parents=True, exist_ok=True)
            info = {
                "train": asdict(self.cfg),
                "model": self.describe(),
                "world_size": self.world.size,
                "steps": self.steps,
                "lr": self.lr,
                "allocator": "mimalloc" if allocator.preloaded() else "system",
            }
            tmp = self.run / f".{RUN_FILE}.tmp"
            tmp.write_text(json.dumps(info, indent=2))
            os.replace(tmp, self.run / RUN_FILE)
            self.metrics.truncate_after(-1)
        return None

    def _resume_state(self) -> dict:
        path = checkpoint.latest(self.run)
        if path is None:
            raise GenforgeError(
                f"--resume: {self.run} has no checkpoint yet; drop --resume to start the run."
            )
        state = checkpoint.load_state(path)
        self._check_compatible(path, state)
        self.load_weights(path)
        self.step, self.elapsed = state["step"], state.get("elapsed_s", 0.0)
        self.tokens = state.get("tokens", 0)
        torch.set_rng_state(state["rng"]["torch"])
        random.setstate(state["rng"]["python"])
        self.metrics.truncate_after(self.step)
        log.info("resumed %s at step %d", self.run, self.step)
        return state

    def _check_compatible(self, path: Path, state: dict) -> None:
        saved = {**type(self.cfg).BEFORE, **state["train"], "world_size": state["world_size"]}
        ours = {**asdict(self.cfg), "world_size": self.world.size}
        keys = [*type(self.cfg).IDENTITY, "world_size"]
        diff = [k for k in keys if saved.get(k) != ours.get(k)]
        if state["model"] != self.describe() and not diff:
            diff = [self.describe_mismatch()]
        if diff:
            was = ", ".join(f"{k}={saved.get(k)}" for k in diff if k in saved)
            raise GenforgeError(
                f"checkpoint {path} is from an incompatible run ({was or diff[0]}; now "
                + ", ".join(f"{k}={ours.get(k)}" for k in diff if k in ours)
                + "); resume with the run's own settings, or train into another --out."
            )

    def describe_mismatch(self) -> str:
        return "another model"

    def _autocast(self):
        if self.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(self.world.device.type, dtype=self.autocast)

    def train_step(self) -> float:
        """One optimizer step over the global batch; returns its mean loss (all ranks)."""
        cfg, world = self.cfg, self.world
        lr = lr_at(self.step, self.steps, self.lr, self.warmup, cfg.schedule, cfg.min_lr_frac)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        batches = self.micro_batches(self.step)
        total = torch.zeros((), device=world.device)
        tokens = 0
        for m, batch in enumerate(batches):
            with distributed.gradient_sync(self.net, world, m == len(batches) - 1):
                with self._autocast():
                    loss = self.loss(batch)
                (loss / len(batches)).backward()
            total += loss.detach()
            tokens += self.batch_tokens(batch)
        if cfg.clip:
            nn.utils.clip_grad_norm_(self.net.parameters(), cfg.clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.last_tokens = int(distributed.total([tokens], world)[0])  # every process's
        return distributed.mean(total / len(batches), world)

    @torch.no_grad()
    def generate(self, ids: list[int], n_tokens: int, seed: int, stop: frozenset[int]) -> list[int]:
        """Up to `n_tokens` ids after `ids` from the model as it trains (temperature 0.8, top-k
        40), ending before a `stop` id."""
        model, device = distributed.unwrap(self.model), self.world.device
        c = model.cfg
        cache = KVCache(c.n_layers, 1, c.n_kv_heads, len(ids) + n_tokens, c.head_dim, device=device)
        gen = torch.Generator(device=device).manual_seed(seed)
        tokens, out, pos = torch.tensor([ids], device=device), [], 0
        for _ in range(n_tokens):  # a fixed count (no early stop): FSDP ranks must stay in step
            with self._autocast():
                logits = self.model(tokens, cache, pos)[0, -1].float()
            pos += tokens.shape[1]
            out.append(sample(logits, SAMPLE_PARAMS, gen))
            tokens = torch.tensor([[out[-1]]], device=device)
        for i, t in enumerate(out):
            if t in stop:
                return out[:i]
        return out

    def save(self) -> Path | None:
        model_state, opt_state = distributed.full_state(self.net, self.optimizer, self.world)
        path = None
        if self.world.main:
            state = {
                "step": self.step,
                "tokens": self.tokens,
                "elapsed_s": self.elapsed,
                "optimizer": opt_state,
                "train": asdict(self.cfg),
                "model": self.describe(),
                "world_size": self.world.size,
                "rng": {"torch": torch.get_rng_state(), "python": random.getstate()},
            }
            write = lambda folder: self.write_weights(folder, model_state)  # noqa: E731
            path = checkpoint.save(self.run, self.step, write, state, self.cfg.keep)
        distributed.barrier(self.world)
        return path

    def fit(self, progress: bool = True) -> dict:
        """Train to the last step; returns the final figures."""
        from tqdm import tqdm

        cfg, world = self.cfg, self.world
        every = {
            "eval": cfg.eval_every or max(1, self.steps // 10),
            "log": max(1, cfg.log_every),
        }
        every["sample"] = cfg.sample_every or every["eval"]
        every["save"] = cfg.save_every or every["eval"]
        bar = tqdm(
            total=self.steps,
            initial=self.step,
            unit="step",
            dynamic_ncols=True,
            disable=not (progress and world.main),
        )
        result, stop = {}, _StopFlag(world)
        if self.step == 0 and self.eval_at_start:
            self._evaluation(bar)  # the starting point the training is measured against
        window_t, window_steps, window_tokens = 0.0, 0, 0
        # Ctrl-C stops after the step under way and saves it: one arriving before the first step
        # still gets a step and a checkpoint, so that --resume has something to continue from
        while self.step < self.steps:
            t = time.perf_counter()
            try:
                loss = self.train_step()
            except RuntimeError as e:
                if "memory" in str(e).lower():
                    raise out_of_memory(cfg) from None
                raise
            dt = time.perf_counter() - t
            self.elapsed += dt
            window_t, window_steps = window_t + dt, window_steps + 1
            window_tokens += self.last_tokens
            self.tokens += self.last_tokens
            speed = window_tokens / window_t
            stopping = stop.requested  # read once: a Ctrl-C after this waits for the next step
            last = self.step == self.steps or stopping
            bar.update(1)
            bar.set_postfix_str(self._progress(loss, speed), refresh=False)
            if self.step % every["log"] == 0 or last:
                self.metrics.write(
                    {
                        "kind": "train",
                        "step": self.step,
                        "loss": loss,
                        "lr": self.optimizer.param_groups[0]["lr"],
                        "tokens": self.tokens,
                        "tokens_per_s": speed,
                        "elapsed_s": self.elapsed,
                    }
                )
                window_t, window_steps, window_tokens = 0.0, 0, 0
            result |= {"loss": loss, "tokens_per_s": speed}
            result |= self._periodic(every, last, bar)
            if stopping:
                break
        bar.close()
        stop.restore()
        if stop.requested and self.step < self.steps:
            result["interrupted"] = True
        return result | {
            "step": self.step,
            "steps": self.steps,
            "run": str(self.run),
            "main": world.main,
        }

    def _evaluation(self, bar) -> dict:
        out = self.evaluate()
        if out and self.world.main:
            self.metrics.write({"kind": "eval", "step": self.step, "tokens": self.tokens, **out})
            bar.write(f"step {self.step}: " + self.eval_line(out))
        return out

    def _periodic(self, every: dict, last: bool, bar) -> dict:
        out = {}
        if self.step % every["eval"] == 0 or last:
            out = self._evaluation(bar)
        if self.step % every["sample"] == 0 or last:
            for prompt, text in self.samples():
                self.metrics.write(
                    {"kind": "sample", "step": self.step, "prompt": prompt, "text": text}
                )
                if self.world.main:
                    bar.write(f"sample: {text!r}")
        if self.step % every["save"] == 0 or last:
            out["checkpoint"] = str(self.save())
            if self.world.main:
                plot(self.run, self.PLOT_UNITS)
        return out

    def _progress(self, loss: float, speed: float) -> str:
        parts = [
            f"loss {loss:.3f}",
            f"lr {self.optimizer.param_groups[0]['lr']:.2e}",
            f"{speed:,.0f} tok/s",
        ]
        if self.world.device.type == "cuda":
            name = torch.cuda.get_device_name(self.world.device)
            peak = next((v for k, v in PEAK_FLOPS.items() if k in name), None)
            if peak:
                c = distributed.unwrap(self.model).cfg
                flops = 6 * c.n_params + 12 * c.n_layers * c.dim * self.cfg.seq_len
                parts.append(f"MFU {100 * flops * speed / (peak * self.world.size):.1f}%")
        return ", ".join(parts)

    def eval_line(self, out: dict) -> str:
        return f"val loss {out['val_loss']:.4f}"


class Trainer(Loop):
    """Pretraining: a llama-family model from scratch on a prepared data folder."""

    cfg: TrainConfig

    def setup(self) -> None:
        cfg, world = self.cfg, self.world
        manifest = load_manifest(cfg.data)
        self.tokenizer_dir = Path(cfg.data) / manifest["tokenizer"]
        self.tokenizer = Tokenizer.from_dir(self.tokenizer_dir)
        self.eos_id = manifest["eos_id"]
        self.model_cfg = model_config(cfg.depth, manifest["vocab_size"], cfg.seq_len)
        rows = cfg.batch_size * cfg.grad_accum * world.size
        self.batches = TrainBatches(TokenWindows(cfg.data, "train", cfg.seq_len), cfg.seed, rows)
        self.val = TokenWindows(cfg.data, "val", cfg.seq_len)
        self.val_ids = validation_windows(self.val, cfg.eval_tokens)
        self.bytes_of = token_bytes(self.tokenizer.hf, self.model_cfg.vocab_size).to(world.device)
        self.steps = total_steps(cfg, self.model_cfg, world.size)
        self.lr = peak_lr(cfg, self.model_cfg)
        self.warmup = cfg.warmup if cfg.warmup >= 0 else max(1, self.steps // 50)
        self.model = Transformer(self.model_cfg)
        init_weights(self.model)

    @property
    def tokens_per_step(self) -> int:
        return self.batches.rows * self.cfg.seq_len

    def check_memory(self) -> None:
        act = 2 if self.autocast else 4
        static, acts = memory_needed(self.model_cfg, self.cfg.batch_size, self.cfg.seq_len, act)
        have = available_memory(self.world.device)
        if static + acts > have:
            raise out_of_memory(self.cfg, static + acts, have)

    def describe(self) -> dict:
        return asdict(self.model_cfg)

    def describe_mismatch(self) -> str:
        return "vocab_size (another data folder's tokenizer)"

    def micro_batches(self, step: int) -> list:
        cfg, world = self.cfg, self.world
        rows = self.batches.batch(step, world.rank, world.size, cfg.grad_accum, cfg.batch_size)
        return list(rows.to(world.device))  # (batch, seq_len + 1) each

    def loss(self, rows: torch.Tensor) -> torch.Tensor:
        return self.net(rows[:, :-1], targets=rows[:, 1:])

    def batch_tokens(self, rows: torch.Tensor) -> int:
        return rows.shape[0] * (rows.shape[1] - 1)

    def write_weights(self, folder: Path, model_state: dict[str, torch.Tensor]) -> None:
        checkpoint.model_writer(model_state, self.model_cfg, self.tokenizer_dir)(folder)

    def load_weights(self, folder: Path) -> None:
        weights, _ = checkpoint.load(folder)
        self.model.load_state_dict(weights, strict=True)

    @torch.no_grad()
    def evaluate(self) -> dict:
        """Validation loss (nats per token) and bits per byte over the fixed validation windows."""
        if not self.val_ids:
            return {}
        world, B = self.world, self.cfg.batch_size
        per_rank = -(-len(self.val_ids) // world.size)  # equal counts: FSDP ranks run in lockstep
        mine = self.val_ids[world.rank * per_rank : (world.rank + 1) * per_rank]
        mine = [(i, 1.0) for i in mine] + [(0, 0.0)] * (per_rank - len(mine))
        sums = torch.zeros(4, dtype=torch.float64)  # nats, tokens, nats on bytes, bytes
        for start in range(0, len(mine), B):
            chunk = mine[start : start + B]
            rows = self.val.stack([i for i, _ in chunk]).to(world.device)
            weight = torch.tensor([w for _, w in chunk], device=world.device)[:, None]
            x, y = rows[:, :-1], rows[:, 1:]
            with self._autocast():
                logits = self.net(x)
            nats = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none")
            nats = nats.view_as(y) * weight
            nbytes = self.bytes_of[y] * weight
            sums += (
                torch.stack(
                    [
                        nats.sum(),
                        weight.expand_as(y).sum(),
                        (nats * (nbytes > 0)).sum(),
                        nbytes.sum(),
                    ]
                )
                .double()
                .cpu()
            )
        nats, count, nats_b, nbytes = distributed.total(sums.tolist(), world)
        return {"val_loss": nats / max(count, 1), "val_bpb": nats_b / math.log(2) / max(nbytes, 1)}

    def sample(self, prompt: str, n_tokens: int, seed: int) -> str:
        """Continue `prompt` from a document start (temperature 0.8, top-k 40)."""
        n_tokens = min(n_tokens, self.cfg.seq_len - 1)  # the model knows seq_len positions
        ids = [self.eos_id, *self.tokenizer.encode(prompt, add_special=False)]
        ids = ids[-(self.cfg.seq_len - n_tokens) :]
        out = self.generate(ids, n_tokens, seed, frozenset({self.eos_id}))
        return prompt + self.tokenizer.decode(out)

    def samples(self) -> list[tuple[str, str]]:
        return [
            (p, self.sample(p, self.cfg.sample_tokens, self.cfg.seed + self.step + i))
            for i, p in enumerate(self.prompts())
        ]

    def eval_line(self, out: dict) -> str:
        return f"val loss {out['val_loss']:.4f}, {out['val_bpb']:.3f} bits per byte"

    def prompts(self) -> list[str]:
        if self.cfg.sample_prompts:
            return list(self.cfg.sample_prompts)
        excerpt = self.tokenizer.decode(self.val.window(0)[:8].tolist()) if self.val.n else ""
        return ["", excerpt.split("<|endoftext|>")[-1]]


class _StopFlag:
    """Ctrl-C asks the loop to stop after the current step (and checkpoint); a second one stops now."""

    def __init__(self, world: World):
        self.requested, self._old = False, None
        if world.distributed or not _main_thread():
            return
        self._old = signal.getsignal(signal.SIGINT)
        signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\nstopping after this step and saving a checkpoint (Ctrl-C again to stop now)")

    def restore(self) -> None:
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def train(cfg: TrainConfig, progress: bool = True) -> dict:
    """Run (or resume) the training run `cfg` describes, under torchrun or in this process."""
    with distributed.joined(cfg.fsdp) as world:
        return Trainer(cfg, world).fit(progress)
