"""The compute thread: every piece of model work of a process runs on one thread, whoever asks."""

from __future__ import annotations

import threading

import pytest
import torch

from genforge import compute
from genforge.generate.engine import Engine
from genforge.generate.sampling import SamplingParams
from genforge.model.config import ModelConfig
from genforge.model.transformer import Transformer


@pytest.fixture(scope="module")
def tiny_model():
    cfg = ModelConfig(
        vocab_size=64, dim=32, n_layers=1, n_heads=2, n_kv_heads=1, hidden_dim=64, max_seq_len=256
    )
    torch.manual_seed(0)
    return Transformer(cfg).eval()


def test_run_returns_the_result_and_raises_the_error_in_the_caller():
    assert compute.run(lambda a, b=0: a + b, 2, b=3) == 5
    assert compute.run(threading.current_thread) is not threading.current_thread()

    def fails():
        raise ValueError("the job's own error")

    with pytest.raises(ValueError, match="the job's own error"):
        compute.run(fails)
    assert compute.run(lambda: 1) == 1  # the thread goes on after a failed job


def test_work_asked_from_many_threads_runs_on_one_and_a_job_may_run_a_job():
    seen: list[threading.Thread] = []

    def job():
        seen.append(threading.current_thread())
        return compute.run(compute.is_current)  # called on the thread itself: runs inline

    callers = [threading.Thread(target=lambda: seen.append(compute.run(job))) for _ in range(4)]
    for t in callers:
        t.start()
    for t in callers:
        t.join()
    threads = {t for t in seen if isinstance(t, threading.Thread)}
    assert len(threads) == 1 and next(iter(threads)).name == "genforge-compute"
    assert [x for x in seen if not isinstance(x, threading.Thread)] == [True] * 4


def test_generation_and_loading_run_on_the_compute_thread(tiny_model):
    engine = Engine(tiny_model, context_length=64)
    threads = set()
    forward = tiny_model.forward

    def recording_forward(*args, **kwargs):
        threads.add(threading.current_thread().name)
        return forward(*args, **kwargs)

    tiny_model.forward = recording_forward
    try:
        out = list(engine.generate([1, 2, 3], SamplingParams(temperature=0, max_tokens=5)))
        scored = engine.loglikelihood([([1, 2, 3], [4, 5])])
    finally:
        del tiny_model.forward
    assert len(out) == 5 and len(scored) == 1
    assert threads == {"genforge-compute"}


def test_a_job_waits_at_most_for_a_step_while_engines_generate(tiny_model):
    engine = Engine(tiny_model, context_length=256)
    stream = engine.generate([1, 2, 3], SamplingParams(temperature=0, max_tokens=200))
    next(stream)
    steps_before = len(stream.request.output)
    assert compute.run(lambda: torch.ones(3).sum().item()) == 3.0
    # the job ran between steps, long before the request's 200 tokens were done
    assert len(stream.request.output) < 200 and len(stream.request.output) >= steps_before
    stream.close()
