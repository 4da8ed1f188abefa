"""The scheduler with plain requests and no model.

`FakeEngine` plays the engine's part: it writes each scheduled token into the slot its block table
names, and "samples" the next token from what the request's table reads back out of those slots. A
block handed to two sequences at once, a prefix match onto the wrong content, a skipped or repeated
chunk: each changes the outputs, which are compared with a plain loop over `next_token`.
"""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from genforge.generate.blocks import BlockPool
from genforge.generate.scheduler import Request, Scheduler


def next_token(tokens):
    """A deterministic stand-in for a model: depends on every token and its position."""
    return sum((i + 1) * t for i, t in enumerate(tokens)) % 1009


def expected(prompt, max_tokens):
    tokens = list(prompt)
    for _ in range(max_tokens):
        tokens.append(next_token(tokens))
    return tokens[len(prompt) :]


class FakeEngine:
    def __init__(self, n_blocks=64, block_size=4, prefix_cache=True, **kw):
        self.pool = BlockPool(n_blocks, block_size, prefix_cache)
        self.sched = Scheduler(self.pool, **kw)
        self.kv = {}  # slot -> token whose "keys and values" it holds
        self.steps = []  # each step's [(request, start, n)]

    def add(self, prompt, max_tokens):
        req = Request(list(prompt), max_tokens)
        self.sched.add(req)
        return req

    def slot(self, req, pos):
        bs = self.pool.block_size
        return req.table.blocks[pos // bs] * bs + pos % bs

    def step(self):
        work = self.sched.schedule()
        copies, bs = self.pool.take_copies(), self.pool.block_size  # as the engine does
        for source, target, n in copies:
            for o in range(n):
                self.kv[target * bs + o] = self.kv[source * bs + o]
        self.pool.copied(copies)
        assert sum(s.n for s in work) <= self.sched.step_tokens
        assert len({id(s.request) for s in work}) == len(work)
        assert len(self.sched.running) <= self.sched.max_batch
        for s in work:
            req = s.request
            assert s.n >= 1 and s.start == req.n_computed  # contiguous, nothing skipped
            for pos in range(s.start, s.start + s.n):
                self.kv[self.slot(req, pos)] = req.tokens[pos]
        self.sched.update(work)
        for s in work:
            if s.samples:
                req = s.request
                seen = [self.kv[self.slot(req, p)] for p in range(len(req.tokens))]
                req.output.append(next_token(seen))
                if len(req.output) >= req.max_tokens:
                    self.sched.finish(req, "length")
        self.steps.append([(s.request, s.start, s.n) for s in work])
        return work

    def steps_of(self, req):
        return [i for i, step in enumerate(self.steps) if any(r is req for r, _, _ in step)]

    def run(self, max_steps=10_000):
        for _ in range(max_steps):
            if not self.sched.has_work():
                return
            self.step()
        raise AssertionError("the scheduler made no progress")


def prompt(seed, n):
    return [(seed * 131 + i * 17) % 1000 + 1 for i in range(n)]


def test_one_request_prefills_then_decodes_to_its_limit():
    eng = FakeEngine()
    req = eng.add(prompt(1, 10), 5)
    eng.run()
    assert req.output == expected(req.prompt, 5) and req.finish_reason == "length"
    assert [n for _, _, n in sum(eng.steps, [])] == [10, 1, 1, 1, 1]
    assert eng.pool.n_available == eng.pool.n_blocks


def test_a_request_added_mid_run_joins_at_the_next_step():
    eng = FakeEngine()
    a = eng.add(prompt(1, 6), 10)
    for _ in range(3):
        eng.step()
    b = eng.add(prompt(2, 7), 4)
    work = eng.step()
    assert [(s.request, s.n) for s in work] == [(a, 1), (b, 7)]
    work = eng.step()
    assert [(s.request, s.n) for s in work] == [(a, 1), (b, 1)]
    eng.run()
    assert a.output == expected(a.prompt, 10) and b.output == expected(b.prompt, 4)


def test_a_finished_request_leaves_and_its_blocks_return():
    eng = FakeEngine(n_blocks=16, block_size=4)
    short, long = eng.add(prompt(1, 6), 2), eng.add(prompt(2, 6), 8)
    eng.step()
    eng.step()
    assert short.finished and eng.sched.running == [long]
    assert short.table.blocks == []
    assert eng.pool.n_available == eng.pool.n_blocks - len(long.table.blocks)
    eng.run()
    assert eng.pool.n_available == eng.pool.n_blocks


def test_a_long_prompt_is_prefilled_in_chunks_after_the_decodes():
    eng = FakeEngine(step_tokens=8)
    a = eng.add(prompt(1, 5), 20)
    eng.step()
    b = eng.add(prompt(2, 30), 3)
    while not b.output:
        work = eng.step()
        assert work[0].request is a and work[0].n == 1  # a's decode is never held up
    chunks = [n for step in eng.steps for r, _, n in step if r is b]
    assert chunks == [7, 7, 7, 7, 2]  # what the decode leaves of each step's 8 tokens
    assert len(a.output) == 1 + len(chunks)  # a sampled at every step meanwhile
    eng.run()
    assert a.output == expected(a.prompt, 20) and b.output == expected(b.prompt, 3)


def test_the_budget_splits_a_prompt_larger_than_a_step():
    eng = FakeEngine(step_tokens=4)
    req = eng.add(prompt(3, 10), 2)
    eng.run()
    assert [n for step in eng.steps for _, _, n in step] == [4, 4, 2, 1]
    assert req.output == expected(req.prompt, 2)


def test_max_batch_bounds_the_running_requests():
    eng = FakeEngine(max_batch=2)
    reqs = [eng.add(prompt(i, 5), 3 + i) for i in range(5)]
    eng.step()
    assert eng.sched.running == reqs[:2] and list(eng.sched.waiting) == reqs[2:]
    eng.run()
    assert max(len(step) for step in eng.steps) == 2
    for r in reqs:
        assert r.output == expected(r.prompt, r.max_tokens)


def test_cancelling_waiting_and_running_requests_frees_their_memory():
    eng = FakeEngine(n_blocks=16, block_size=4, max_batch=1)
    running, waiting = eng.add(prompt(1, 9), 10), eng.add(prompt(2, 9), 10)
    eng.step()
    assert eng.sched.running == [running] and eng.pool.n_available == 16 - 3
    eng.sched.cancel(waiting)
    assert waiting.finish_reason == "cancelled" and not eng.sched.waiting
    eng.sched.cancel(running)
    assert running.finish_reason == "cancelled" and not eng.sched.running
    assert eng.pool.n_available == 16 and not eng.sched.has_work()
    eng.sched.cancel(running)  # a second cancel changes nothing
    assert eng.pool.n_available == 16
    assert eng.sched.schedule() == []
    assert waiting.output == [] and running.output == [expected(running.prompt, 1)[0]]


def test_requests_wait_for_memory_and_all_finish():
    # 24 positions; each request needs up to 15, so only one runs at a time.
    eng = FakeEngine(n_blocks=6, block_size=4, prefix_cache=False)
    reqs = [eng.add(prompt(i, 8), 8) for i in range(4)]
    eng.step()
    assert len(eng.sched.running) < eng.sched.max_batch and eng.sched.waiting
    eng.run()
    for r in reqs:
        assert r.output == expected(r.prompt, 8) and r.finish_reason == "length"
    assert eng.pool.n_available == 6


@pytest.mark.parametrize("prefix_cache", [False, True])
def test_the_newest_request_is_preempted_and_recomputed(prefix_cache):
    # Both fit at first (two blocks each); growing to three each needs six of the four blocks.
    eng = FakeEngine(n_blocks=4, block_size=4, prefix_cache=prefix_cache)
    old, new = eng.add(prompt(1, 5), 8), eng.add(prompt(2, 5), 8)
    eng.run()
    assert old.n_preempted == 0 and new.n_preempted == 1
    assert old.output == expected(old.prompt, 8) and new.output == expected(new.prompt, 8)
    assert eng.pool.n_available == 4
    # The older request never waits; the newer one is recomputed from its prompt and the three
    # tokens it had, from its first block on when that block is still cached.
    assert all(step[0][0] is old for step in eng.steps[:8])
    redo = next(step[0] for step in eng.steps[8:] if step[0][0] is new)
    assert redo[1:] == ((4, 5) if prefix_cache else (0, 9))


def test_a_preempted_request_resumes_before_later_arrivals():
    eng = FakeEngine(n_blocks=4, block_size=4, max_batch=2)
    old, new = eng.add(prompt(1, 5), 8), eng.add(prompt(2, 5), 8)
    later = eng.add(prompt(3, 2), 2)  # would fit in what the preemption frees
    eng.run()
    assert new.n_preempted == 1
    new_steps, later_steps = eng.steps_of(new), eng.steps_of(later)
    resumed = next(b for a, b in zip(new_steps, new_steps[1:], strict=False) if b > a + 1)
    assert min(later_steps) >= resumed
    for r in (old, new, later):
        assert r.output == expected(r.prompt, r.max_tokens)


def test_the_oldest_request_always_makes_progress():
    eng = FakeEngine(n_blocks=3, block_size=4, prefix_cache=False, step_tokens=4)
    reqs = [eng.add(prompt(i, 4), 7) for i in range(3)]
    eng.run()
    assert reqs[0].n_preempted == 0 and sum(r.n_preempted for r in reqs) > 0
    for r in reqs:
        assert r.output == expected(r.prompt, 7)


def test_a_repeated_prompt_is_served_from_the_prefix_cache():
    eng = FakeEngine(block_size=4)
    long = prompt(5, 22)
    first = eng.add(long, 3)
    eng.run()
    second = eng.add(long, 5)
    work = eng.step()
    assert second.n_cached == 20 and (work[0].start, work[0].n) == (20, 2)
    eng.run()
    assert second.output == expected(long, 5) and first.n_cached == 0


def test_a_prompt_that_is_entirely_cached_still_computes_its_last_token():
    eng = FakeEngine(block_size=4)
    aligned = prompt(6, 16)
    eng.add(aligned, 3)
    eng.run()
    again = eng.add(aligned, 3)
    work = eng.step()
    assert again.n_cached == 12 and (work[0].start, work[0].n) == (12, 4)
    eng.run()
    assert again.output == expected(aligned, 3)


def test_a_request_running_alongside_shares_the_blocks_of_its_prefix():
    eng = FakeEngine(n_blocks=16, block_size=4)
    shared = prompt(7, 12)
    a = eng.add(shared + [1, 2], 6)
    eng.step()
    b = eng.add(shared + [3, 4, 5], 6)
    eng.step()
    assert b.n_cached == 12 and b.table.blocks[:3] == a.table.blocks[:3]
    eng.run()
    assert a.output == expected(a.prompt, 6) and b.output == expected(b.prompt, 6)
    assert eng.pool.n_available == 16


def test_prefix_statistics_count_each_admission_once():
    """A request that waits for memory retries its prefix match; only its admission counts."""
    eng = FakeEngine(n_blocks=6, block_size=4, step_tokens=64)
    first = eng.add(prompt(1, 16), 4)
    eng.run()
    assert (eng.pool.hits, eng.pool.queries) == (0, 16)
    eng.add(prompt(2, 12), 8)  # holds 5 of the 6 blocks while it runs
    eng.step()
    again = eng.add(first.prompt, 4)  # needs 5 blocks: must wait for the hog
    for _ in range(3):
        eng.step()
    assert again in eng.sched.waiting
    eng.run()
    assert again.output == expected(first.prompt, 4)
    assert eng.pool.queries == 16 + 12 + 16
    assert eng.pool.hits == again.n_cached


def test_a_request_larger_than_the_cache_is_refused():
    sched = Scheduler(BlockPool(n_blocks=4, block_size=4))
    with pytest.raises(ValueError, match="needs 17 cache positions but the KV cache holds 16"):
        sched.add(Request(prompt(1, 10), 7))
    sched.add(Request(prompt(1, 10), 6))
    assert len(sched.waiting) == 1


def test_nonsense_limits_are_refused():
    with pytest.raises(ValueError):
        Scheduler(BlockPool(4, 4), max_batch=0)
    with pytest.raises(ValueError):
        Scheduler(BlockPool(4, 4), step_tokens=0)


@settings(max_examples=60, deadline=None)
@given(
    n_blocks=st.integers(3, 12),
    step_tokens=st.integers(1, 20),
    max_batch=st.integers(1, 4),
    prefix_cache=st.booleans(),
    jobs=st.lists(
        st.tuples(st.integers(0, 2), st.integers(1, 9), st.integers(1, 6), st.integers(0, 6)),
        min_size=1,
        max_size=6,
    ),
)
def test_any_workload_finishes_with_the_right_outputs(
    n_blocks, step_tokens, max_batch, prefix_cache, jobs
):
    """Requests sharing prefixes, arriving over time, some cancelled, in a pool that may be tight."""
    eng = FakeEngine(n_blocks, 2, prefix_cache, max_batch=max_batch, step_tokens=step_tokens)
    bases = [prompt(b, 9) for b in range(3)]
    arrivals = {}  # step -> [(prompt, max_tokens, step to cancel it at or None)]
    for i, (base, n_prompt, max_tokens, when) in enumerate(jobs):
        n_prompt = min(n_prompt, 2 * n_blocks - max_tokens)
        if n_prompt >= 1:
            cancel = when + i % 4 if i % 3 == 2 else None
            arrivals.setdefault(when, []).append((bases[base][:n_prompt], max_tokens, cancel))
    added, to_cancel = [], []
    for step in range(10_000):
        if not eng.sched.has_work() and step > max(arrivals, default=0):
            break
        for p, m, cancel in arrivals.get(step, []):
            added.append(eng.add(p, m))
            to_cancel.append((cancel, added[-1]))
        for when, r in to_cancel:
            if when == step:
                eng.sched.cancel(r)
        eng.step()
    assert not eng.sched.has_work()
    for r in added:
        want = expected(r.prompt, r.max_tokens)
        assert r.output == (want[: len(r.output)] if r.finish_reason == "cancelled" else want)
    assert eng.pool.n_available == n_blocks
