"""Log-likelihood scoring through the engine equals the plain forward pass over each whole sequence.

The scorer computes each context once and its continuations in a second pass that shares the
context's cached blocks (copying the partial last one), so the cases that matter are contexts that
end inside, at the end of, and just past a cache block, continuations of one token and of many,
contexts shared by several continuations, and the prefix cache across calls.

Engines compared with the plain forward pass keep their KV cache in float32, as the pass does (the
default fp16 cache rounds keys and values; the KV dtype tests cover it).
"""

import random

import pytest
import torch

from genforge.errors import GenforgeError
from genforge.generate.engine import BLOCK_SIZE, Engine


@torch.inference_mode()
def reference(model, context, continuation):
    """Sum of log p(token) over the continuation from one forward pass of the whole sequence."""
    ids = torch.tensor([context + continuation])
    lp = torch.log_softmax(model(ids)[0], dim=-1)
    rows = lp[len(context) - 1 : -1]  # row t predicts token t + 1
    want = torch.tensor(continuation)
    total = float(rows.gather(1, want[:, None]).sum())
    return total, bool((rows.argmax(-1) == want).all())


def requests_across_block_edges(rng):
    reqs = []
    for n_ctx in (1, 2, BLOCK_SIZE - 1, BLOCK_SIZE, BLOCK_SIZE + 1, 2 * BLOCK_SIZE + 5, 40):
        context = [rng.randrange(256) for _ in range(n_ctx)]
        for n_cont in (1, 2, 7, BLOCK_SIZE + 3):  # several continuations share each context
            reqs.append((context, [rng.randrange(256) for _ in range(n_cont)]))
    rng.shuffle(reqs)
    return reqs


@pytest.mark.parametrize("batch_tokens", [2048, 40])  # one batch, and many small ones
def test_scores_equal_the_plain_forward_pass(random_model, batch_tokens):
    model = random_model
    engine = Engine(model, max_batch=8, kv_tokens=1024, kv_dtype="fp32")
    reqs = requests_across_block_edges(random.Random(0))
    got = engine.loglikelihood(reqs, batch_tokens=batch_tokens)
    for (context, continuation), scored in zip(reqs, got, strict=True):
        want, greedy = reference(model, context, continuation)
        assert scored.logprob == pytest.approx(want, abs=1e-4)
        assert scored.greedy == greedy
        assert scored.n_tokens == len(continuation)
    assert engine.pool.n_available == engine.pool.n_blocks  # every block came back


def test_greedy_continuation_is_flagged(random_model):
    model = random_model
    engine = Engine(model, kv_tokens=512, kv_dtype="fp32")
    context = [5, 9, 17, 3, 80, 41, 7, 99, 12, 64, 33, 2, 8, 70, 21, 19, 4]
    cont = []
    with torch.inference_mode():
        for _ in range(6):
            cont.append(int(model(torch.tensor([context + cont]))[0, -1].argmax()))
    wrong = cont[:3] + [(cont[3] + 1) % 256] + cont[4:]
    right, not_right = engine.loglikelihood([(context, cont), (context, wrong)])
    assert right.greedy and not not_right.greedy
    assert right.logprob > not_right.logprob


def test_prefix_cache_reuse_changes_nothing(random_model):
    model = random_model
    engine = Engine(model, kv_tokens=2048, kv_dtype="fp32")
    rng = random.Random(1)
    shots = [rng.randrange(256) for _ in range(3 * BLOCK_SIZE + 2)]  # shared few-shot prefix
    reqs = [
        (shots + [rng.randrange(256) for _ in range(5)], [rng.randrange(256)] * 4) for _ in range(6)
    ]
    first = engine.loglikelihood(reqs)
    hits = engine.pool.hits
    again = engine.loglikelihood(reqs)
    assert [s.logprob for s in again] == pytest.approx([s.logprob for s in first], abs=1e-5)
    for (context, continuation), scored in zip(reqs, again, strict=True):
        assert scored.logprob == pytest.approx(reference(model, context, continuation)[0], abs=1e-4)
    assert engine.pool.hits >= hits  # the shared blocks were found again


def test_scoring_between_generations_leaves_them_intact(random_model):
    from genforge.generate.sampling import SamplingParams

    model = random_model
    engine = Engine(model, kv_tokens=1024, kv_dtype="fp32")
    params = SamplingParams(temperature=0, max_tokens=12)
    before = list(engine.generate([1, 2, 3, 4, 5], params))
    engine.loglikelihood(requests_across_block_edges(random.Random(2)))
    assert list(engine.generate([1, 2, 3, 4, 5], params)) == before


def test_bad_requests_are_refused_with_one_sentence(random_model):
    engine = Engine(random_model, kv_tokens=512, kv_dtype="fp32")
    with pytest.raises(GenforgeError, match="empty continuation"):
        engine.loglikelihood([([1, 2], [])])
    with pytest.raises(GenforgeError, match="empty context"):
        engine.loglikelihood([([], [1])])
    with pytest.raises(GenforgeError, match="the context holds 256"):
        engine.loglikelihood([([1] * 200, [2] * 100)])


def test_long_requests_that_fill_the_cache_are_scored_one_by_one(random_model):
    """Near the context limit the shared-context plan outgrows the cache; the scorer then runs each
    (context, continuation) as one sequence, which always fits."""
    # the model's whole context, no more
    engine = Engine(random_model, kv_tokens=256, kv_dtype="fp32")
    rng = random.Random(3)
    context = [rng.randrange(256) for _ in range(200)]
    reqs = [(context, [rng.randrange(256) for _ in range(56)]) for _ in range(3)]
    reqs.append(([7], [rng.randrange(256) for _ in range(255)]))  # a perplexity window
    for (ctx, cont), scored in zip(reqs, engine.loglikelihood(reqs), strict=True):
        assert scored.logprob == pytest.approx(reference(random_model, ctx, cont)[0], abs=1e-3)
