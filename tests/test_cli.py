"""The `genforge` command as a user runs it: a real process, real model, exit codes and stderr."""

import argparse
import json
import os
import re
import subprocess
import sys

import pytest


def genforge(*args, stdin=None, env=None, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "genforge", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def assert_one_line_error(result, pattern):
    assert result.returncode != 0
    err = result.stderr.strip()
    assert "Traceback" not in err, err
    assert len(err.splitlines()) == 1, err
    assert re.search(pattern, err), err


def test_help_does_not_import_torch():
    code = "import sys; from genforge.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.stdout.strip() == "False"
    for verb in ([], ["chat"], ["generate"], ["serve"], ["train"], ["eval"], ["rag", "ask"]):
        r = genforge_importtime(*verb, "--help")
        assert r.returncode == 0 and "usage: genforge" in r.stdout
        imported = {line.split("|")[-1].strip() for line in r.stderr.splitlines() if "|" in line}
        assert "genforge.cli" in imported  # the import log is read, and names what was imported
        assert "torch" not in imported, verb
    assert "--temperature" in genforge("chat", "--help").stdout


def test_loading_a_model_does_not_import_the_compiler(smollm2_path):
    """torch._dynamo costs ~0.8 s of a cold start; building the model on `meta` must not touch it
    (its Python references of meta ops import it on first use)."""
    code = (
        "import sys, genforge; genforge.load(sys.argv[1], dtype=sys.argv[2], progress=False); "
        "print('torch._dynamo' in sys.modules)"
    )
    for dtype in ("auto", "fp32", "int4"):
        r = subprocess.run(
            [sys.executable, "-c", code, str(smollm2_path), dtype], capture_output=True, text=True
        )
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == "False", dtype


def genforge_importtime(*args):
    """`python -X importtime -m genforge ARGS`: stderr lists every module the process imported."""
    cmd = [sys.executable, "-X", "importtime", "-m", "genforge", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def test_default_model_is_the_makefiles_and_one_the_hub_knows():
    """`make run` pulls the Makefile's DEFAULT_MODEL; the verbs load theirs when -m is not given;
    grounded answers and the server default to the measured better answerer."""
    from pathlib import Path

    from genforge import hub
    from genforge.cli import build_parser

    makefile = (Path(__file__).parents[1] / "Makefile").read_text()
    make_default = re.search(r"^DEFAULT_MODEL\s*:=\s*(\S+)\s*$", makefile, re.M).group(1)
    parser = build_parser()
    for argv in (["chat"], ["generate"], ["eval"]):
        assert parser.parse_args(argv).model == make_default, argv
    assert parser.parse_args(["rag", "ask", "q", "--store", "x"]).model == hub.ANSWER_MODEL
    assert make_default in hub.KNOWN and hub.ANSWER_MODEL in hub.KNOWN
    serve_help = " ".join(genforge("serve", "--help").stdout.split())
    assert f"(default: {hub.ANSWER_MODEL})" in serve_help


def test_importing_genforge_leaves_the_environment_alone():
    code = (
        "import os; before = dict(os.environ); import genforge, genforge.cli; "
        "genforge.cli.build_parser(); print(dict(os.environ) == before)"
    )
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert r.stdout.strip() == "True", r.stderr


@pytest.mark.parametrize(
    "argv,given,policy",
    [
        (["models", "--json"], None, "None"),  # OpenMP's default: one thread does the model work
        (["train", "--data", "d", "--depth", "0"], None, "ACTIVE"),  # one team does all the work
        (["train", "--data", "d", "--depth", "0"], "PASSIVE", "PASSIVE"),  # the user's value wins
    ],
)
def test_the_command_sets_the_omp_wait_policy_before_torch_is_imported(argv, given, policy):
    code = (
        "import os, sys; from genforge.cli import main; "
        f"main({argv!r}); print(os.environ.get('OMP_WAIT_POLICY'), 'torch' in sys.modules)"
    )
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    env.update({"OMP_WAIT_POLICY": given} if given else {})
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert r.stdout.splitlines()[-1] == f"{policy} False", r.stderr


def test_generate_prints_only_the_completion(smollm2_path):
    r = genforge(
        "generate",
        "-m",
        "smollm2-135m-instruct",
        "The capital of France is",
        "--temperature",
        "0",
        "--max-tokens",
        "8",
    )
    assert r.returncode == 0, r.stderr
    assert "Paris" in r.stdout and "capital of France" not in r.stdout


def test_chat_reads_stdin_lines_as_turns_of_one_conversation(smollm2_path):
    flags = ("--temperature", "0", "--max-tokens", "24")
    first, second = "My name is Ada. Remember it.", "What is my name?"
    r = genforge("chat", *flags, stdin=f"{first}\n\n{second}\n")
    assert r.returncode == 0, r.stderr
    alone1 = genforge("chat", first, *flags).stdout
    alone2 = genforge("chat", second, *flags).stdout
    assert alone1.strip()
    assert r.stdout.startswith(alone1)  # the first turn is answered as a one-shot would be
    rest = r.stdout[len(alone1) :]
    assert rest.strip() and rest != alone2  # the second turn saw the first: a different answer


def test_piped_repl_commands_act_as_typed(smollm2_path):
    # fp32: the second turn reads its system prompt from the prefix cache, the one-shot computes it;
    # the two differ by float rounding, which 8-bit activations can amplify into another greedy token
    flags = ("--temperature", "0", "--max-tokens", "16", "--dtype", "fp32")
    first, second = "My name is Ada. Remember it.", "What is my name?"
    r = genforge("chat", *flags, stdin=f"{first}\n/reset\n{second}\n/exit\nNever answered.\n")
    assert r.returncode == 0, r.stderr
    alone1 = genforge("chat", first, *flags).stdout
    alone2 = genforge("chat", second, *flags).stdout
    assert alone1.strip() and alone2.strip()
    # /reset started over, so the second turn is answered as a one-shot would be; /exit ended
    # the chat, so the last line got no answer; neither command reached the model.
    assert r.stdout == alone1 + alone2
    assert "(new conversation)" in r.stderr


def test_chat_refuses_an_empty_message_as_generate_does():
    for message in ("", "  \n"):
        r = genforge("chat", message)
        assert_one_line_error(r, "the message is empty")
        assert r.returncode == genforge("generate", "").returncode == 1


def test_chat_one_shot_with_system_prompt(smollm2_path):
    r = genforge(
        "chat",
        "Who are you?",
        "--system",
        "You are a pirate named Bob.",
        "--temperature",
        "0",
        "--max-tokens",
        "30",
    )
    assert r.returncode == 0, r.stderr
    # Without the system prompt the model introduces itself as an assistant; with it, in character.
    assert {"pirate", "bob", "aye", "arr", "matey"} & set(re.findall(r"[a-z]+", r.stdout.lower()))


def test_models_lists_known_and_installed(smollm2_path):
    r = genforge("models", "--json")
    rows = {row["name"]: row for row in json.loads(r.stdout)}
    assert set(rows) >= {"smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct", "gemma3-270m"}
    assert rows["smollm2-135m-instruct"]["installed"]
    table = genforge("models").stdout
    assert "LICENCE" in table and "Apache-2.0" in table


def test_unknown_model_lists_known_ones():
    r = genforge("generate", "-m", "llama-9000", "hi")
    assert_one_line_error(r, r"unknown model 'llama-9000'.*smollm2-135m-instruct.*gemma3-270m")


def test_missing_file_and_corrupt_gguf(tmp_path):
    assert_one_line_error(
        genforge("generate", "-m", str(tmp_path / "nope.gguf"), "hi"), "does not exist"
    )
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\xff" * 10)
    assert_one_line_error(genforge("generate", "-m", str(bad), "hi"), "truncated|corrupt")


@pytest.mark.parametrize(
    "flags,name",
    [
        (["--temperature", "-1"], "temperature"),
        (["--top-p", "2"], "top_p"),
        (["--min-p", "-0.1"], "min_p"),
        (["--max-tokens", "0"], "max_tokens"),
        (["--ctx", "0"], "ctx"),
    ],
)
def test_invalid_sampling_values(flags, name):
    assert_one_line_error(genforge("generate", "hi", *flags), name)


def test_prompt_longer_than_context(smollm2_path):
    r = genforge("generate", "--ctx", "32", "word " * 100)
    assert_one_line_error(r, r"prompt is \d+ tokens but the context holds 32")


def test_missing_chat_template(tiny_model_dir):
    r = genforge("chat", "-m", str(tiny_model_dir), "hello")
    assert_one_line_error(r, "no chat template")
    r = genforge("generate", "-m", str(tiny_model_dir), "hello", "--max-tokens", "3")
    assert r.returncode == 0, r.stderr


def test_folder_without_config(tmp_path):
    assert_one_line_error(genforge("generate", "-m", str(tmp_path), "hi"), "config.json")


def test_folder_without_tokenizer(tiny_model_dir, tmp_path):
    import shutil

    for name in ("config.json", "model.safetensors"):
        shutil.copy(tiny_model_dir / name, tmp_path / name)
    assert_one_line_error(genforge("generate", "-m", str(tmp_path), "hi"), "no tokenizer.json")


def test_generate_json_schema(smollm2_path, tmp_path):
    schema = {
        "type": "object",
        "properties": {"answer": {"type": "string", "maxLength": 30}},
        "required": ["answer"],
        "additionalProperties": False,
    }
    path = tmp_path / "schema.json"
    path.write_text(json.dumps(schema))
    r = genforge(
        "generate",
        "--json-schema",
        str(path),
        "The capital of France, as JSON:",
        "--temperature",
        "1",
        "--seed",
        "4",
    )
    assert r.returncode == 0, r.stderr
    assert set(json.loads(r.stdout)) == {"answer"}
    path.write_text("{broken")
    assert_one_line_error(genforge("generate", "--json-schema", str(path), "x"), "not valid JSON")
    assert_one_line_error(
        genforge("generate", "--json-schema", str(tmp_path / "none.json"), "x"), "cannot read"
    )


def test_flags_are_not_abbreviated_and_near_misses_are_named():
    from genforge.cli import build_parser

    parsers, seen = [build_parser()], []
    while parsers:  # every parser of every verb, nested ones (rag ask, train run) included
        parser = parsers.pop()
        seen.append(parser)
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                parsers += action.choices.values()
        assert not parser.allow_abbrev, parser.prog
    assert {"genforge rag ask", "genforge export", "genforge chat"} <= {p.prog for p in seen}
    for argv, flag, meant in [
        (["generate", "hi", "--max_tokens", "5"], "--max_tokens", "--max-tokens"),
        (["generate", "hi", "--max_tokens=5"], "--max_tokens", "--max-tokens"),
        (["generate", "hi", "--max-token", "5"], "--max-token", "--max-tokens"),  # was accepted
        (["rag", "search", "q", "--stor", "x.sqlite"], "--stor", "--store"),  # a required flag
        (["--verison"], "--verison", "--version"),
    ]:
        r = genforge(*argv)
        assert_one_line_error(r, f"unknown flag {flag}; did you mean {meant}\\?$")
        assert r.returncode == 2
    r = genforge("generate", "hi", "--no-such-flag")
    assert r.returncode == 2 and "unrecognized arguments: --no-such-flag" in r.stderr


def test_serve_refuses_bad_flags():
    assert_one_line_error(genforge("serve", "--port", "-1"), "--port must be")
    assert_one_line_error(genforge("serve", "-m", "no-such-model"), "unknown model")
    assert_one_line_error(genforge("serve", "--upstream", "ftp://x"), "http")
    assert_one_line_error(genforge("serve", "--threads", "0"), "--threads must be")
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = str(busy.getsockname()[1])
        assert_one_line_error(genforge("serve", "--port", port), "cannot listen on .*--port")


def test_tokenizer_train_and_data_prepare(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(40):
        (corpus / f"{i}.txt").write_text(
            f"Document {i}: rivers flow to the sea, and seas to oceans; {i * 7} boats sail.\n"
        )
    r = genforge(
        "tokenizer",
        "train",
        str(corpus),
        "--out",
        str(tmp_path / "tok"),
        "--vocab-size",
        "280",
        "--val-fraction",
        "0.1",
    )
    assert r.returncode == 0, r.stderr
    assert "bytes per token" in r.stdout and (tmp_path / "tok" / "tokenizer.json").is_file()
    r = genforge(
        "data",
        "prepare",
        str(corpus),
        "--tokenizer",
        str(tmp_path / "tok"),
        "--out",
        str(tmp_path / "data"),
    )
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "data" / "manifest.json").read_text())["tokens"]["train"] > 0
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "blank.txt").write_text("   \n")
    assert_one_line_error(
        genforge("tokenizer", "train", str(empty), "--out", str(tmp_path / "t2")), "found no text"
    )
    assert_one_line_error(
        genforge(
            "tokenizer",
            "train",
            str(corpus),
            "--out",
            str(tmp_path / "t3"),
            "--vocab-size",
            "100000",
        ),
        "lower --vocab-size",
    )
    assert_one_line_error(
        genforge(
            "data",
            "prepare",
            str(corpus),
            "--tokenizer",
            str(tmp_path / "nope"),
            "--out",
            str(tmp_path / "d2"),
        ),
        "no tokenizer.json",
    )


def test_the_kv_dtype_flag_offers_what_the_engine_takes():
    from genforge.cli.flags import DEFAULT_KV_DTYPE, KV_DTYPES
    from genforge.generate import engine

    assert tuple(engine.KV_DTYPES) == KV_DTYPES
    assert engine.DEFAULT_KV_DTYPE == DEFAULT_KV_DTYPE


def test_a_device_the_machine_lacks_is_one_line():
    r = genforge("generate", "Hi", "--device", "tpu")
    assert_one_line_error(r, 'device must be "cpu" or "cuda"')
