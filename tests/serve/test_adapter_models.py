"""`genforge serve -m BASE --adapter a=DIR --adapter b=DIR`: each adapter is a model of its own, and
requests for the adapters and the base, in flight together, answer as the same model does in
process (a real server, the official `openai` client)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from adapters import make_adapter
from conftest import MODEL, Server

import genforge
from genforge.weights.configs import config_from_gguf
from genforge.weights.gguf import read_gguf

openai = pytest.importorskip("openai")

NAMES = (MODEL, "a", "b")
MESSAGES = ("Name three colours.", "Write one sentence about the sea.")
PROMPT = "The three primary colours are"  # for /v1/completions
# float32 weights and cache on both sides: batched and alone then round alike (fp16 keys would
# round float32-sized differences between batchings up to fp16 steps)
FLOAT32 = ("--dtype", "fp32", "--kv-dtype", "fp32", "--ctx", "1024")


@pytest.fixture(scope="module")
def adapter_dirs(smollm2_path, tmp_path_factory):
    g = read_gguf(smollm2_path)
    cfg = config_from_gguf(g.metadata, set(g.tensors))
    root = tmp_path_factory.mktemp("served-adapters")
    return {n: make_adapter(root / n, cfg, seed) for n, seed in (("a", 1), ("b", 2))}


@pytest.fixture(scope="module")
def server(adapter_dirs):
    adapters = [f for n, path in adapter_dirs.items() for f in ("--adapter", f"{n}={path}")]
    s = Server("-m", MODEL, *adapters, *FLOAT32)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def expected(adapter_dirs) -> dict[tuple[str, str], str]:
    """(model, message or prompt) -> the greedy answer of the same model in process, one request
    at a time."""
    llm = genforge.load(
        MODEL,
        adapters=adapter_dirs,
        dtype="fp32",
        kv_dtype="fp32",
        context_length=1024,
        progress=False,
    )
    views = {name: llm.with_adapter(None if name == MODEL else name) for name in NAMES}
    out = {}
    for name, view in views.items():
        for m in MESSAGES:
            out[name, m] = view.chat(m, temperature=0, max_tokens=24)
        out[name, PROMPT] = view.generate(PROMPT, temperature=0, max_tokens=16)
    llm.engine.close()
    for m in (*MESSAGES, PROMPT):  # each model answers differently: equal answers are no chance
        assert len({out[name, m] for name in NAMES}) == 3, m
    return out


def ask(client, model: str, message: str, **kw) -> str:
    r = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": message}],
        temperature=0,
        max_tokens=24,
        **kw,
    )
    assert r.model == model
    return r.choices[0].message.content


def test_the_adapters_are_listed_as_models_of_the_base(client):
    listed = {m.id: m for m in client.models.list().data}
    assert set(NAMES) <= set(listed)
    for name in ("a", "b"):
        extra = listed[name].model_extra["genforge"]
        assert extra["adapter"] is True and extra["base"] == MODEL and extra["loaded"] is True
    assert "adapter" not in listed[MODEL].model_extra["genforge"]
    assert client.models.retrieve("a").id == "a"


def test_each_model_answers_as_in_process(client, expected):
    for name in NAMES:  # one after the other
        assert ask(client, name, MESSAGES[0]) == expected[name, MESSAGES[0]], name


def test_requests_for_the_adapters_and_the_base_in_flight_together(client, expected):
    """Six requests started at once (two per model) are batched by the base's one engine; each
    answer is the one it gets alone. One of them streams."""
    jobs = [(name, m) for name in NAMES for m in MESSAGES]
    start = threading.Barrier(len(jobs))

    def run(job):
        name, m = job
        start.wait()
        if job == ("b", MESSAGES[1]):
            chunks = client.chat.completions.create(
                model=name,
                messages=[{"role": "user", "content": m}],
                temperature=0,
                max_tokens=24,
                stream=True,
            )
            return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        return ask(client, name, m)

    with ThreadPoolExecutor(len(jobs)) as pool:
        answers = list(pool.map(run, jobs))
    assert answers == [expected[job] for job in jobs]


def test_completions_go_through_the_adapter(client, expected):
    for name in NAMES:
        r = client.completions.create(model=name, prompt=PROMPT, temperature=0, max_tokens=16)
        assert r.choices[0].text == expected[name, PROMPT], name


def test_an_unknown_model_is_a_404_listing_the_adapters(client):
    with pytest.raises(openai.NotFoundError) as e:
        ask(client, "c", MESSAGES[0])
    assert e.value.status_code == 404 and e.value.body["code"] == "model_not_found"
    message = e.value.body["message"]
    served = message.partition("Served models: ")[2].rstrip(".").split(", ")
    assert "'c'" in message and set(NAMES) <= set(served), message
