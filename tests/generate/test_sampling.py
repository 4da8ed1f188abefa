import pytest
import torch

from genforge.errors import GenforgeError
from genforge.generate.sampling import (
    SamplingParams,
    dry_penalties,
    filter_logits,
    make_generator,
    sample,
)

LOGITS = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))


def draws(params, n=400, logits=LOGITS, **kw):
    g = make_generator(0)
    return [sample(logits, params, g, **kw) for _ in range(n)]


def test_greedy_is_argmax():
    assert sample(torch.tensor([0.1, 3.0, -1.0]), SamplingParams(temperature=0), None) == 1


def test_top_k_one_is_greedy():
    assert set(draws(SamplingParams(temperature=1.5, top_k=1, top_p=1, min_p=0))) == {0}


def test_top_p_keeps_smallest_set_reaching_p():
    # 0.5 alone is below 0.6, so the 0.3 token joins; 0.15 and 0.05 never appear.
    assert set(draws(SamplingParams(temperature=1, top_k=0, top_p=0.6, min_p=0))) == {0, 1}


def test_min_p_drops_tokens_below_fraction_of_top():
    # 0.2 x 0.5 = 0.1: the 0.05 token goes, 0.15 stays.
    assert set(draws(SamplingParams(temperature=1, top_k=0, top_p=1, min_p=0.2))) == {0, 1, 2}


def test_temperature_sharpens():
    kept = filter_logits(LOGITS, SamplingParams(temperature=0.5, top_k=0, top_p=1, min_p=0))
    probs = kept.softmax(-1)
    assert probs[0] > 0.5 and torch.isclose(probs.sum(), torch.tensor(1.0))


def test_unfiltered_sampling_follows_the_distribution():
    got = draws(SamplingParams(temperature=1, top_k=0, top_p=1, min_p=0), n=4000)
    freq = torch.bincount(torch.tensor(got), minlength=4).float() / len(got)
    torch.testing.assert_close(freq, LOGITS.exp(), atol=0.03, rtol=0)


def test_same_seed_same_tokens_different_seed_differs():
    p = SamplingParams(temperature=1, top_k=0, top_p=1, min_p=0)
    g1, g2, g3 = make_generator(7), make_generator(7), make_generator(8)
    a = [sample(LOGITS, p, g1) for _ in range(50)]
    b = [sample(LOGITS, p, g2) for _ in range(50)]
    c = [sample(LOGITS, p, g3) for _ in range(50)]
    assert a == b and a != c


def test_repetition_penalty_demotes_seen_tokens():
    logits = torch.tensor([2.0, 1.9, -1.0])
    p = SamplingParams(temperature=0, repetition_penalty=1.5)
    assert sample(logits, p, None, context_ids=torch.tensor([0])) == 1
    # negative logits are multiplied, so a seen negative token gets less likely too
    assert sample(torch.tensor([-1.0, -1.2]), p, None, context_ids=torch.tensor([0])) == 1


def test_presence_and_frequency_penalties():
    logits = torch.tensor([2.0, 1.5, 0.0])
    counts = torch.tensor([3, 0, 0])
    assert (
        sample(
            logits,
            SamplingParams(temperature=0, frequency_penalty=0.2),
            None,
            generated_counts=counts,
        )
        == 1
    )
    assert (
        sample(
            logits,
            SamplingParams(temperature=0, presence_penalty=0.4),
            None,
            generated_counts=counts,
        )
        == 0
    )
    assert (
        sample(
            logits,
            SamplingParams(temperature=0, presence_penalty=0.6),
            None,
            generated_counts=counts,
        )
        == 1
    )


DRY = SamplingParams(dry_multiplier=0.8, dry_base=1.75, dry_allowed_length=2)


def test_dry_penalises_the_token_that_would_continue_a_repeated_run():
    # 5 6 7 8 ... 5 6 7: a run of 3 repeats, so 8 (what followed it) is penalised 0.8 * 1.75^(3-2)
    out = [5, 6, 7, 8, 9, 5, 6, 7]
    assert dry_penalties(out, DRY, frozenset()) == pytest.approx({8: 0.8 * 1.75})
    # a run as long as the allowed length costs the multiplier; a shorter one costs nothing
    assert dry_penalties([5, 6, 9, 5, 6], DRY, frozenset()) == pytest.approx({9: 0.8})
    assert dry_penalties([5, 6, 9, 5], DRY, frozenset()) == {}


def test_dry_penalty_grows_with_the_run_and_takes_the_longest_match():
    loop = [1, 2, 3, 4] * 4  # the output went round four times
    penalties = dry_penalties(loop, DRY, frozenset())
    assert set(penalties) == {1}  # the next token would start the loop again
    longest = 12  # the whole output but its first round matches its end
    assert penalties[1] == pytest.approx(0.8 * 1.75 ** (longest - 2))


def test_dry_runs_stop_at_sequence_breakers_and_leave_single_words_alone():
    newline = 0
    lines = [3, 4, 5, newline, 3, 4, 6, newline, 3, 4]
    # "3 4" repeats at the start of each line: a run of 2 (it cannot extend across the newline)
    assert dry_penalties(lines, DRY, frozenset({newline})) == pytest.approx({5: 0.8, 6: 0.8})
    assert dry_penalties([*lines, newline], DRY, frozenset({newline})) == {}
    # one token said often is not a run: "the" may come back as often as it needs
    assert dry_penalties([7, 1, 7, 2, 7, 3, 7], DRY, frozenset()) == {}


def test_dry_changes_the_greedy_pick_and_is_off_by_default():
    logits = torch.tensor([0.0, 2.0, 1.5, 0.0, 0.0])
    out = [1, 2, 3, 1, 2, 3, 1, 2, 3]  # the model would go round again with 1
    assert sample(logits, SamplingParams(temperature=0), None, generated=out) == 1
    assert (
        sample(logits, SamplingParams(temperature=0, dry_multiplier=0.8), None, generated=out) == 2
    )


@pytest.mark.parametrize(
    "kwargs,name",
    [
        ({"dry_multiplier": -1}, "dry_multiplier"),
        ({"dry_base": 0.5}, "dry_base"),
        ({"dry_allowed_length": 0}, "dry_allowed_length"),
        ({"temperature": -1}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_k": -3}, "top_k"),
        ({"min_p": 2}, "min_p"),
        ({"repetition_penalty": 0}, "repetition_penalty"),
        ({"presence_penalty": 3}, "presence_penalty"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"temperature": float("nan")}, "temperature"),
    ],
)
def test_invalid_values_name_the_option(kwargs, name):
    with pytest.raises(GenforgeError, match=name):
        SamplingParams(**kwargs)


def test_unknown_option_is_an_error():
    with pytest.raises(GenforgeError, match="tempreature"):
        SamplingParams.from_kwargs(tempreature=0.5)


@pytest.mark.parametrize(
    "top_k,top_p,min_p,temperature",
    [
        (0, 0.95, 0.0, 0.7),
        (0, 0.5, 0.05, 1.0),
        (40, 0.95, 0.05, 0.8),
        (20, 0.8, 0.0, 0.7),
        (0, 1.0, 0.1, 1.0),
        (0, 1.0, 0.0, 1.3),
        (5, 1.0, 0.0, 1.0),
        (0, 0.9999, 0.0, 2.0),
    ],
)
def test_fast_candidates_match_the_reference_filter(top_k, top_p, min_p, temperature):
    from genforge.generate.sampling import candidates

    g = torch.Generator().manual_seed(top_k * 7 + int(top_p * 100))
    for scale in (0.5, 3.0, 8.0):  # flat to peaked distributions (a flat one needs the full sort)
        logits = torch.randn(5000, generator=g) * scale
        params = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p)
        want = filter_logits(logits, params).softmax(-1)
        ids, weights = candidates(logits, params)
        got = torch.zeros_like(want)
        if ids is None:
            got = weights
        else:
            got[ids] = weights
        differ = (got > 0) != (want > 0)
        assert not (differ & ~near_a_cutoff(logits, params)).any()
        both = (got > 0) & (want > 0)
        got, want = got * both, want * both
        assert torch.allclose(got / got.sum(), want / want.sum(), atol=1e-6)


def near_a_cutoff(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Tokens that float32 rounding may put on either side of a filter's cutoff, so that two
    correct implementations may disagree about them.

    The two filters add probabilities in different orders, and the order also depends on the CPU's
    vector width (AVX2 and AVX-512 kernels reduce 8 or 16 lanes at a time). A float32 softmax output
    is within a few units in the last place (2^-24 relative) of the exact value, and a sum of up to
    V of them summing to at most 1 is within V * 2^-24 of the exact sum whatever the order: a token
    whose exact cumulative probability lies that close to top_p, or whose probability lies within
    16 units in the last place of the top-k or min-p cutoff, may land on either side.
    """
    ulp = 2.0**-24
    probs = (logits.double() / params.temperature).softmax(-1)
    near = torch.zeros_like(probs, dtype=torch.bool)
    p, order = probs.sort(descending=True)
    if 0 < params.top_k < len(p):
        near |= (probs - p[params.top_k - 1]).abs() <= 16 * ulp * p[params.top_k - 1]
        p, order = p[: params.top_k] / p[: params.top_k].sum(), order[: params.top_k]
    if params.top_p < 1:
        before = p.cumsum(0) - p  # the probability of the tokens more likely than this one
        near[order[(before - params.top_p).abs() <= (len(probs) + 16) * ulp]] = True
        keep = before < params.top_p
        p, order = p[keep] / p[keep].sum(), order[keep]
    if params.min_p > 0:
        cut = params.min_p * p[0]
        near[order[(p - cut).abs() <= 16 * ulp * cut]] = True
    return near
