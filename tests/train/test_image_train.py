"""Text-to-image training through the one loop: the run folder, resume, folders of your own
pictures, and the CLI's errors. Tiny networks and a few steps: what is tested is the loop's
bookkeeping, not picture quality (tests/image/test_shipped_images.py judges that)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from components import require_module

from genforge.errors import GenforgeError

require_module("diffusers", "image")
require_module("PIL", "image")

from genforge.image.sampling import ImageGenerator  # noqa: E402
from genforge.runs import checkpoints, latest  # noqa: E402
from genforge.train.images import RAW, ImageTrainConfig, train_images  # noqa: E402

TINY = {"widths": (16, 32), "text_dim": 32, "text_layers": 1, "batch_size": 4, "log_every": 1}


def tiny(out, **kw) -> ImageTrainConfig:
    return ImageTrainConfig(
        out=str(out), **({"data": "shapes", "steps": 4, "eval_every": 2} | TINY | kw)
    )


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("image") / "run"
    result = train_images(tiny(out), progress=False)
    return out, result


def test_a_run_writes_checkpoints_grids_metrics_and_the_loss_plot(run):
    out, result = run
    assert result["step"] == 4 and np.isfinite(result["val_loss"])
    assert [p.name for p in checkpoints(out)][-1] == "step_0000004"
    newest = latest(out)
    for name in ("unet/config.json", "text_encoder.safetensors", "tokenizer.json", RAW):
        assert (newest / name).is_file(), name
    grids = sorted((out / "samples").glob("*.png"))
    assert [g.name for g in grids] == ["step_0000002.png", "step_0000004.png"]
    assert len(json.loads(grids[-1].with_suffix(".json").read_text())) == 8  # its prompts
    kinds = {json.loads(line)["kind"] for line in (out / "metrics.jsonl").read_text().splitlines()}
    assert {"train", "eval", "sample"} <= kinds
    assert (out / "loss.png").is_file()
    # the run is a model: -m RUN draws with its newest checkpoint's EMA weights
    assert ImageGenerator.load(out).generate("a red circle", n=1, steps=2).shape == (1, 32, 32, 3)


def test_an_interrupted_run_resumes_to_the_same_weights(run, tmp_path):
    import torch
    from safetensors.torch import load_file

    whole, _ = run
    cut = tmp_path / "cut"
    train_images(tiny(cut, save_every=2), progress=False)
    import shutil

    shutil.rmtree(latest(cut))  # as if killed between step 2's and step 4's checkpoints
    assert latest(cut).name == "step_0000002"
    with pytest.raises(GenforgeError, match="--resume"):
        train_images(tiny(cut, save_every=2), progress=False)
    train_images(tiny(cut, save_every=2, resume=True), progress=False)
    a, b = load_file(latest(whole) / RAW), load_file(latest(cut) / RAW)
    for name in a:  # same data, noise and steps: the same arithmetic on the same machine
        assert torch.allclose(a[name], b[name], atol=1e-5), name
    with pytest.raises(GenforgeError, match="incompatible"):
        train_images(tiny(cut, steps=6, save_every=2, resume=True), progress=False)


def write_folder(root, corrupt: bool = True):
    from PIL import Image

    (root / "cats").mkdir(parents=True)
    for i, colour in enumerate(((200, 30, 30), (30, 30, 200), (30, 200, 30))):
        Image.new("RGB", (40 + 8 * i, 40), colour).save(root / "cats" / f"{i}.png")
    (root / "cats" / "1.txt").write_text("a blue cat\n")
    if corrupt:
        (root / "cats" / "broken.jpg").write_bytes(b"not a jpeg at all")


def test_a_folder_of_pictures_trains_and_a_corrupt_one_is_skipped_and_counted(tmp_path):
    write_folder(tmp_path / "pics")
    result = train_images(
        tiny(tmp_path / "run", data=str(tmp_path / "pics"), steps=2), progress=False
    )
    assert [p for p, _ in result["skipped"]] == [str(tmp_path / "pics" / "cats" / "broken.jpg")]
    gen = ImageGenerator.load(tmp_path / "run")
    assert gen.unknown_words("a blue cat") == []  # the .txt caption's words
    assert gen.unknown_words("cats") == []  # the folder's name for the others


def genforge(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "genforge", "image", *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
    )


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["train", "--data", "nowhere"], "neither mnist, shapes, nor a folder"),
        (["train", "--data", "shapes", "--steps", "0"], "--steps must be at least 1"),
        (["train", "--data", "shapes", "--size", "30"], "must be divisible by"),
        (["generate", "", "-m", "shapes"], "prompt is empty"),
        (["generate", "a red circle", "-n", "40"], "between 1 and 16"),
        (["generate", "a red circle", "--steps", "0"], "steps must be between"),
        (["generate", "a red circle", "-m", "nowhere"], "no image model"),
        (["generate", "a red circle", "-o", "out.jpg"], "PNG"),
    ],
)
def test_bad_input_is_one_line_that_says_what_to_do(args, says, tmp_path):
    p = genforge(*args, cwd=tmp_path)
    assert p.returncode != 0
    assert says in p.stderr, p.stderr
    assert "Traceback" not in p.stderr
    assert p.stderr.count("\n") == 1


def test_an_empty_folder_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    p = genforge("train", "--data", str(tmp_path / "empty"), cwd=tmp_path)
    assert p.returncode == 1 and "holds no images" in p.stderr


def test_generate_writes_a_png_grid(run, tmp_path):
    out, _ = run
    p = genforge(
        "generate",
        "a red circle",
        "-m",
        str(out),
        "-n",
        "2",
        "--steps",
        "2",
        "--scale",
        "2",
        "-o",
        str(tmp_path / "g.png"),
    )
    assert p.returncode == 0, p.stderr
    from PIL import Image

    with Image.open(tmp_path / "g.png") as im:
        assert im.size == (2 * 64 + 2, 64)
    p = genforge(
        "generate",
        "a purple circle",
        "-m",
        str(out),
        "-n",
        "1",
        "--steps",
        "1",
        "-o",
        str(tmp_path / "h.png"),
    )
    assert p.returncode == 0 and "never saw 'purple'" in p.stderr


def test_every_image_verb_has_help():
    for verb in ("train", "generate", "eval"):
        p = genforge(verb, "--help")
        assert p.returncode == 0 and "usage: genforge image " + verb in p.stdout
