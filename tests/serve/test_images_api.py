"""`POST /v1/images/generations` over real HTTP, with the official `openai` client and with plain
requests, against a server whose image model is a tiny run trained here (tests/serve/conftest.py):
PNGs of the size and count asked for, reproducible seeds, a 400 naming the field for each bad input,
the model in /v1/models; and, in process, a server without the image extra."""

from __future__ import annotations

import base64
import io
import subprocess
import sys

import httpx
import pytest
from conftest import API_KEY, metric

from genforge.runs import latest
from genforge.serve import images

openai = pytest.importorskip("openai")

ROUTE = "/v1/images/generations"
PROMPT = "two red circles"  # every word is in the shapes captions
FAST = {"steps": 2}  # the tiny model draws noise at any step count: keep it short


def _post(server, body, headers=None):
    headers = {"authorization": f"Bearer {API_KEY}"} if headers is None else headers
    return httpx.post(f"{server.url}{ROUTE}", json=body, headers=headers, timeout=120)


def _pngs(answer: dict) -> list[bytes]:
    return [base64.b64decode(d["b64_json"]) for d in answer["data"]]


def _picture(png: bytes):
    from PIL import Image

    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    image = Image.open(io.BytesIO(png))
    image.load()
    return image


@pytest.fixture(scope="module")
def client(image_server):
    return openai.OpenAI(
        base_url=f"{image_server.url}/v1", api_key=API_KEY, max_retries=0, timeout=120
    )


def test_the_openai_client_gets_pngs_of_the_size_and_count_asked(client, image_server, image_run):
    counted = ("genforge_images_generated_total", f'model="{image_run}"')
    before = metric(image_server, *counted)
    r = client.images.generate(
        model=str(image_run),
        prompt=PROMPT,
        n=3,
        size="128x128",
        response_format="b64_json",
        extra_body={**FAST, "seed": 7, "guidance": 2.0, "sampler": "ddim"},
    )
    assert isinstance(r.created, int) and len(r.data) == 3
    pictures = [_picture(base64.b64decode(d.b64_json)) for d in r.data]
    assert {(p.size, p.mode) for p in pictures} == {((128, 128), "RGB")}
    # nearest-pixel enlargement: every 4x4 block is one colour
    pixels = pictures[0].load()
    blocks = [(x, y) for x in range(128) for y in range(128)]
    assert all(pixels[x, y] == pixels[x - x % 4, y - y % 4] for x, y in blocks)
    assert all(d.revised_prompt is None for d in r.data)  # the model read every word
    assert r.size == "128x128" and r.output_format == "png"
    extra = r.model_extra["genforge"]
    assert extra == {
        "model": str(image_run),
        "seed": 7,
        "steps": 2,
        "guidance": 2.0,
        "sampler": "ddim",
        "unknown_words": [],
    }
    assert metric(image_server, *counted) == before + 3


def test_the_default_model_and_size_are_the_servers_own(image_server):
    r = _post(image_server, {"prompt": PROMPT, **FAST})
    assert r.status_code == 200, r.text
    answer = r.json()
    (png,) = _pngs(answer)  # n defaults to 1, as OpenAI's
    assert _picture(png).size == (32, 32) and answer["size"] == "32x32"
    assert isinstance(answer["genforge"]["seed"], int)  # none given: a random one, reported


def test_the_same_seed_gives_the_same_bytes_and_other_seeds_differ(image_server):
    body = {"prompt": PROMPT, "n": 2, "seed": 11, **FAST}
    first, again = (_pngs(_post(image_server, body).json()) for _ in range(2))
    assert first == again
    assert first[0] != first[1]  # picture i draws from seed + i
    other = _pngs(_post(image_server, body | {"seed": 12}).json())
    assert other != first and other[0] != first[0]


def test_words_the_model_never_saw_are_named(image_server):
    answer = _post(image_server, {"prompt": "two red zebras", "seed": 1, **FAST}).json()
    assert answer["genforge"]["unknown_words"] == ["zebras"]
    assert answer["data"][0]["revised_prompt"] == "two red"  # what the model read


def _error(response, status: int) -> dict:
    assert response.status_code == status, response.text
    err = response.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["message"].endswith(".") and "Traceback" not in err["message"]
    return err


BAD = [
    ({"prompt": ""}, "prompt", "the prompt is empty"),
    ({"prompt": "   "}, "prompt", "say what to draw"),
    ({"n": 0}, "n", "between 1 and 16, got 0"),
    ({"n": 17}, "n", "between 1 and 16, got 17"),
    ({"steps": 0}, "steps", "between 1 and 1000"),
    ({"steps": 1001}, "steps", "between 1 and 1000"),
    ({"guidance": -1}, "guidance", "between 0 and 50"),
    ({"guidance": 51}, "guidance", "between 0 and 50"),
    ({"sampler": "euler"}, "sampler", "dpm, ddim"),
    ({"response_format": "url"}, "response_format", "b64_json"),
    ({"output_format": "jpeg"}, "output_format", "png"),
    ({"size": "100x100"}, "size", "32x32, 64x64, 128x128, 256x256"),
    ({"size": "64x32"}, "size", "32x32, 64x64, 128x128, 256x256"),
    ({"size": "512x512"}, "size", "enlarged 1, 2, 4 or 8 times"),
    ({"size": "big"}, "size", "this model draws 32x32 pictures"),
    ({"seed": -1}, "seed", "greater than or equal to 0"),
    ({"n": "many"}, "n", "integer"),
]


@pytest.mark.parametrize(
    ("change", "param", "words"), BAD, ids=[f"{p}{i}" for i, (_, p, _) in enumerate(BAD)]
)
def test_bad_input_is_a_400_naming_the_field(image_server, change, param, words):
    err = _error(_post(image_server, {"prompt": PROMPT, **FAST} | change), 400)
    assert err["type"] == "invalid_request_error" and err["param"] == param
    assert words in err["message"]


def test_bad_input_through_the_client_is_a_bad_request_error(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.images.generate(prompt=PROMPT, response_format="url")
    assert "b64_json" in e.value.body["message"]
    with pytest.raises(openai.BadRequestError) as e:
        client.images.generate(prompt="", extra_body=FAST)
    assert e.value.body["param"] == "prompt"


def test_a_missing_prompt_and_a_model_not_served(image_server, image_run):
    err = _error(_post(image_server, {"n": 1}), 400)
    assert err["param"] == "prompt" and "Missing" in err["message"]
    err = _error(_post(image_server, {"prompt": PROMPT, "model": "dall-e-3"}), 404)
    assert err["code"] == "model_not_found" and str(image_run) in err["message"]
    # a client names served models only, never a folder of the server's, even a model's
    checkpoint = str(latest(image_run))
    err = _error(_post(image_server, {"prompt": PROMPT, "model": checkpoint}), 404)
    assert err["param"] == "model" and "not an image model served here" in err["message"]


def test_the_guards_of_every_route_hold(image_server):
    err = _error(_post(image_server, {"prompt": PROMPT}, headers={}), 401)
    assert err["code"] == "invalid_api_key"
    r = httpx.get(f"{image_server.url}{ROUTE}", headers={"authorization": f"Bearer {API_KEY}"})
    assert "use POST" in _error(r, 405)["message"]


def test_models_lists_the_image_model(client, image_run, tiny_model_dir):
    listed = {m.id: m.model_extra.get("genforge") for m in client.models.list().data}
    assert listed[str(image_run)]["kind"] == "image" and listed[str(image_run)]["size"] == 32
    assert listed[str(tiny_model_dir)]["kind"] == "chat"
    model = client.models.retrieve(str(image_run))
    assert model.owned_by == "genforge"


def test_an_image_model_that_is_not_there_stops_the_server_at_start(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "genforge", "serve", "--image-model", str(tmp_path / "nowhere")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 1
    assert "no image model" in r.stderr and "genforge image train" in r.stderr


# -- without the image extra (in process) ----------------------------------------------------------


def test_without_the_image_extra_the_server_starts_and_says_what_to_install(monkeypatch):
    from fastapi.testclient import TestClient

    from genforge.serve.app import create_app
    from genforge.serve.models import Registry

    monkeypatch.setattr(images, "available", lambda: False)
    app = create_app(Registry([], allow_load=False))
    with TestClient(app, base_url="http://localhost") as http:
        kinds = [m["genforge"]["kind"] for m in http.get("/v1/models").json()["data"]]
        assert "image" not in kinds
        err = _error(http.post(ROUTE, json={"prompt": PROMPT}), 404)
    assert "pip install 'genforge[image]'" in err["message"]
