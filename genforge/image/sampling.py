"""Sampling a text-to-image model: classifier-free guidance with diffusers' DPM-Solver++ or DDIM.

`ImageGenerator.generate(prompt, n, steps, guidance, seed)` returns uint8 pictures. The caption and
the empty caption are encoded once and the UNet sees both halves of the guidance batch in one call
per step. Picture i starts from the noise of seed `seed + i`, so the same seed gives the same
picture whatever `n` is (`-n 4 --seed 1`'s third picture is `-n 1 --seed 3`'s).
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import torch

from genforge.errors import GenforgeError
from genforge.image import model as image_model

MAX_IMAGES = 16  # pictures per call
SAMPLERS = ("dpm", "ddim")
# The models trained by recipes/images.py and shipped inside the package (fp16, a few MB each).
SHIPPED = {"shapes": "shapes", "digits": "digits"}
DEFAULT_IMAGE_MODEL = "shapes"


def shipped_folder(name: str) -> Path:
    return Path(__file__).parent / "models" / SHIPPED[name]


def resolve(name_or_path: str | os.PathLike | None) -> Path:
    """The model folder of a shipped model's name, a model folder, or a training run (its newest
    checkpoint)."""
    from genforge.runs import model_folder

    name = str(name_or_path or DEFAULT_IMAGE_MODEL)
    if name in SHIPPED:
        return shipped_folder(name)
    path = Path(name).expanduser()
    if not path.exists():
        raise GenforgeError(
            f"no image model {name!r}: give one of {', '.join(SHIPPED)}, a model folder, or a "
            "run folder of `genforge image train`."
        )
    folder = model_folder(path) or path
    if not image_model.is_image_model(folder):
        raise GenforgeError(
            f"{path} is not a genforge image model (no {image_model.CONFIG}); train one with "
            "`genforge image train`."
        )
    return folder


def check_request(prompt: str, n: int, steps: int, guidance: float, sampler: str) -> None:
    """Refuse what no sampling can use, in one sentence that names the setting."""
    if not prompt or not prompt.strip():
        raise GenforgeError('the prompt is empty; say what to draw, e.g. "two red circles".')
    if not 1 <= n <= MAX_IMAGES:
        raise GenforgeError(f"the number of pictures must be between 1 and {MAX_IMAGES}, got {n}.")
    if not 1 <= steps <= 1000:
        raise GenforgeError(f"steps must be between 1 and 1000, got {steps}.")
    if not 0 <= guidance <= 50:
        raise GenforgeError(f"guidance must be between 0 and 50 (1 = none), got {guidance}.")
    if sampler not in SAMPLERS:
        raise GenforgeError(f"the sampler must be one of {', '.join(SAMPLERS)}, not {sampler!r}.")


def make_scheduler(config, sampler: str):
    """The sampler's scheduler from the training schedule's config. The model works on pixels in
    [-1, 1], so each step's estimate of the clean picture is clipped to that range (DDIM's
    `clip_sample`, DPM-Solver's thresholding at 1): under the cosine schedule the noisiest step
    keeps a signal of 5e-5, and an unclipped estimate there multiplies the noise prediction's
    error by 20,000."""
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

    if sampler == "ddim":
        return DDIMScheduler.from_config(config, clip_sample=True, clip_sample_range=1.0)
    return DPMSolverMultistepScheduler.from_config(
        config, algorithm_type="dpmsolver++", thresholding=True, sample_max_value=1.0
    )


class ImageGenerator:
    """A loaded model and its tokenizer, ready to draw."""

    def __init__(self, net: image_model.TextToImage, tokenizer, name: str = ""):
        self.net, self.tokenizer, self.name = net.eval(), tokenizer, name
        self.cfg = net.cfg
        self.noise_config = image_model.noise_scheduler(self.cfg).config

    @classmethod
    def load(cls, name_or_path: str | os.PathLike | None = None) -> ImageGenerator:
        folder = resolve(name_or_path)
        net, tokenizer = image_model.load(folder)
        return cls(net, tokenizer, str(name_or_path or DEFAULT_IMAGE_MODEL))

    def _states(self, captions: list[str]) -> dict:
        """The UNet's caption arguments: word states cut after the longest caption (the padding
        beyond it is masked anyway), and the mask only where some caption is shorter."""
        ids, mask = image_model.encode_captions(self.tokenizer, captions, self.cfg.max_words)
        used = int(mask.sum(1).max())
        ids, mask = ids[:, :used], mask[:, :used]
        return self.net.condition(ids, mask, masked=not bool(mask.all()))

    def unknown_words(self, prompt: str) -> list[str]:
        return image_model.unknown_words(self.tokenizer, prompt)

    def generate(
        self,
        prompt: str,
        n: int = 4,
        steps: int = 25,
        guidance: float = 3.0,
        seed: int = 1,
        sampler: str = "dpm",
    ) -> np.ndarray:
        """`n` pictures of `prompt`: uint8 (n, H, W, channels); picture i from seed `seed + i`."""
        check_request(prompt, n, steps, guidance, sampler)
        return self.draw([prompt] * n, [seed + i for i in range(n)], steps, guidance, sampler)

    @torch.inference_mode()
    def draw(
        self,
        prompts: list[str],
        seeds: list[int],
        steps: int = 25,
        guidance: float = 3.0,
        sampler: str = "dpm",
    ) -> np.ndarray:
        """One picture per prompt, each from its own seed's noise, sampled as one batch."""
        cfg, unet, n = self.cfg, self.net.unet, len(prompts)
        scheduler = make_scheduler(self.noise_config, sampler)
        scheduler.set_timesteps(steps)
        shape = (1, *self.net.latent_shape)
        x = torch.cat(
            [torch.randn(shape, generator=torch.Generator().manual_seed(s)) for s in seeds]
        )
        x = x * scheduler.init_noise_sigma
        guided = guidance != 1.0
        cond = self._states(list(prompts))
        uncond = self._states([""] * n) if guided else None
        for t in scheduler.timesteps:
            inp = scheduler.scale_model_input(x, t)
            eps = unet(inp, t, **cond).sample
            if guided:  # two calls: each half without padding needs no attention mask
                eps_uncond = unet(inp, t, **uncond).sample
                eps = eps_uncond + guidance * (eps - eps_uncond)
            x = scheduler.step(eps, t, x).prev_sample
        return to_uint8(self.net.unpack(x), cfg)


def to_uint8(x: torch.Tensor, cfg: image_model.ImageConfig) -> np.ndarray:
    """Model pictures in [-1, 1] (N, C, size, size) as uint8 (N, H, W, C), cropped to `cfg.crop`."""
    pixels = ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    if cfg.crop and cfg.crop < cfg.size:
        a = (cfg.size - cfg.crop) // 2
        pixels = pixels[:, :, a : a + cfg.crop, a : a + cfg.crop]
    return pixels.permute(0, 2, 3, 1).numpy()


def grid(images: np.ndarray, cols: int = 0, scale: int = 1, gap: int = 2):
    """The pictures side by side in rows of `cols` (default: a near-square grid) as a PIL image,
    each enlarged `scale` times (nearest pixel: a 32x32 picture stays sharp)."""
    from PIL import Image

    n, h, w, c = images.shape
    cols = cols or int(np.ceil(np.sqrt(n)))
    rows = -(-n // cols)
    h, w = h * scale, w * scale
    canvas = np.full((rows * (h + gap) - gap, cols * (w + gap) - gap, c), 255, dtype=np.uint8)
    for i, im in enumerate(images):
        if scale > 1:
            im = im.repeat(scale, 0).repeat(scale, 1)
        r, col = divmod(i, cols)
        canvas[r * (h + gap) : r * (h + gap) + h, col * (w + gap) : col * (w + gap) + w] = im
    return Image.fromarray(canvas[..., 0] if c == 1 else canvas)


def png_bytes(image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def check_png_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise GenforgeError(f"pictures are written as PNG; name the file .png, not {path.name!r}.")
    return path


def save_png(image, path: str | os.PathLike) -> Path:
    """Write a PIL image as PNG atomically (a reader never sees half a file)."""
    path = check_png_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(png_bytes(image))
    os.replace(tmp, path)
    return path
