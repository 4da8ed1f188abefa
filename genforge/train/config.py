"""What a run of the training loop is: `LoopConfig`, `TrainConfig` (pretraining, sized by one
dial: depth) and `FinetuneConfig`. Dataclasses only, without torch: the CLI builds its flags from
them and `--help` stays fast."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from genforge.errors import GenforgeError
from genforge.model.config import ModelConfig

HEAD_DIM = 64  # width = HEAD_DIM * depth, so heads = depth: the aspect ratio nanochat uses
TOKENS_PER_PARAM = 20  # the compute-optimal data budget (Chinchilla) when --steps is not given


@dataclass(kw_only=True)
class LoopConfig:
    """What every run of the training loop has, whatever it trains (`genforge train`, `finetune`)."""

    out: str  # the run folder: checkpoints, metrics.jsonl, loss.png
    batch_size: int = 8  # sequences per micro-batch in each process
    grad_accum: int = 1  # micro-batches per step; global batch = batch x accum x processes
    steps: int = 0  # optimizer steps; 0 = 20 tokens per parameter
    lr: float = 0.0  # peak learning rate; 0 = 0.04 / sqrt(width)
    warmup: int = -1  # warmup steps; -1 = 2% of the steps
    schedule: str = "cosine"  # "cosine" to lr x min_lr_frac, or "wsd" (flat, last 20% to 0)
    min_lr_frac: float = 0.1  # where the cosine schedule ends, as a fraction of lr
    weight_decay: float = 0.1  # AdamW decoupled weight decay on matrices (not norms)
    clip: float = 1.0  # gradient-norm clipping; 0 = off
    dtype: str = "auto"  # "bf16" autocast, "fp32", or "auto": bf16 where it is native
    compile: bool = False  # torch.compile the model (slow first step, faster later on GPUs)
    seed: int = 1337  # model init and data order
    eval_every: int = 0  # steps between validation losses; 0 = ten times per run
    sample_every: int = 0  # steps between text samples; 0 = at every evaluation
    sample_tokens: int = 48  # tokens per text sample
    sample_prompts: tuple[str, ...] = ()  # prompts to sample; none: taken from the validation data
    save_every: int = 0  # steps between checkpoints; 0 = at every evaluation
    keep: int = 3  # checkpoints kept (the newest)
    log_every: int = 10  # steps between metrics.jsonl records
    fsdp: bool = False  # under torchrun: shard parameters, gradients and optimizer state (FSDP2)
    resume: bool = False  # continue the run in `out` from its newest checkpoint

    # Fields that define the run: a resumed run must have the same ones, or it is another run.
    IDENTITY = (
        "batch_size",
        "grad_accum",
        "steps",
        "lr",
        "warmup",
        "schedule",
        "min_lr_frac",
        "weight_decay",
        "clip",
        "seed",
        "fsdp",
    )
    # What an identity field was in checkpoints written before it existed.
    BEFORE: ClassVar[dict[str, object]] = {}
    POSITIVE = ("batch_size", "grad_accum", "log_every")  # flags that must be at least 1

    def check(self) -> None:
        """Refuse values no run can use, naming the flag (library callers get the CLI's checks)."""
        for name in self.POSITIVE:
            if getattr(self, name) < 1:
                raise GenforgeError(f"{flag(name)} must be at least 1, got {getattr(self, name)}.")
        for name in ("steps", "eval_every", "sample_every", "save_every", "keep", "sample_tokens"):
            if getattr(self, name) < 0:
                raise GenforgeError(f"{flag(name)} must be 0 or more, got {getattr(self, name)}.")
        if self.lr < 0 or self.weight_decay < 0 or self.clip < 0:
            raise GenforgeError("--lr, --weight-decay and --clip must not be negative.")
        if not 0 <= self.min_lr_frac <= 1:
            raise GenforgeError(f"--min-lr-frac must be in [0, 1], got {self.min_lr_frac}.")
        if self.schedule not in ("cosine", "wsd"):
            raise GenforgeError(f'--schedule must be "cosine" or "wsd", got {self.schedule!r}.')
        if self.dtype not in ("auto", "bf16", "fp32"):
            raise GenforgeError(f'--dtype must be "auto", "bf16" or "fp32", got {self.dtype!r}.')


def flag(name: str) -> str:
    """The command-line flag of a config field."""
    return "--" + name.replace("_", "-")


@dataclass(kw_only=True)
class TrainConfig(LoopConfig):
    """A pretraining run: a model from scratch on a prepared data folder."""

    data: str  # a prepared data folder (`genforge data prepare`)
    depth: int = 6  # the size dial: layers; width = 64 x depth, heads = depth, lr from width
    seq_len: int = 256  # tokens per training sequence (the model's context length)
    eval_tokens: int = 65536  # validation tokens per evaluation

    IDENTITY = ("depth", "seq_len", *LoopConfig.IDENTITY)
    POSITIVE = ("depth", "seq_len", "eval_tokens", *LoopConfig.POSITIVE)


METHODS = ("lora", "full")
OBJECTIVES = ("sft", "dpo")
BASE_DTYPES = ("auto", "fp32", "int8", "int4")
BASE_MATMULS = ("auto", "int8", "float")
ALL_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(kw_only=True)
class FinetuneConfig(LoopConfig):
    """A fine-tuning run: a loaded model adapted to JSONL examples."""

    model: str  # the model to adapt: a named model, a .gguf file, a Hugging Face folder or a run
    data: str  # JSONL training data: chat "messages", "prompt"/"completion" or "text" per line
    method: str = "lora"  # "lora": low-rank adapters on the frozen model; "full": every weight
    objective: str = "sft"  # "sft": learn the answers; "dpo": prefer "chosen" over "rejected"
    rank: int = 16  # LoRA rank
    alpha: float = 32.0  # LoRA alpha: adapters add (alpha / rank) x B A x
    dropout: float = 0.0  # LoRA dropout on the adapters' inputs (peft's default: none)
    targets: tuple[str, ...] = ALL_TARGETS  # the layers LoRA adapts (Hugging Face names)
    # LoRA's frozen base: auto = int8 (per channel) where its matmuls run in int8, else the blocks
    # inference runs (a GGUF file's own Q4_1 / Q8_0); int8 / int4 / fp32 ask for one.
    base_dtype: str = "auto"  # LoRA's frozen base: auto, int8, int4 or fp32
    # LoRA's base matmuls: int8 (activations and gradients rounded to int8 per row, twice bf16's
    # rate with integer dot products), float (the base dequantized to bf16 / float32), auto (int8
    # where the CPU has VNNI or AMX, unless --base-dtype int4 or fp32)
    base_matmul: str = "auto"  # LoRA's base matmuls: auto (int8 with VNNI/AMX), int8 or float
    epochs: int = 1  # passes over the training data when --steps is 0
    steps: int = 0  # optimizer steps; 0 = --epochs passes over the training data
    seq_len: int = 1024  # the longest example in tokens; longer ones are an error (or --skip-bad)
    val: str = ""  # JSONL validation data; none = --val-fraction of the training lines
    val_fraction: float = 0.05  # share of training lines held out when there is no --val
    beta: float = 0.1  # DPO: how strongly the model is held near the reference
    skip_bad: bool = False  # skip (and count) bad lines instead of stopping at the first
    checkpointing: bool = False  # recompute activations in backward: less memory, ~30% slower
    compile: bool = True  # torch.compile the blocks (10-30 s before the first step, then faster)
    pack: bool = True  # put a micro-batch's examples end to end in one row (no padding)
    # LoRA: the float32 activations saved for backward (all of them in float32, the residual
    # stream and attention under bf16 autocast) are kept in bf16; the matmuls are unchanged
    # (FineTuner._autocast)
    bf16_saved: bool = True  # LoRA: backward's saved float32 activations in bf16 (less memory)
    lr: float = 0.0  # peak learning rate; 0 = 2e-4 for LoRA, 2e-5 for full fine-tuning
    weight_decay: float = 0.0  # AdamW decoupled weight decay on matrices
    batch_size: int = 4  # examples per micro-batch in each process (DPO: pairs)

    IDENTITY = (
        "method",
        "objective",
        "rank",
        "alpha",
        "dropout",
        "targets",
        "base_dtype",
        "base_matmul",
        "epochs",
        "seq_len",
        "val_fraction",
        "beta",
        *LoopConfig.IDENTITY,
    )
    BEFORE: ClassVar[dict[str, object]] = {"base_matmul": "float"}
    POSITIVE = ("rank", "epochs", "seq_len", *LoopConfig.POSITIVE)

    def check(self) -> None:
        super().check()
        for name, allowed in (
            ("method", METHODS),
            ("objective", OBJECTIVES),
            ("base_dtype", BASE_DTYPES),
            ("base_matmul", BASE_MATMULS),
        ):
            if getattr(self, name) not in allowed:
                choices = ", ".join(allowed)
                raise GenforgeError(
                    f"--{name.replace('_', '-')} must be one of {choices}, got {getattr(self, name)!r}."
                )
        if not 0 <= self.val_fraction < 0.5:
            raise GenforgeError(f"--val-fraction must be in [0, 0.5), got {self.val_fraction}.")
        if not 0 <= self.dropout < 1 or self.alpha <= 0 or self.beta <= 0:
            raise GenforgeError("--dropout must be in [0, 1), --alpha and --beta above 0.")
        unknown = [t for t in self.targets if t not in ALL_TARGETS]
        if unknown or not self.targets:
            raise GenforgeError(
                f"--targets takes layer names from {', '.join(ALL_TARGETS)}; got "
                f"{', '.join(unknown) or 'none'}."
            )
        if self.fsdp and self.method == "lora":
            raise GenforgeError(
                "--fsdp shards full fine-tuning; LoRA's adapters are small: run it under "
                "torchrun without --fsdp (data parallel)."
            )


def model_config(depth: int, vocab_size: int, seq_len: int) -> ModelConfig:
    """A llama-family model from the size dial: depth layers of width 64 x depth."""
    dim = HEAD_DIM * depth
    hidden = math.ceil(dim * 8 / 3 / 64) * 64  # gated MLP with the parameters of a 4x plain one
    return ModelConfig(
        arch="llama",
        vocab_size=vocab_size,
        dim=dim,
        n_layers=depth,
        n_heads=depth,
        n_kv_heads=depth,
        hidden_dim=hidden,
        norm_eps=1e-5,
        max_seq_len=seq_len,
        rope_theta=10000.0,
        tie_embeddings=True,
    )


def peak_lr(cfg: TrainConfig, model: ModelConfig) -> float:
    return cfg.lr or 0.04 / math.sqrt(model.dim)


def total_steps(cfg: TrainConfig, model: ModelConfig, world_size: int) -> int:
    if cfg.steps:
        return cfg.steps
    per_step = cfg.batch_size * cfg.grad_accum * world_size * cfg.seq_len
    return max(1, math.ceil(TOKENS_PER_PARAM * model.n_params / per_step))


def lr_at(step: int, steps: int, lr: float, warmup: int, schedule: str, min_frac: float) -> float:
    """The learning rate of optimizer step `step` (0-based) of `steps`."""
    if step < warmup:
        return lr * (step + 1) / warmup
    if schedule == "wsd":
        decay = max(1, steps // 5)
        left = steps - step
        return lr if left > decay else lr * left / decay
    progress = (step - warmup) / max(1, steps - warmup)
    return lr * (min_frac + (1 - min_frac) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


@dataclass(kw_only=True)
class ImageTrainConfig(LoopConfig):
    """A text-to-image diffusion run."""

    data: str  # mnist, shapes, or a folder of captioned pictures
    size: int = 32  # pixels per side the model works at
    widths: tuple[int, ...] = (64, 128, 128)  # UNet channels per resolution
    text_dim: int = 128  # the text encoder's width
    text_layers: int = 2
    pooled: bool = True  # the caption's mean state also joins the UNet's timestep embedding
    batch_size: int = 32
    steps: int = 2500
    lr: float = 5e-4
    weight_decay: float = 0.01
    caption_dropout: float = 0.1  # share of captions trained as empty (guidance's unconditional)
    ema: float = 0.995  # EMA decay of the weights sampling uses (about the last 200 steps)
    min_snr: float = 5.0  # min-SNR loss weighting's gamma; 0 = plain MSE
    sample_steps: int = 25  # DPM-Solver steps for the training grid
    guidance: float = 3.0  # the training grid's guidance

    IDENTITY = (
        "data",
        "size",
        "widths",
        "text_dim",
        "text_layers",
        "pooled",
        *LoopConfig.IDENTITY,
    )
    POSITIVE = ("size", "text_dim", "text_layers", *LoopConfig.POSITIVE)

    def check(self) -> None:
        super().check()
        if self.steps < 1:
            raise GenforgeError(f"--steps must be at least 1, got {self.steps}.")
        if not 0 <= self.caption_dropout < 1 or not 0 <= self.ema < 1:
            raise GenforgeError("--caption-dropout and --ema must be in [0, 1).")
