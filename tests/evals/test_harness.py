"""The evaluation harness: what it scores, how it counts, and that the record adds up.

Multiple-choice runs use the real SmolLM2 (a few items each); perplexity uses a tiny random model
whose numbers are recomputed here from the plain forward pass; the GSM8K checker and the code
tasks' program assembly are checked on known answers (the data sets' own reference solutions must
pass their tests in the sandbox, and wrong ones must fail).
"""

import json
import math
import subprocess
import sys

import pytest
import torch
from components import require_module

import genforge
from genforge.errors import GenforgeError
from genforge.evals import harness
from genforge.evals.tasks import TASKS, Item

require_module("pyarrow", "eval")


# -- multiple choice on the real model -------------------------------------------------------------


def test_multiple_choice_records_add_up(smollm2):
    res = harness.evaluate(smollm2, "arc_easy,winogrande", limit=6, progress=False)
    for name in ("arc_easy", "winogrande"):
        task, records = res["tasks"][name], res["items"][name]
        assert task["n"] == len(records) == 6
        for r in records:
            assert r["prediction"] == max(range(len(r["logprobs"])), key=r["logprobs"].__getitem__)
            assert r["correct"] == (r["prediction"] == r["gold"])
            per_char = [lp / len(c) for lp, c in zip(r["logprobs"], r["choices"], strict=True)]
            assert r["logprobs_per_char"] == pytest.approx(per_char)
            assert all(lp < 0 for lp in r["logprobs"])
        assert task["metrics"]["acc"] == sum(r["correct"] for r in records) / 6
        assert task["metrics"]["acc_norm"] == sum(r["correct_norm"] for r in records) / 6
    # WinoGrande: each option fills the blank, so each choice has its own context
    wino = res["items"]["winogrande"][0]
    assert isinstance(wino["prompt"], list) and len(set(wino["prompt"])) == 2
    assert res["model"]["sha256"] == genforge.hub.KNOWN["smollm2-135m-instruct"].sha256


def test_scores_agree_with_scoring_each_choice_alone(smollm2):
    """Batched scoring (shared contexts, many items per pass) gives what one pair at a time does."""
    res = harness.evaluate(smollm2, "hellaswag", limit=3, progress=False)
    assert len(res["items"]["hellaswag"]) == 3
    for r in res["items"]["hellaswag"]:
        for choice, lp in zip(r["choices"], r["logprobs"], strict=True):
            (alone,) = smollm2.loglikelihood([(r["prompt"], choice)])
            assert alone.logprob == pytest.approx(lp, abs=1e-3)


def test_same_command_same_numbers_and_seeded_shots(smollm2):
    a = harness.evaluate(smollm2, "arc_challenge", limit=4, shots=2, seed=7, progress=False)
    b = harness.evaluate(smollm2, "arc_challenge", limit=4, shots=2, seed=7, progress=False)
    c = harness.evaluate(smollm2, "arc_challenge", limit=4, shots=2, seed=8, progress=False)
    ra, rb, rc = (x["items"]["arc_challenge"] for x in (a, b, c))
    assert [r["logprobs"] for r in ra] == [r["logprobs"] for r in rb]
    assert [r["prompt"] for r in ra] == [r["prompt"] for r in rb]
    assert [r["prompt"] for r in ra] != [r["prompt"] for r in rc]
    assert len(ra) == 4
    for r in ra:
        examples = r["prompt"].split("\n\n")
        assert len(examples) == 3  # two solved examples, then the question
        question = examples[-1]
        assert all(e.startswith("Question: ") and "\nAnswer: " in e for e in examples[:2])
        assert question not in examples[:2]  # an item is never its own example
    assert a["tasks"]["arc_challenge"]["shots"] == 2 and a["settings"]["seed"] == 7


def test_mmlu_covers_57_subjects_with_macro_and_micro(smollm2):
    res = harness.evaluate(smollm2, "mmlu", limit=1, progress=False)
    task, records = res["tasks"]["mmlu"], res["items"]["mmlu"]
    assert len(records) == len(task["groups"]) == 57
    assert task["metrics"]["acc_macro"] == pytest.approx(sum(task["groups"].values()) / 57)
    assert task["metrics"]["acc_micro"] == task["metrics"]["acc"]
    first = records[0]
    assert first["prompt"].startswith(
        f"The following are questions (with answers) about {first['group'].replace('_', ' ')}."
    )


def test_mmlu_five_shot_uses_the_dev_examples(smollm2):
    res = harness.evaluate(smollm2, "mmlu", limit=1, shots=5, progress=False)
    prompt = res["items"]["mmlu"][0]["prompt"]
    assert prompt.count("\nAnswer: ") == 5 and prompt.endswith("\nAnswer:")
    with pytest.raises(GenforgeError, match="--shots 5 or fewer"):
        harness.evaluate(smollm2, "mmlu", limit=1, shots=6, progress=False)


def test_bad_task_and_settings_are_one_sentence(smollm2):
    with pytest.raises(GenforgeError, match="unknown task 'helaswag'"):
        harness.resolve("helaswag")
    with pytest.raises(GenforgeError, match="--limit must be at least 1"):
        harness.evaluate(smollm2, "piqa", limit=0, progress=False)
    with pytest.raises(GenforgeError, match="--shots must be 0 or more"):
        harness.evaluate(smollm2, "piqa", shots=-1, progress=False)


# -- GSM8K ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("output", "gold", "found", "correct"),
    [
        (" 3 + 4 = 7. So the answer is 7.", "7", "7", True),
        (" She pays $1,250 in total. So the answer is $1,250.", "1250", "1,250", True),
        (" 10 - 4 = 6 apples, then 6 + 12 = 18", "18", "18", True),  # no phrase: last number
        (" The answer is 18.5, not 18.", "18", "18.5", False),  # the stated answer wins
        (" I do not know.", "5", "", False),
        (" So the answer is -3.", "-3", "-3", True),
    ],
)
def test_gsm8k_checker(output, gold, found, correct):
    item = Item("0", "gsm8k", gold=gold)
    assert TASKS["gsm8k"].check(output, item) == (found, correct)


def test_gsm8k_prompts_carry_the_examples():
    items, shots = TASKS["gsm8k"].load()
    assert len(items) == 1319 and len(shots) == 8
    assert all(s.startswith("Question: ") and "So the answer is" in s for s in shots)
    assert items[0].prompt.startswith("Question: Janet") and items[0].gold == "18"


# -- perplexity ------------------------------------------------------------------------------------


@torch.inference_mode()
def _reference_nll(llm, text: str, window: int) -> tuple[float, int]:
    tok = llm.tokenizer
    start = tok.bos_id if tok.bos_id is not None else min(tok.eos_ids)
    ids = [start, *tok.encode(text, add_special=False)]
    nll = 0.0
    for a in range(1, len(ids), window):
        seq = ids[a - 1 : a + window]
        lp = torch.log_softmax(llm.model(torch.tensor([seq]))[0], -1)
        nll -= float(lp[:-1].gather(1, torch.tensor(seq[1:])[:, None]).sum())
    return nll, len(ids) - 1


def test_perplexity_of_a_text_file_matches_the_forward_pass(tiny_model_dir, tmp_path):
    # a float32 cache: the forward pass keeps keys and values in float32
    llm = genforge.load(str(tiny_model_dir), dtype="fp32", kv_dtype="fp32", progress=False)
    text = "hello world, this is a tiny corpus for a tiny tokenizer. " * 12
    path = tmp_path / "notes.txt"
    path.write_text(text)
    res = harness.evaluate(llm, str(path), progress=False)
    (name,) = res["tasks"]
    m = res["tasks"][name]["metrics"]
    nll, n_tokens = _reference_nll(llm, text, llm.context_length - 1)
    assert n_tokens > llm.context_length  # several windows
    assert m["tokens"] == n_tokens and m["bytes"] == len(text.encode())
    assert m["bits_per_byte"] == pytest.approx(nll / math.log(2) / len(text.encode()), rel=1e-5)
    assert m["token_perplexity"] == pytest.approx(math.exp(nll / n_tokens), rel=1e-5)


def test_perplexity_reads_a_prepared_data_set(tmp_path):
    from genforge.data.shards import prepare
    from genforge.tokenizer import bpe

    texts = [f"Document {i}: the cache holds {i} blocks of keys.\n" * 3 for i in range(60)]
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i, t in enumerate(texts):
        (corpus / f"d{i}.txt").write_text(t)
    tok = bpe.save(bpe.train_bpe(texts, 300), tmp_path / "tok")
    prepare([str(corpus)], tmp_path / "data", tok, val_fraction=0.1, progress=False)
    docs = harness._documents(tmp_path / "data")
    assert docs and all(text in texts for _, text in docs)


def test_an_empty_text_file_is_refused(tiny_model_dir, tmp_path):
    llm = genforge.load(str(tiny_model_dir), dtype="fp32", progress=False)
    (tmp_path / "empty.txt").write_text("   \n")
    with pytest.raises(GenforgeError, match="no text"):
        harness.evaluate(llm, str(tmp_path / "empty.txt"), progress=False)


# -- the command line ------------------------------------------------------------------------------


def test_cli_writes_a_table_and_an_auditable_record(smollm2_path, tmp_path):
    out = tmp_path / "results.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "genforge",
            "eval",
            "piqa",
            "--limit",
            "3",
            "-m",
            str(smollm2_path),
            "--output",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    assert "| piqa | acc |" in proc.stdout and "| piqa | acc_norm |" in proc.stdout
    res = json.loads(out.read_text())
    assert res["model"]["sha256"] == genforge.hub.KNOWN["smollm2-135m-instruct"].sha256
    assert res["model"]["dtype"] == "fp32"
    assert res["tasks"]["piqa"]["version"] == TASKS["piqa"].version
    assert res["tasks"]["piqa"]["prompt_format"]
    assert len(res["items"]["piqa"]) == 3
    assert not list(tmp_path.glob(".*.tmp"))  # written atomically, nothing left behind


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["hellaswg"], "unknown task 'hellaswg'"),
        ([], "name the tasks to run"),
        (["piqa", "--output", "/no/such/folder/r.json"], "its folder does not exist"),
    ],
)
def test_cli_errors_are_one_line(args, message):
    proc = subprocess.run(
        [sys.executable, "-m", "genforge", "eval", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


# -- code tasks: the programs the harness assembles ------------------------------------------------


def _references():
    from genforge.evals import data

    humaneval = {
        r["doc"]["task_id"]: r["doc"] for r in data.requests("codex_humaneval", "gold_bpb_0shot")
    }
    mbpp = {
        str(r["doc"]["task_id"]): r["doc"] for r in data.requests("codex_mbpp", "gold_bpb_0shot")
    }
    return humaneval, mbpp


def _programs(n: int | None):
    """(label, program that must pass, program that must fail) from the reference solutions, in
    every form a model's answer takes: raw continuation, chat answer with the whole function, chat
    answer with the body only."""
    humaneval, mbpp = _references()
    out = []
    for item in TASKS["humaneval"].load()[:n]:
        doc = humaneval[item.id]
        body, whole = doc["canonical_solution"], doc["prompt"] + doc["canonical_solution"]
        broken = "    return None\n"
        program = TASKS["humaneval"].program
        out.append((f"{item.id} raw", program(item, body, False), program(item, broken, False)))
        # a chat answer that repeats the function, minus the problem's imports, then talks on
        whole_no_imports = "\n".join(
            ln for ln in whole.splitlines() if not ln.startswith(("from ", "import "))
        )
        out.append(
            (
                f"{item.id} chat",
                program(item, whole_no_imports + "\n```\nThis works because...", True),
                program(item, doc["prompt"] + broken + "```", True),
            )
        )
        out.append(
            (
                f"{item.id} body",
                program(item, body + "```", True),
                program(item, broken + "```", True),
            )
        )
    for item in TASKS["mbpp"].load()[:n]:
        code = mbpp[item.id]["code"]
        name = code.split("def ", 1)[1].split("(", 1)[0]
        broken = f"def {name}(*args):\n    return None\n```"
        program = TASKS["mbpp"].program
        out.append(
            (f"mbpp {item.id}", program(item, code + "\n```", True), program(item, broken, True))
        )
    return out


def _check_programs(programs):
    from concurrent.futures import ThreadPoolExecutor

    from genforge.agents.sandbox import run_python

    with ThreadPoolExecutor(2) as pool:
        good = list(pool.map(run_python, [p for _, p, _ in programs]))
        bad = list(pool.map(run_python, [p for _, _, p in programs]))
    for (label, _, _), g, b in zip(programs, good, bad, strict=True):
        assert g.passed, f"{label}: the reference solution failed: {g.status} {g.stderr[-500:]}"
        assert not b.passed, f"{label}: a wrong solution passed"


def test_reference_solutions_pass_and_wrong_ones_fail():
    _check_programs(_programs(6))


@pytest.mark.slow
def test_every_reference_solution_passes():
    """All 164 HumanEval and 500 MBPP reference solutions pass their tests as the harness runs them."""
    _check_programs(_programs(None))


def test_chat_answers_keep_their_definitions_only():
    """A model that tests its own function with a wrong expectation, prints a demo, or runs out of
    tokens mid-line still gets its function judged by the task's tests, not its own."""
    from genforge.agents.sandbox import run_python

    humaneval, _ = _references()
    item = TASKS["humaneval"].load()[2]  # truncate_number: 4.2 -> 0.2 is not exact in floats
    whole = humaneval[item.id]["prompt"] + humaneval[item.id]["canonical_solution"]
    chatty = (
        whole
        + '\nassert truncate_number(4.2) == 0.2\nprint(truncate_number(3.5))\nif __name__ == "__main__":\n    raise SystemExit(1)\n```'
    )
    cut_off = whole + "\nprint(truncate_number([1.0, 2.0, 3.0,"
    for answer in (chatty, cut_off):
        program = TASKS["humaneval"].program(item, answer, True)
        assert "assert truncate_number(4.2)" not in program and "print(" not in program
        assert run_python(program).passed
