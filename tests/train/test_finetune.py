"""Fine-tuning SmolLM2-135M-Instruct on tiny synthetic data: LoRA learns a new answer format, the
adapter loads for chat, resume after a kill is exact, DPO moves the preference margin, full
fine-tuning writes a loadable model folder, and bad data or settings stop with one clear sentence."""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import genforge
from genforge import hub
from genforge.cli import main
from genforge.errors import GenforgeError
from genforge.generate.loading import cpu_kernels
from genforge.train import checkpoint
from genforge.train.config import ALL_TARGETS, FinetuneConfig
from genforge.train.finetune import REFERENCE, FineTuner, finetune
from genforge.train.metrics import METRICS
from genforge.weights import peft

MODEL = "smollm2-135m-instruct"
# A made-up answer format the base model never writes: it answers sums in prose or as "a + b =".
FORMAT = re.compile(r"ANSWER: \d+")
# Small and fast: a 64-token context holds SmolLM2's system prompt, the question and the answer;
# evaluations, samples and checkpoints only where a test looks at them.
# compile=False: the kill -9 resume test runs the default (compiled blocks); the rest skip the
# compiler's ~15 s before their few steps.
FAST = dict(seq_len=64, sample_every=1000, sample_tokens=4, log_every=1, keep=1, compile=False)


def sums(n: int, seed: int) -> list[tuple[int, int]]:
    rng = random.Random(seed)
    return [(rng.randint(10, 49), rng.randint(10, 49)) for _ in range(n)]


def addition_chat(a: int, b: int) -> dict:
    return {
        "messages": [
            {"role": "user", "content": f"What is {a} plus {b}?"},
            {"role": "assistant", "content": f"ANSWER: {a + b}"},
        ]
    }


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def addition_data(folder: Path, n_train: int, n_val: int) -> tuple[Path, Path]:
    pairs = sums(n_train + n_val, seed=0)
    rows = [addition_chat(a, b) for a, b in pairs]
    train = write_jsonl(folder / "train.jsonl", rows[:n_train])
    return train, write_jsonl(folder / "val.jsonl", rows[n_train:])


def records(run: Path, kind: str) -> list[dict]:
    lines = (run / METRICS).read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def train_losses(run: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in records(run, "train")}


def cli(*args: str) -> subprocess.Popen:
    """`genforge finetune ARGS` in its own process, on one thread: the same thread count in every
    run, so the same arithmetic (reductions split across threads would round differently)."""
    return subprocess.Popen(
        [sys.executable, "-m", "genforge", "finetune", *args],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def one_line_error(err: str) -> str:
    err = err.strip()
    assert "Traceback" not in err, err
    assert len(err.splitlines()) == 1, err
    return err


def test_sft_lora_learns_a_new_answer_format_and_chat_uses_the_adapter(smollm2_path, tmp_path):
    train, val = addition_data(tmp_path, 32, 8)
    run = tmp_path / "run"
    cfg = FinetuneConfig(
        model=MODEL,
        data=str(train),
        val=str(val),
        out=str(run),
        steps=20,
        eval_every=5,
        save_every=20,
        **FAST,
    )
    result = finetune(cfg, progress=False)

    losses = train_losses(run)
    assert sorted(losses) == list(range(1, 21))
    evals = records(run, "eval")
    assert [e["step"] for e in evals] == [0, 5, 10, 15, 20]  # step 0: the base model
    first, last = evals[0]["val_loss"], evals[-1]["val_loss"]
    assert first > 2.0 and losses[1] > 2.0, evals  # the base model does not answer this way
    assert last < 0.4 and last < first / 4, evals  # the adapter has learnt it
    assert result["val_loss"] == pytest.approx(last) and result["step"] == 20

    saved = checkpoint.latest(run)
    assert saved.name == "step_0000020" and len(checkpoint.checkpoints(run)) == 1  # keep=1
    assert {peft.CONFIG, peft.WEIGHTS, checkpoint.STATE} <= {p.name for p in saved.iterdir()}
    config = json.loads((saved / peft.CONFIG).read_text())
    assert (config["r"], config["lora_alpha"]) == (16, 32.0)
    assert config["target_modules"] == sorted(ALL_TARGETS)
    assert config["base_model_name_or_path"] == MODEL
    tensors = load_file(saved / peft.WEIGHTS)
    assert len(tensors) == 2 * len(ALL_TARGETS) * 30  # A and B of 7 layers in 30 blocks
    assert any(k.endswith("lora_B.weight") and t.abs().sum() > 0 for k, t in tensors.items())

    llm = genforge.load(MODEL, adapter=str(run), progress=False)
    held_out = [{"role": "user", "content": "What is 23 plus 31?"}]
    assert (23, 31) not in sums(40, seed=0)
    answer = llm.chat(held_out, max_tokens=12, temperature=0)
    assert FORMAT.fullmatch(answer.strip()), answer
    base = genforge.load(MODEL, progress=False).chat(held_out, max_tokens=12, temperature=0)
    assert not FORMAT.search(base), base  # the adapter made the difference


def resume_args(data: Path, val: Path) -> list[str]:
    return [
        "--model",
        MODEL,
        "--data",
        str(data),
        "--val",
        str(val),
        "--steps",
        "6",
        "--batch-size",
        "2",
        "--seq-len",
        "64",
        "--rank",
        "4",
        "--dropout",
        "0.2",  # dropout draws from the torch RNG: a resume must restore it
        "--base-dtype",
        "fp32",
        "--save-every",
        "2",
        "--eval-every",
        "1000",
        "--sample-every",
        "1000",
        "--sample-tokens",
        "2",
        "--log-every",
        "1",
    ]


def test_resume_after_sigkill_matches_an_uninterrupted_run(smollm2_path, tmp_path):
    data, val = addition_data(tmp_path, 16, 2)
    args = resume_args(data, val)
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    p = cli(*args, "--out", str(whole))
    _, err = p.communicate(timeout=600)
    assert p.returncode == 0, err
    # the command restarted itself under mimalloc (genforge.allocator), killable by its first pid
    assert json.loads((whole / "run.json").read_text())["allocator"] == "mimalloc"

    p = cli(*args, "--out", str(cut))
    deadline = time.time() + 300
    try:
        while not checkpoint.checkpoints(cut) and p.poll() is None and time.time() < deadline:
            time.sleep(0.01)
    finally:
        p.send_signal(signal.SIGKILL)
    _, err = p.communicate(timeout=60)
    assert p.returncode == -signal.SIGKILL, err  # killed mid-run, not finished
    killed_at = checkpoint.latest(cut)
    assert killed_at is not None and killed_at.name != "step_0000006"
    p = cli(*args, "--out", str(cut), "--resume")
    out, err = p.communicate(timeout=600)
    assert p.returncode == 0, err
    assert "adapter:" in out and f"--adapter {cut}" in out

    a, b = train_losses(whole), train_losses(cut)
    assert sorted(b) == sorted(a) == list(range(1, 7))  # each step once, none lost or repeated
    # The same process settings compute the same numbers: equality, not closeness.
    assert b == a
    wa = load_file(checkpoint.latest(whole) / peft.WEIGHTS)
    wb = load_file(checkpoint.latest(cut) / peft.WEIGHTS)
    assert wa.keys() == wb.keys()
    for name in wa:
        assert torch.equal(wa[name], wb[name]), name


BAD_LINES = [
    ('{"messages": [{"role": "user"', r"not valid JSON"),
    ('{"prompt": "What is 1 plus 2?"}', r'"completion" must be a string, but it is missing'),
    (
        json.dumps({"prompt": "Count.", "completion": " ".join(["one two three"] * 40)}),
        r"\d+ tokens, longer than the context of 64; raise --seq-len",
    ),
    (
        json.dumps({"messages": [{"role": "user", "content": "What is 1 plus 2?"}]}),
        r"no assistant turn",
    ),
]


@pytest.mark.parametrize("bad, message", BAD_LINES, ids=["json", "missing", "long", "no-answer"])
def test_a_bad_line_stops_the_cli_with_its_file_and_line(
    bad, message, smollm2_path, tmp_path, capsys
):
    rows = [addition_chat(a, b) for a, b in sums(2, seed=1)]
    data = write_jsonl(tmp_path / "data.jsonl", [*rows, bad])
    out = tmp_path / "run"
    args = ["finetune", "--model", MODEL, "--data", str(data), "--out", str(out), "--seq-len", "64"]
    assert main(args) == 1
    err = one_line_error(capsys.readouterr().err)
    assert err.startswith(f"genforge: error: {data} line 3: "), err
    assert re.search(message, err), err
    assert not out.exists()  # the data is read before anything is written (or loaded)


def test_a_bad_preference_line_names_its_line(smollm2_path, tmp_path, capsys):
    good = {"prompt": "Say yes.", "chosen": "YES", "rejected": "yes"}
    data = write_jsonl(tmp_path / "pairs.jsonl", [good, {"prompt": "Say no.", "chosen": "NO"}])
    args = ["finetune", "--model", MODEL, "--data", str(data), "--objective", "dpo"]
    assert main([*args, "--out", str(tmp_path / "run")]) == 1
    err = one_line_error(capsys.readouterr().err)
    assert err.startswith(f"genforge: error: {data} line 2: a preference line needs"), err
    assert 'has no "rejected"' in err


def test_skip_bad_needs_one_good_line(smollm2_path, tmp_path, capsys):
    data = write_jsonl(tmp_path / "data.jsonl", [bad for bad, _ in BAD_LINES])
    args = ["finetune", "--model", MODEL, "--data", str(data), "--out", str(tmp_path / "run")]
    assert main([*args, "--seq-len", "64", "--skip-bad"]) == 1
    err = one_line_error(capsys.readouterr().err)
    assert f"{data} has no usable example: all 4 lines were bad; the first: {data} line 1: " in err
    assert "not valid JSON" in err


def test_skip_bad_trains_on_the_good_lines_and_counts_the_rest(smollm2_path, tmp_path, capsys):
    good = [addition_chat(a, b) for a, b in sums(6, seed=2)]
    rows = [good[0], BAD_LINES[0][0], *good[1:4], BAD_LINES[1][0], BAD_LINES[2][0]]
    rows += [*good[4:], BAD_LINES[3][0]]
    data = write_jsonl(tmp_path / "data.jsonl", rows)
    out = tmp_path / "run"
    args = ["finetune", "--model", MODEL, "--data", str(data), "--out", str(out), "--skip-bad"]
    args += ["--seq-len", "64", "--steps", "1", "--batch-size", "2", "--rank", "2"]
    args += ["--targets", "q_proj,v_proj", "--base-dtype", "fp32", "--sample-tokens", "1"]
    assert main([*args, "--no-compile"]) == 0
    printed = capsys.readouterr().out
    assert f"skipped 4 bad lines of {data} (--skip-bad)" in printed, printed
    state = torch.load(checkpoint.latest(out) / checkpoint.STATE, weights_only=True)
    assert state["step"] == 1
    run_info = json.loads((out / "run.json").read_text())
    assert run_info["steps"] == 1 and run_info["train"]["targets"] == ["q_proj", "v_proj"]


def test_settings_no_run_can_use_are_refused_before_loading(tmp_path, capsys):
    data = write_jsonl(tmp_path / "data.jsonl", [addition_chat(1, 2)])
    base = ["finetune", "--model", MODEL, "--data", str(data), "--out", str(tmp_path / "run")]
    cases = [
        (["--targets", "q_proj,qkv"], r"--targets takes layer names from q_proj, .*; got qkv\."),
        (["--method", "qlora"], r"--method must be one of lora, full, got 'qlora'"),
        (["--objective", "ppo"], r"--objective must be one of sft, dpo"),
        (["--rank", "0"], r"--rank must be at least 1"),
        (["--val-fraction", "0.5"], r"--val-fraction must be in \[0, 0.5\)"),
    ]
    for extra, message in cases:
        assert main(base + extra) == 1, extra
        assert re.search(message, one_line_error(capsys.readouterr().err)), extra
    with pytest.raises(GenforgeError, match=r"--targets .*got none"):
        FinetuneConfig(model=MODEL, data=str(data), out="x", targets=()).check()
    assert not (tmp_path / "run").exists()


@pytest.fixture(scope="module")
def small_run(smollm2_path, tmp_path_factory) -> FinetuneConfig:
    """A finished one-step LoRA run (rank 4) and the config that made it."""
    folder = tmp_path_factory.mktemp("small-run")
    data, val = addition_data(folder, 4, 1)
    cfg = FinetuneConfig(
        model=MODEL,
        data=str(data),
        val=str(val),
        out=str(folder / "run"),
        steps=1,
        rank=4,
        targets=("q_proj",),
        base_dtype="fp32",
        **FAST,
    )
    finetune(cfg, progress=False)
    return cfg


def test_a_run_folder_is_not_overwritten_and_resumes_only_as_itself(small_run, tmp_path, capsys):
    with pytest.raises(GenforgeError, match=r"already holds a run \(checkpoint step_0000001\)"):
        FineTuner(small_run)
    with pytest.raises(GenforgeError, match=r"incompatible run \(rank=4; now rank=8\)"):
        FineTuner(replace(small_run, resume=True, rank=8))
    with pytest.raises(GenforgeError, match=r"incompatible run \(targets=.*now targets="):
        FineTuner(replace(small_run, resume=True, targets=("q_proj", "v_proj")))
    # a checkpoint written before --base-matmul existed was trained with float matmuls
    old = tmp_path / "old"
    shutil.copytree(small_run.out, old)
    state_file = checkpoint.latest(old) / checkpoint.STATE
    state = torch.load(state_file, weights_only=False)
    del state["train"]["base_matmul"]
    torch.save(state, state_file)
    with pytest.raises(GenforgeError, match=r"\(base_matmul=float; now base_matmul=auto\)"):
        FineTuner(replace(small_run, out=str(old), resume=True))
    FineTuner(replace(small_run, out=str(old), resume=True, base_matmul="float"))
    empty = tmp_path / "empty"
    empty.mkdir()
    args = ["finetune", "--model", MODEL, "--data", small_run.data, "--out", str(empty)]
    assert main([*args, "--resume", "--seq-len", "64"]) == 1
    err = one_line_error(capsys.readouterr().err)
    assert f"--resume: {empty} has no checkpoint yet; drop --resume" in err
    assert not any(empty.iterdir())


def test_the_fine_tuner_drops_the_gguf_header_once_its_model_is_built(small_run, tmp_path):
    """As inference's load does, fine-tuning's lets go of the header read for the load (the
    tokenizer, built first, holds the vocabulary: Qwen's lists are ~33 MB of Python strings)."""
    from genforge.weights import gguf

    tuner = FineTuner(replace(small_run, out=str(tmp_path / "run")))
    assert gguf._last is None
    ids = tuner.tokenizer.encode("What is 2 + 3?")
    assert tuner.tokenizer.decode(ids).strip() == "What is 2 + 3?"


@pytest.mark.slow
def test_full_fine_tuning_of_gemma3_is_refused(tmp_path):
    path = hub.installed_path("gemma3-270m")
    if path is None:
        pytest.skip("gemma3-270m is not installed; install it with: genforge pull gemma3-270m")
    data = write_jsonl(tmp_path / "data.jsonl", [{"prompt": "Hi", "completion": "Hello"}] * 4)
    cfg = FinetuneConfig(model="gemma3-270m", data=str(data), out=str(tmp_path / "run"))
    with pytest.raises(GenforgeError, match=r"full fine-tuning writes model folders, but .*gemma3"):
        FineTuner(replace(cfg, method="full"))
    assert not (tmp_path / "run").exists()


def preference_data(folder: Path) -> tuple[Path, Path]:
    """Pairs whose chosen answer is the word in capitals, the rejected one in lower case."""
    words = (
        "apple",
        "river",
        "stone",
        "cloud",
        "paper",
        "green",
        "table",
        "music",
        "light",
        "window",
        "garden",
        "silver",
        "bread",
        "horse",
        "candle",
        "forest",
        "winter",
        "orange",
        "pencil",
        "bottle",
        "mirror",
        "rocket",
        "castle",
        "violin",
        "tiger",
        "planet",
        "spoon",
        "ladder",
        "lemon",
        "carpet",
        "button",
        "feather",
    )
    rows = [{"prompt": f"Say the word {w}.", "chosen": w.upper(), "rejected": w} for w in words]
    train = write_jsonl(folder / "train.jsonl", rows[:24])
    return train, write_jsonl(folder / "val.jsonl", rows[24:])


def test_dpo_learns_the_preference(smollm2_path, tmp_path):
    train, val = preference_data(tmp_path)
    run = tmp_path / "run"
    cfg = FinetuneConfig(
        model=MODEL,
        data=str(train),
        val=str(val),
        out=str(run),
        objective="dpo",
        steps=8,
        batch_size=2,  # pairs: a chosen and a rejected answer each
        lr=4e-4,  # twice the LoRA default: 8 steps move the margin well clear of 0 (about 0.75)
        eval_every=4,
        save_every=8,
        base_dtype="fp32",
        **FAST,
    )
    result = finetune(cfg, progress=False)
    evals = records(run, "eval")
    assert [e["step"] for e in evals] == [0, 4, 8]
    first, last = evals[0], evals[-1]
    assert {"val_loss", "val_accuracy", "val_margin"} <= first.keys()
    # Step 0 is the reference itself (the adapters' B starts at zero): every margin is 0.
    assert first["val_margin"] == pytest.approx(0, abs=1e-4), first
    assert first["val_loss"] == pytest.approx(math.log(2), abs=1e-4)  # -log sigmoid(0)
    assert last["val_margin"] > first["val_margin"] + 0.3, evals
    assert last["val_accuracy"] >= first["val_accuracy"] and last["val_accuracy"] >= 0.75, evals
    assert last["val_loss"] < first["val_loss"] - 0.15, evals
    assert result["val_accuracy"] == pytest.approx(last["val_accuracy"])

    saved = checkpoint.latest(run)
    reference = torch.load(saved / REFERENCE, weights_only=True)
    assert len(reference) == 32  # every pair, training and validation, by "FILE:LINE"
    chosen, rejected = reference[f"{train}:1"]
    assert chosen < 0 and rejected < 0


@pytest.mark.slow
def test_full_fine_tuning_writes_a_model_folder_that_loads(smollm2_path, tmp_path):
    train, val = addition_data(tmp_path, 8, 2)
    run = tmp_path / "run"
    cfg = FinetuneConfig(
        model=MODEL,
        data=str(train),
        val=str(val),
        out=str(run),
        method="full",
        steps=3,
        batch_size=2,
        lr=1e-4,
        eval_every=3,
        save_every=3,
        **FAST,
    )
    result = finetune(cfg, progress=False)
    assert result["method"] == "full" and result["step"] == 3
    losses = train_losses(run)
    assert losses[3] < losses[1], losses

    saved = checkpoint.latest(run)
    files = {p.name for p in saved.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", checkpoint.STATE} <= files
    assert "tokenizer_config.json" in files and peft.CONFIG not in files
    assert json.loads((saved / "config.json").read_text())["model_type"] == "llama"

    llm = genforge.load(str(run), dtype="fp32", progress=False)
    assert llm.config.n_layers == 30 and llm.config.arch == "llama"
    question = [{"role": "user", "content": "What is 12 plus 30?"}]
    answer = llm.chat(question, max_tokens=12, temperature=0)
    assert FORMAT.fullmatch(answer.strip()), answer  # the folder holds the trained weights
    del llm
    shutil.rmtree(run)  # 1.6 GB (weights and AdamW's moments): pytest keeps its last folders


def test_finetune_help_names_the_key_flags():
    r = subprocess.run(
        [sys.executable, "-m", "genforge", "finetune", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    text = " ".join(r.stdout.split())  # argparse wraps lines
    assert "usage: genforge finetune" in text and "--adapter" in text
    flags = ("--model", "--data", "--method", "--objective", "--rank", "--targets")
    flags += (
        "--base-dtype",
        "--base-matmul",
        "--seq-len",
        "--val",
        "--skip-bad",
        "--resume",
        "--out",
        "--beta",
    )
    for flag in flags:
        assert flag in text, flag


@pytest.mark.parametrize(
    ("base_dtype", "base_matmul", "vnni", "want"),
    [
        ("auto", "auto", True, "int8"),  # integer dot products: an int8 base multiplied in int8
        ("int8", "auto", True, "int8"),
        ("int8", "int8", False, "int8"),  # asked for: runs without VNNI too (slower)
        ("int8", "float", True, "q8"),  # the blocks inference runs, dequantized to bf16 / float32
        ("int4", "auto", True, "q4"),  # 4 bits asked for: int8 matmuls would need 8
        ("fp32", "auto", True, None),
        ("int4", "int8", True, "error"),
        ("fp32", "int8", True, "error"),
    ],
)
def test_the_lora_base_is_int8_where_its_matmuls_run_in_int8(
    monkeypatch, base_dtype, base_matmul, vnni, want
):
    from genforge.train import finetune as ft
    from genforge.train.distributed import World

    if want in ("q8", "q4") and cpu_kernels() is None:
        pytest.skip("genforge's kernels are not built here (no compiler, or GENFORGE_KERNELS=0)")
    monkeypatch.setattr(ft, "native_int8", lambda device: vnni)  # the CPU's flags, as if
    t = FineTuner.__new__(FineTuner)  # the choice only: no model
    t.cfg = FinetuneConfig(
        model=MODEL, data="unused", out="unused", base_dtype=base_dtype, base_matmul=base_matmul
    )
    t.world = World()
    if want == "error":
        with pytest.raises(GenforgeError, match="--base-matmul int8 multiplies LoRA's int8 base"):
            t._base_kind()
    else:
        assert t._base_kind() == want


def test_a_micro_batch_is_packed_into_one_row_with_the_same_targets():
    from genforge.data.sft import Example
    from genforge.model.attention import packing
    from genforge.train.distributed import World

    t = FineTuner.__new__(FineTuner)  # the layout only: no model
    t.cfg = FinetuneConfig(model=MODEL, data="unused", out="unused", seq_len=256)
    t.world = World()
    rng = random.Random(0)
    examples = []
    for i, n in enumerate((120, 30, 65, 12, 100, 40)):
        ids = [rng.randint(1, 1000) for _ in range(n)]
        mask = [False] * (n // 2) + [True] * (n - n // 2)  # the answer: the second half
        examples.append(Example(ids, mask, f"data.jsonl:{i + 1}"))
    px, py, positions = t._packed(examples)
    x, y = t._collate(examples)
    assert x.shape == (6, 128)  # padded: 6 rows of the longest (119 inputs) rounded up to 64
    assert px.shape == (1, 384)  # packed: 361 inputs end to end, rounded up to 64
    # every example's inputs and targets in turn, counting positions from 0; then padding (-1)
    at = 0
    for e in examples:
        n = len(e.ids) - 1
        assert torch.equal(px[0, at : at + n], torch.tensor(e.ids[:-1]))
        assert torch.equal(positions[0, at : at + n], torch.arange(n))
        learnt = torch.tensor(e.mask[1:])
        want = torch.where(learnt, torch.tensor(e.ids[1:]), -100)
        assert torch.equal(py[0, at : at + n], want)
        at += n
    assert (positions[0, at:] == -1).all() and (py[0, at:] == -100).all()
    assert int((py != -100).sum()) == int((y != -100).sum())  # the same targets, no more
    # attention: one example a row, as wide as the longest rounded up to 16
    gather, scatter = packing(positions)
    assert gather.shape == (6, 128)
    assert torch.equal(px[0, gather[0, :119]], px[0, :119])


@pytest.mark.slow
def test_two_ddp_processes_fine_tune_what_one_process_does(smollm2_path, tmp_path):
    """LoRA under torchrun: 2 processes x 2 examples make the same steps as 1 process x 2
    micro-batches of 2 (the loop's data split), so the same losses and the same adapter."""
    data, val = addition_data(tmp_path, 16, 2)
    args = [
        "finetune", "--model", MODEL, "--data", str(data), "--val", str(val), "--steps", "4",
        "--batch-size", "2", "--seq-len", "64", "--rank", "4", "--base-dtype", "fp32",
        "--dtype", "fp32", "--eval-every", "1000", "--sample-every", "1000", "--sample-tokens",
        "2", "--log-every", "1", "--no-compile",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one, two = tmp_path / "one", tmp_path / "two"
    runs = [
        [sys.executable, "-m", "genforge", *args, "--grad-accum", "2", "--out", str(one)],
        [
            sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
            "2", "-m", "genforge", *args, "--out", str(two),
        ],
    ]  # fmt: skip
    for cmd in runs:
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-4000:]
    a, b = train_losses(one), train_losses(two)
    assert sorted(a) == sorted(b) == [1, 2, 3, 4]
    assert [b[s] for s in sorted(b)] == pytest.approx([a[s] for s in sorted(a)], rel=1e-4)
    assert [r["tokens"] for r in records(one, "train")] == [
        r["tokens"] for r in records(two, "train")
    ]  # counted over both ranks
    wa = load_file(checkpoint.latest(one) / peft.WEIGHTS)
    wb = load_file(checkpoint.latest(two) / peft.WEIGHTS)
    assert wa.keys() == wb.keys()
    for name in wa:
        # float32; gradients summed in another order (an all-reduce) move Adam's steps by ~1e-6
        # here, a missed all-reduce or a wrong split by about the learning rate (2e-4) per step
        torch.testing.assert_close(wb[name], wa[name], rtol=1e-4, atol=2e-5, msg=name)


def test_lora_in_float32_keeps_backwards_activations_in_bf16(monkeypatch):
    """`bf16_saved`: the compiled blocks' saved activations go to bf16 (the adapters do not), the
    forward is untouched, and the gradients are those of float32 up to bf16's rounding of the
    activations they are made from (8 significant bits: within 2^-6 of the largest)."""
    from tiny import random_transformer

    from genforge.model import lora
    from genforge.model.config import ModelConfig
    from genforge.train import finetune as ft

    cfg = ModelConfig(
        vocab_size=97, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=96, max_seq_len=64
    )
    model = random_transformer(cfg, 0)
    torch.manual_seed(3)
    lora.add_lora(model, lora.TARGETS, 4, 8.0)
    for name, p in model.named_parameters():
        if p.requires_grad and "lora_b" in name:
            torch.nn.init.normal_(p, std=0.3)  # B at zero would leave A without gradients
    model.train()
    model.compile_blocks(memory_budget=0.5)
    tokens = torch.randint(0, cfg.vocab_size, (2, 24), generator=torch.Generator().manual_seed(7))
    targets = torch.roll(tokens, -1, dims=1)
    monkeypatch.setattr(ft, "BF16_SAVED_MIN", 1)  # every float32 activation of the tiny model
    rounded = []

    def pack(t):
        packed = ft._pack_bf16(t)
        rounded.append(packed[1])
        assert not (packed[1] and isinstance(t, torch.nn.Parameter))
        return packed

    runs = []
    for hooks in (False, True, False, True):  # the first two compile; the last two are compared
        model.zero_grad(set_to_none=True)
        rounded.clear()
        saving = torch.autograd.graph.saved_tensors_hooks(pack, ft._unpack_bf16)
        with saving if hooks else contextlib.nullcontext():
            loss = model(tokens, targets=targets)
        loss.backward()
        grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
        runs.append((loss.detach(), grads, any(rounded)))
    (loss32, grads32, _), (loss16, grads16, packed) = runs[2:]
    assert packed
    assert torch.equal(loss16, loss32)
    for name, g in grads32.items():
        assert (grads16[name] - g).abs().max() <= 2**-6 * g.abs().max(), name
