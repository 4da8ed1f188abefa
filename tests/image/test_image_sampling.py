"""The text-to-image network's files and its sampler: same seed, same picture; bad requests refused
in one sentence. An untrained network is enough here (what is tested is the plumbing, not the
pictures); tests/image/test_shipped_images.py judges the trained models."""

from __future__ import annotations

import numpy as np
import pytest
from components import require_module

from genforge.errors import GenforgeError

require_module("diffusers", "image")
require_module("PIL", "image")

from genforge.image import model as image_model  # noqa: E402
from genforge.image.sampling import ImageGenerator, check_request, grid, resolve, save_png  # noqa: E402

CAPTIONS = ["a red circle", "two blue squares", "a green triangle above a red square"]


def tiny_config(**kw) -> image_model.ImageConfig:
    return image_model.ImageConfig(
        widths=(16, 32), attention=(False, True), text_dim=32, text_layers=1, **kw
    )


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """An untrained tiny model written to a folder as training writes one."""
    import torch

    torch.manual_seed(0)
    tok = image_model.train_tokenizer(CAPTIONS)
    net = image_model.TextToImage(tiny_config(vocab=tok.get_vocab_size(), source="shapes"))
    folder = tmp_path_factory.mktemp("model")
    image_model.save(net, tok, folder)
    return folder


@pytest.fixture(scope="module")
def gen(saved):
    return ImageGenerator.load(saved)


def test_the_saved_unet_is_a_diffusers_model_folder(saved):
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(saved / "unet")
    assert unet.config.cross_attention_dim == 32
    assert unet.config.in_channels == 12  # 3 colours x a 2x2 patch


def test_same_seed_same_pictures_and_picture_i_is_seed_plus_i(gen):
    a = gen.generate("a red circle", n=3, steps=4, seed=5)
    b = gen.generate("a red circle", n=3, steps=4, seed=5)
    assert a.shape == (3, 32, 32, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    third = gen.generate("a red circle", n=1, steps=4, seed=7)
    # another batch size may block the convolutions differently: fp32 rounding, not another picture
    assert np.abs(a[2].astype(int) - third[0]).max() <= 2
    assert not np.array_equal(a[0], a[1])  # each picture its own noise


def test_the_caption_and_the_guidance_change_the_picture(gen):
    red = gen.generate("a red circle", n=1, steps=4, seed=1)
    blue = gen.generate("two blue squares", n=1, steps=4, seed=1)
    assert not np.array_equal(red, blue)  # even untrained, the words reach the UNet
    plain = gen.generate("a red circle", n=1, steps=4, seed=1, guidance=1.0)
    assert not np.array_equal(red, plain)


def test_both_samplers_run(gen):
    for sampler in ("dpm", "ddim"):
        out = gen.generate("a red circle", n=2, steps=3, seed=1, sampler=sampler)
        assert out.shape == (2, 32, 32, 3)


def test_words_the_model_never_saw_are_named(gen):
    assert gen.unknown_words("a purple circle") == ["purple"]
    assert gen.unknown_words("A RED circle") == []  # lower-cased like the training captions


@pytest.mark.parametrize(
    ("kw", "says"),
    [
        ({"prompt": "  "}, "prompt is empty"),
        ({"n": 0}, "between 1 and 16"),
        ({"n": 17}, "between 1 and 16"),
        ({"steps": 0}, "steps must be"),
        ({"guidance": -1}, "guidance must be"),
        ({"sampler": "euler"}, "sampler must be"),
    ],
)
def test_bad_requests_get_one_sentence(kw, says):
    args = {"prompt": "a red circle", "n": 1, "steps": 25, "guidance": 3.0, "sampler": "dpm"} | kw
    with pytest.raises(GenforgeError, match=says):
        check_request(**args)


def test_a_pooled_caption_ignores_padding_and_survives_saving(tmp_path):
    """The sampler cuts captions to their length and drops the mask; training pads and masks.
    A pooled model (the caption's mean state in the timestep embedding) must see the same mean
    both ways, and load back pooled."""
    import torch

    torch.manual_seed(0)
    tok = image_model.train_tokenizer(CAPTIONS)
    net = image_model.TextToImage(tiny_config(vocab=tok.get_vocab_size(), pooled=True)).eval()
    assert net.unet.class_embedding is not None
    ids, mask = image_model.encode_captions(tok, ["a red circle"], net.cfg.max_words)
    x, t = torch.randn(1, *net.latent_shape), torch.tensor([500])
    with torch.no_grad():
        padded = net(x, t, ids, mask)
        cut = net.unet(x, t, **ImageGenerator(net, tok)._states(["a red circle"])).sample
        other = net(x, t, *image_model.encode_captions(tok, ["two blue squares"], 24))
    # the same arithmetic over fewer (masked-out) positions: fp32 rounding apart
    torch.testing.assert_close(padded, cut, rtol=1e-4, atol=1e-5)
    assert (padded - other).abs().max() > 1e-3  # and the caption does reach it
    image_model.save(net, tok, tmp_path / "pooled")
    back, _ = image_model.load(tmp_path / "pooled")
    assert back.cfg.pooled
    with torch.no_grad():
        torch.testing.assert_close(back(x, t, ids, mask), padded)


def test_grey_models_crop_to_their_picture_size(tmp_path):
    tok = image_model.train_tokenizer(["a handwritten seven"])
    net = image_model.TextToImage(tiny_config(channels=1, crop=28, vocab=tok.get_vocab_size()))
    out = ImageGenerator(net, tok).generate("a handwritten seven", n=2, steps=2)
    assert out.shape == (2, 28, 28, 1)


def test_fp16_files_load_back_close_to_the_fp32_model(saved, tmp_path):
    import torch

    net, tok = image_model.load(saved)
    image_model.save(net, tok, tmp_path / "half", dtype=torch.float16)
    half, _ = image_model.load(tmp_path / "half")
    size = sum(f.stat().st_size for f in (tmp_path / "half").rglob("*.safetensors"))
    full = sum(f.stat().st_size for f in saved.rglob("*.safetensors"))
    assert size < 0.6 * full
    for (name, a), b in zip(net.state_dict().items(), half.state_dict().values(), strict=True):
        # fp16 keeps 11 significant bits: a relative error of at most 2^-11 per weight
        assert torch.allclose(a, b, rtol=2**-10, atol=1e-6), name


def test_model_names_resolve_or_say_what_is_wrong(saved, tmp_path):
    assert resolve(saved) == saved
    with pytest.raises(GenforgeError, match="no image model"):
        resolve(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(GenforgeError, match="not a genforge image model"):
        resolve(tmp_path / "empty")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / image_model.CONFIG).write_text("{}")
    with pytest.raises(GenforgeError, match="not a readable genforge image model"):
        ImageGenerator.load(tmp_path / "broken")


def test_grids_and_png_files(tmp_path):
    pictures = np.zeros((5, 32, 32, 3), dtype=np.uint8)
    im = grid(pictures, scale=2)
    assert im.size == (3 * 64 + 2 * 2, 2 * 64 + 2)  # 3 columns, 2 rows, 2-pixel gaps
    path = save_png(im, tmp_path / "sub" / "g.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob("sub/.*"))  # no temporary file left
    with pytest.raises(GenforgeError, match="PNG"):
        save_png(im, tmp_path / "g.jpg")
