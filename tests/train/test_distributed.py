"""Scale-out under torchrun: two processes (DDP, or FSDP2 with --fsdp) train what one process does.

The global batch of a step is batch x accum x processes rows in an order fixed by (seed, step), so
2 processes x 4 rows must reproduce 1 process x 4 rows x 2 micro-batches: the same losses, the same
validation figures and the same weights, up to float reduction order.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from genforge.data.shards import prepare
from genforge.tokenizer import bpe
from genforge.train import checkpoint, distributed
from genforge.train.config import TrainConfig
from genforge.train.loop import train
from genforge.train.metrics import METRICS

STEPS, GLOBAL_BATCH = 8, 8
# 65 validation windows: an odd count, so one rank's share is padded with a zero-weight row.
RUN = dict(
    depth=2,
    seq_len=32,
    steps=STEPS,
    log_every=1,
    eval_every=4,
    eval_tokens=65 * 32,
    sample_tokens=8,
    dtype="fp32",
)
# Adam divides by sqrt(v), so reduction-order noise in a near-zero gradient moves a weight by up to
# ~1e-5 after 8 steps; a real bug (a missed all-reduce, wrong rows, a shard-local clip) moves
# weights by about the learning rate (3.5e-3 at depth 2).
WEIGHTS_TOL = dict(rtol=1e-4, atol=1e-4)
# Each 2-process run's micro-batch shape; FSDP's also exercises accumulation without gradient sync.
SHAPES = {
    "ddp": dict(batch_size=4, grad_accum=1, fsdp=False),
    "fsdp": dict(batch_size=2, grad_accum=2, fsdp=True),
}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A prepared data folder (vocab 384) over ~200 KB of random sentences."""
    root = tmp_path_factory.mktemp("dist")
    rng = random.Random(0)
    words = [
        "river",
        "stone",
        "light",
        "garden",
        "window",
        "engine",
        "number",
        "letter",
        "silver",
        "market",
        "quiet",
        "rapid",
        "green",
        "north",
        "paper",
        "winter",
        "sound",
        "bridge",
        "forest",
        "mirror",
        "the",
        "a",
        "of",
        "and",
        "to",
        "in",
        "is",
        "was",
        "it",
        "for",
        "on",
        "with",
        "as",
        "by",
        "at",
    ]
    texts = []
    for _ in range(200):
        lines = [
            " ".join(rng.choices(words, k=rng.randint(4, 14))).capitalize()
            + f"{rng.choice('.!?')} {rng.randint(0, 999)}"
            for _ in range(rng.randint(10, 30))
        ]
        texts.append("\n".join(lines) + "\n")
    corpus = root / "corpus"
    corpus.mkdir()
    for i, text in enumerate(texts):
        (corpus / f"doc{i:03d}.txt").write_text(text)
    tok = bpe.save(bpe.train_bpe(texts, 384), root / "tokenizer")
    prepare([str(corpus)], root / "data", tok, val_fraction=0.05, progress=False)
    return root / "data"


@pytest.fixture(scope="module")
def single(data, tmp_path_factory):
    """The reference: one process, 2 micro-batches of 4 rows per step."""
    out = tmp_path_factory.mktemp("single") / "run"
    train(
        TrainConfig(data=str(data), out=str(out), batch_size=4, grad_accum=2, **RUN), progress=False
    )
    return out


def torchrun(data, out, *flags: str, batch_size: int, grad_accum: int, fsdp: bool) -> None:
    """`genforge train` in 2 processes, one thread each (the gloo backend on CPU)."""
    args = [f"--{k.replace('_', '-')}={v}" for k, v in RUN.items()]
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "genforge",
        "train",
        "--data",
        str(data),
        "--out",
        str(out),
        *args,
        f"--batch-size={batch_size}",
        f"--grad-accum={grad_accum}",
        *(["--fsdp"] if fsdp else []),
        *flags,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]


@pytest.fixture(scope="module")
def ddp(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp") / "run"
    torchrun(data, out, **SHAPES["ddp"])
    return out


@pytest.fixture(scope="module")
def fsdp(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("fsdp") / "run"
    torchrun(data, out, **SHAPES["fsdp"])
    return out


def records(run, kind: str) -> list[dict]:
    lines = (run / METRICS).read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def assert_same_run(a, b, weights_tol: dict, same_samples: bool = True) -> None:
    train_a, train_b = records(a, "train"), records(b, "train")
    assert [r["step"] for r in train_a] == [r["step"] for r in train_b] == list(range(1, STEPS + 1))
    assert [r["tokens"] for r in train_a] == [r["tokens"] for r in train_b]
    losses_b = [r["loss"] for r in train_b]
    assert losses_b == pytest.approx([r["loss"] for r in train_a], rel=1e-4)
    eval_a, eval_b = records(a, "eval"), records(b, "eval")
    assert [r["step"] for r in eval_a] == [r["step"] for r in eval_b] == [4, 8]
    for ra, rb in zip(eval_a, eval_b, strict=True):
        assert rb["val_loss"] == pytest.approx(ra["val_loss"], rel=1e-5)
        assert rb["val_bpb"] == pytest.approx(ra["val_bpb"], rel=1e-5)
    samples_a, samples_b = records(a, "sample"), records(b, "sample")
    assert [(r["step"], r["prompt"]) for r in samples_b] == [
        (r["step"], r["prompt"]) for r in samples_a
    ]  # written once (by rank 0), at the same steps
    if same_samples:
        assert [r["text"] for r in samples_b] == [r["text"] for r in samples_a]
    names = [p.name for p in checkpoint.checkpoints(a)]
    assert names == [p.name for p in checkpoint.checkpoints(b)] == ["step_0000004", "step_0000008"]
    for name in names:
        wa = load_file(a / checkpoint.CHECKPOINTS / name / "model.safetensors")
        wb = load_file(b / checkpoint.CHECKPOINTS / name / "model.safetensors")
        assert wa.keys() == wb.keys()
        for key in wa:
            torch.testing.assert_close(wb[key], wa[key], **weights_tol, msg=f"{name} {key}")


def test_two_ddp_processes_train_what_one_process_does(single, ddp):
    assert records(single, "train")[0]["loss"] > 5  # near uniform over 384 tokens: a fresh model
    assert_same_run(single, ddp, WEIGHTS_TOL)


def test_fsdp_with_accumulation_trains_what_one_process_does(single, fsdp):
    # 2 processes x 2 micro-batches of 2 rows: the same 8 rows per step, with FSDP2's gradient
    # sync skipped on the first micro-batch and the clip norm taken over sharded gradients.
    assert_same_run(single, fsdp, WEIGHTS_TOL, same_samples=False)  # 1e-5 may flip a draw
    ours = torch.load(checkpoint.latest(fsdp) / checkpoint.STATE, weights_only=True)["optimizer"]
    ref = torch.load(checkpoint.latest(single) / checkpoint.STATE, weights_only=True)["optimizer"]
    assert len(ours["state"]) == len(ref["state"])  # gathered whole, not one rank's shards
    for a, b in zip(ours["state"].values(), ref["state"].values(), strict=True):
        for moment in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(a[moment], b[moment], rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("kind", ["ddp", "fsdp"])
def test_a_resumed_two_process_run_continues_exactly(data, kind, request, tmp_path):
    """A run stopped after its step-4 checkpoint and resumed writes the same steps 5-8."""
    whole = request.getfixturevalue(kind)
    run = tmp_path / "run"
    shutil.copytree(whole, run)
    shutil.rmtree(checkpoint.latest(run))  # as if killed before the step-8 checkpoint
    torchrun(data, run, "--resume", **SHAPES[kind])
    assert_same_run(whole, run, dict(rtol=1e-6, atol=1e-7))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit, imported by torch.compile
def test_checkpoint_names_are_the_bare_models():
    model = torch.nn.Linear(2, 2)
    compiled = torch.compile(model)  # compiles nothing until called
    assert distributed.unwrap(compiled) is model  # not "_orig_mod."-prefixed keys
    assert distributed.unwrap(model) is model
