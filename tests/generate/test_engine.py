"""The continuous-batching engine on real models: batching changes nothing a request gets.

Most tests use `random_model`, a 2-layer random model with a sliding-window layer, and compare with
`greedy_reference`, which recomputes the whole sequence for every token through the plain forward
pass (no cache, no batch). The batch-invariance test the engine was built for runs SmolLM2.

Engines compared with the plain forward pass keep their KV cache in float32, as the pass does (the
default fp16 cache rounds keys and values; the KV dtype tests cover it).
"""

import random
import threading

import pytest
import torch

from genforge.errors import GenforgeError
from genforge.generate.engine import Engine
from genforge.generate.sampling import SamplingParams

QUESTIONS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain photosynthesis in one sentence.",
    "List three prime numbers.",
    "Who wrote Hamlet?",
    "How do I boil an egg?",
    "What is 12 times 7?",
    "Name a famous painter and one of their works.",
]


def greedy(max_tokens: int) -> SamplingParams:
    return SamplingParams(temperature=0, max_tokens=max_tokens)


def run(engine, prompts, params, eos_ids=frozenset()):
    """Add every request, then step until all are done; return the requests."""
    if isinstance(params, SamplingParams):
        params = [params] * len(prompts)
    reqs = [engine.add_request(p, sp, eos_ids) for p, sp in zip(prompts, params, strict=True)]
    while engine.has_work():
        engine.step()
    assert engine.pool.n_available == engine.pool.n_blocks  # every block came back
    return reqs


def run_alone(engine, prompts, params, eos_ids=frozenset()):
    if isinstance(params, SamplingParams):
        params = [params] * len(prompts)
    return [run(engine, [p], sp, eos_ids)[0].output for p, sp in zip(prompts, params, strict=True)]


@torch.inference_mode()
def greedy_reference(model, prompt, n):
    """Greedy tokens from the plain forward pass over the whole sequence, one token at a time."""
    tokens = list(prompt)
    for _ in range(n):
        tokens.append(int(model(torch.tensor([tokens]))[0, -1].argmax()))
    return tokens[len(prompt) :]


def random_prompt(seed, n):
    rng = random.Random(seed)
    return [rng.randrange(256) for _ in range(n)]


# -- SmolLM2: the same greedy tokens alone and in a batch ---------------------------------------


@pytest.fixture(scope="module")
def chat_prompts(smollm2):
    return [smollm2.tokenizer.encode_chat([{"role": "user", "content": q}]) for q in QUESTIONS]


@pytest.fixture(scope="module")
def smollm2_alone(smollm2, chat_prompts):
    engine = Engine(smollm2.model, 512, prefix_cache=False, kv_dtype="fp32")
    return run_alone(engine, chat_prompts, greedy(32), smollm2.tokenizer.eos_ids)


@pytest.mark.parametrize(
    "step_tokens, prefix_cache, n_new",
    # All prompts in one step; or prompts in chunks between decodes, which is over by the 14th
    # step, so 16 tokens cover it.
    [(512, False, 32), (24, True, 16)],
)
def test_a_request_gets_the_same_greedy_tokens_alone_or_among_seven_others(
    smollm2, chat_prompts, smollm2_alone, step_tokens, prefix_cache, n_new
):
    engine = Engine(
        smollm2.model, 512, step_tokens=step_tokens, prefix_cache=prefix_cache, kv_dtype="fp32"
    )
    eos = smollm2.tokenizer.eos_ids
    reqs = [engine.add_request(p, greedy(n_new), eos) for p in chat_prompts]
    widest, mixed = 0, False
    while engine.has_work():
        new = engine.step()
        widest = max(widest, len(new))
        prefilling = [r for r in reqs if 0 < r.n_computed < len(r.prompt)]
        mixed |= bool(new and prefilling)
    assert [r.output for r in reqs] == [out[:n_new] for out in smollm2_alone]
    assert widest == 8  # at some step all eight sampled together
    assert mixed == (step_tokens < sum(map(len, chat_prompts)))
    assert any(r.n_cached for r in reqs) == prefix_cache  # the chat template's shared start
    assert {r.finish_reason for r in reqs} <= {"stop", "length"}
    assert engine.pool.n_available == engine.pool.n_blocks


# -- the paged cache and the scheduler against the plain forward pass -------------------------


def test_alone_and_together_equal_the_plain_forward_pass(random_model):
    prompts = [random_prompt(s, 1 + 9 * s) for s in range(6)]  # 1 to 46 tokens
    want = [greedy_reference(random_model, p, 24) for p in prompts]
    assert len({tuple(w) for w in want}) == 6  # distinct outputs, so a mix-up would show
    assert run_alone(Engine(random_model, kv_dtype="fp32"), prompts, greedy(24)) == want
    engine = Engine(random_model, step_tokens=16, kv_dtype="fp32")
    assert [r.output for r in run(engine, prompts, greedy(24))] == want


def test_a_request_that_ends_leaves_the_others_unchanged(random_model):
    prompts = [random_prompt(s, 20) for s in (10, 11, 12)]
    want = [greedy_reference(random_model, p, 16) for p in prompts]
    eos = want[1][5]
    assert eos not in want[0] + want[2]
    reqs = run(Engine(random_model, kv_dtype="fp32"), prompts, greedy(16), frozenset({eos}))
    assert reqs[1].output == want[1][: want[1].index(eos) + 1] and reqs[1].finish_reason == "stop"
    assert [r.output for r in reqs[::2]] == want[::2]
    assert [r.finish_reason for r in reqs[::2]] == ["length", "length"]


def test_a_shared_prefix_comes_from_the_cache_and_changes_nothing(random_model):
    shared = random_prompt(20, 100)
    first, second = shared + random_prompt(21, 7), shared + random_prompt(22, 5)
    outputs = {}
    for prefix_cache in (False, True):
        engine = Engine(random_model, prefix_cache=prefix_cache, kv_dtype="fp32")
        a = engine.add_request(first, greedy(16))
        engine.step()  # a's prompt is in the cache; it goes on decoding beside b
        b = engine.add_request(second, greedy(16))
        while engine.has_work():
            engine.step()
        again = run(engine, [first], greedy(16))[0]  # the whole prompt was seen before
        outputs[prefix_cache] = [a.output, b.output, again.output]
        assert (b.n_cached, again.n_cached) == ((96, 96) if prefix_cache else (0, 0))
        assert engine.pool.n_available == engine.pool.n_blocks
    assert outputs[True] == outputs[False]
    assert outputs[True][:2] == [greedy_reference(random_model, p, 16) for p in (first, second)]
    assert outputs[True][2] == outputs[True][0]


def test_each_request_samples_with_its_own_parameters_and_seed(random_model):
    prompts = [random_prompt(30, 12)] * 2 + [random_prompt(s, 12) for s in (31, 32, 33)]
    params = [
        SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0, seed=1, max_tokens=24),
        SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0, seed=2, max_tokens=24),
        SamplingParams(temperature=0.7, top_p=0.9, seed=3, max_tokens=20),
        SamplingParams(
            temperature=1.2, repetition_penalty=1.3, frequency_penalty=0.5, seed=4, max_tokens=24
        ),
        greedy(24),
    ]
    alone = run_alone(Engine(random_model, kv_dtype="fp32"), prompts, params)
    together = [r.output for r in run(Engine(random_model, kv_dtype="fp32"), prompts, params)]
    assert together == alone
    assert alone[0] != alone[1]  # the seed decides, so the match above is no coincidence
    assert alone[4] == greedy_reference(random_model, prompts[4], 24)


def test_a_cache_too_small_for_the_batch_makes_requests_wait_and_all_finish(random_model):
    # 8 requests x 80 positions want 640 of the 256 cache positions.
    prompts = [random_prompt(40 + s, 40) for s in range(8)]
    engine = Engine(random_model, context_length=256, kv_tokens=256, max_batch=8, kv_dtype="fp32")
    reqs = [engine.add_request(p, greedy(40)) for p in prompts]
    waited = False
    while engine.has_work():
        engine.step()
        sched = engine.scheduler
        waited |= bool(sched.waiting) and len(sched.running) < sched.max_batch
    assert waited and sum(r.n_preempted for r in reqs) > 0
    assert [r.output for r in reqs] == [greedy_reference(random_model, p, 40) for p in prompts]
    assert engine.pool.n_available == engine.pool.n_blocks


# -- the background loop: generate(), threads, cancellation -----------------------------------


def test_threads_generating_at_once_each_get_their_own_tokens(random_model):
    engine = Engine(random_model, max_batch=4, step_tokens=32, kv_dtype="fp32")
    prompts = [random_prompt(50 + i, 30) for i in range(6)]
    results = [None] * len(prompts)
    start = threading.Barrier(len(prompts))

    def consume(i):
        start.wait()
        results[i] = list(engine.generate(prompts[i], greedy(20)))

    threads = [threading.Thread(target=consume, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [greedy_reference(random_model, p, 20) for p in prompts]
    assert engine.pool.n_available == engine.pool.n_blocks


def test_closing_the_iterator_cancels_the_request_and_the_engine_goes_on(random_model):
    engine = Engine(random_model, kv_dtype="fp32")
    prompt, other = random_prompt(60, 40), random_prompt(61, 30)
    tokens = engine.generate(prompt, greedy(200))
    first = [next(tokens) for _ in range(3)]
    tokens.close()
    assert engine.pool.n_available == engine.pool.n_blocks and not engine.has_work()
    assert first == greedy_reference(random_model, prompt, 3)
    assert list(engine.generate(other, greedy(10))) == greedy_reference(random_model, other, 10)


def test_an_exception_in_the_consumer_cancels_the_request(random_model):
    engine = Engine(random_model, kv_dtype="fp32")
    with pytest.raises(KeyboardInterrupt):
        for _ in engine.generate(random_prompt(62, 20), greedy(200)):
            raise KeyboardInterrupt
    assert engine.pool.n_available == engine.pool.n_blocks and not engine.has_work()


def test_closing_or_dropping_the_stream_before_its_first_token_cancels_the_request(random_model):
    engine = Engine(random_model, kv_dtype="fp32")
    with engine._lock:  # hold the background loop still, so the request cannot finish by itself
        tokens = engine.generate(random_prompt(63, 20), greedy(200))
        tokens.close()
        assert not engine.has_work()
        engine.generate(random_prompt(64, 20), greedy(200))  # never read, dropped at once
        assert not engine.has_work()
    assert engine.pool.n_available == engine.pool.n_blocks


def test_close_stops_the_engine_and_ends_its_streams(random_model):
    engine = Engine(random_model, kv_dtype="fp32")
    tokens = engine.generate(random_prompt(65, 20), greedy(200))
    first = next(tokens)
    engine.close()
    rest = list(tokens)
    assert isinstance(first, int) and len(rest) < 199 and not engine.has_work()
    with pytest.raises(GenforgeError, match="closed"):
        engine.generate(random_prompt(66, 20), greedy(5))


def test_a_request_too_long_for_the_context_is_refused_with_the_numbers(tiny_model_dir):
    import genforge

    engine = Engine(genforge.load(str(tiny_model_dir), progress=False).model)  # 64 positions
    with pytest.raises(GenforgeError, match="the prompt is 64 tokens but the context holds 64"):
        engine.generate([5] * 64, greedy(1))
    with pytest.raises(
        GenforgeError,
        match="the prompt is 60 tokens and max_tokens is 10, more than the context of 64; "
        "lower max_tokens to at most 4",
    ):
        engine.generate([5] * 60, greedy(10))
    with pytest.raises(GenforgeError, match="the prompt is 40 tokens but the context holds 32"):
        Engine(engine.model, context_length=32).generate([5] * 40, greedy(1))
    with pytest.raises(GenforgeError, match="empty"):
        engine.generate([], greedy(1))
    with pytest.raises(GenforgeError, match="token id 100000 is outside the vocabulary"):
        engine.generate([5, 100000], greedy(1))
    assert not engine.has_work()
    # Without max_tokens a request may fill the context, and no more.
    assert len(list(engine.generate([5] * 60, SamplingParams(temperature=0)))) == 4


def test_without_max_tokens_an_answer_stops_at_the_default_cap_or_the_context(
    random_model, monkeypatch
):
    from genforge.generate import engine as engine_module

    engine = Engine(random_model, kv_dtype="fp32")  # 256 positions
    params = SamplingParams(temperature=0)  # max_tokens not set
    monkeypatch.setattr(engine_module, "DEFAULT_MAX_TOKENS", 10)
    assert len(list(engine.generate([1, 2, 3], params))) == 10
    monkeypatch.setattr(engine_module, "DEFAULT_MAX_TOKENS", 1024)
    assert len(list(engine.generate([1, 2, 3], params))) == 256 - 3  # the rest of the context


@pytest.mark.parametrize("kv_dtype", ["bf16", "fp16"])
def test_a_smaller_kv_cache_answers_the_same_cold_or_cached(random_model, kv_dtype):
    """Keys and values kept in bf16/fp16: a prompt chunk reads them as the cache rounds them, so a
    prompt computed cold and one found in the prefix cache give the same greedy tokens; and the
    tokens stay those of float32 keys for this short run (the rounding is 2^-9 / 2^-12 relative)."""
    prompt = random_prompt(3, 40)
    small = Engine(random_model, context_length=256, kv_dtype=kv_dtype)
    cold = run(small, [prompt], greedy(12))[0].output
    warm = run(small, [prompt], greedy(12))[0].output
    assert small.pool.hits > 0 and warm == cold
    assert small.cache.k[0].dtype == {"bf16": torch.bfloat16, "fp16": torch.float16}[kv_dtype]
    exact_engine = Engine(random_model, context_length=256, kv_dtype="fp32")
    exact = run(exact_engine, [prompt], greedy(12))[0].output
    assert sum(a == b for a, b in zip(cold, exact, strict=True)) >= 10


def test_an_unknown_kv_dtype_is_refused(random_model):
    with pytest.raises(GenforgeError, match="kv_dtype must be one of fp32, bf16, fp16"):
        Engine(random_model, kv_dtype="int3")
