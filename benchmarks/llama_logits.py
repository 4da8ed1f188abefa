"""llama.cpp's next-token log-probabilities on fixed prompts, for genforge's test against them.

    python benchmarks/llama_logits.py          # rewrites tests/generate/llama_cpp_logits.json

llama-cpp-python (the `bench` extra: llama.cpp built from source) evaluates the shipped SmolLM2 GGUF
file on the prompts below, tokenized by genforge so that both see the same ids, and the file keeps,
for the last position of each prompt, the 64 most likely tokens with their log-probabilities
(the logits minus their log-sum-exp over the whole vocabulary). tests/generate/
test_llama_cpp_logits.py compares genforge's on the same file with them. Weight repacking is off
(it crashes on some CPUs, PEERS.md); it changes the layout of the weights, not their values.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
from bench_engine import cpu_description, llama_cpp_python

from genforge import hub
from genforge.tokenizer import Tokenizer
from genforge.weights.gguf import read_gguf

HERE = Path(__file__).resolve().parent
OUT = HERE.parent / "tests" / "generate" / "llama_cpp_logits.json"
MODEL = "smollm2-135m-instruct"
TOP = 64
PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n    ",
    "Water boils at a temperature of",
    "Once upon a time, in a small village,",
    "The three primary colors are",
    "import numpy as np\n\narr = np.",
]


def main() -> None:
    from llama_cpp import Llama
    from llama_server import disable_repack

    disable_repack()
    gguf = hub.resolve(MODEL)
    tokenizer = Tokenizer.from_gguf_metadata(read_gguf(gguf).metadata)
    llm = Llama(str(gguf), n_ctx=256, n_threads=2, logits_all=True, verbose=False)
    cases = []
    for prompt in PROMPTS:
        ids = tokenizer.encode(prompt, add_special=False)
        llm.reset()
        llm.eval(ids)
        logits = np.asarray(llm.scores[len(ids) - 1], dtype=np.float64)
        logprobs = logits - (logits.max() + np.log(np.exp(logits - logits.max()).sum()))
        top = np.argsort(-logprobs)[:TOP]
        cases.append(
            {
                "prompt": prompt,
                "ids": ids,
                "top_ids": top.tolist(),
                "top_logprobs": [round(float(logprobs[i]), 6) for i in top],
            }
        )
    data = {
        "about": f"next-token log-probabilities of {gguf.name} by {llama_cpp_python()} "
        f"(weight repacking off), written by benchmarks/llama_logits.py on {cpu_description()}",
        "model": MODEL,
        "file": gguf.name,
        "cases": cases,
    }
    tmp = OUT.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, OUT)
    print(f"wrote {OUT} ({len(cases)} prompts)", file=sys.stderr)


if __name__ == "__main__":
    main()
