"""The interactive chat, driven through a real pseudo-terminal as a person would use it."""

import sys

import pytest

pexpect = pytest.importorskip("pexpect")


def test_repl_answers_keeps_history_resets_and_exits(smollm2_path):
    child = pexpect.spawn(
        sys.executable,
        ["-m", "genforge", "chat", "--temperature", "0", "--max-tokens", "16"],
        encoding="utf-8",
        timeout=180,
        dimensions=(40, 200),
    )
    child.expect("/reset")  # the banner names the commands
    child.expect("> ")
    child.sendline("Name the capital of France.")
    child.expect("Paris")
    child.expect("> ")
    child.sendline("/help")
    child.expect("/exit")
    child.expect("> ")
    child.sendline("/reset")
    child.expect(r"\(new conversation\)")
    child.expect("> ")
    child.sendeof()  # Ctrl-D leaves cleanly
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_repl_survives_a_turn_longer_than_the_context(smollm2_path):
    child = pexpect.spawn(
        sys.executable,
        ["-m", "genforge", "chat", "--ctx", "96", "--temperature", "0", "--max-tokens", "8"],
        encoding="utf-8",
        timeout=180,
        dimensions=(40, 400),
    )
    child.expect("> ")
    child.sendline("word " * 120)
    child.expect(r"error: the prompt is \d+ tokens but the context holds 96")
    child.expect("> ")
    child.sendline("Hi!")  # the refused turn left the conversation as it was, so this fits
    child.expect("\r\n> ")
    assert "error" not in child.before
    child.sendeof()
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
