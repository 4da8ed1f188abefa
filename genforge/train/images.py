"""Text-to-image diffusion training through the one loop: `ImageTrainer` is a `Loop` like
pretraining and fine-tuning, so checkpoints, --resume, Ctrl-C, the progress bar, metrics.jsonl and
loss.png are the same.

Design choices:
- Noise prediction (epsilon) under the cosine schedule, the loss weighted by min-SNR-5 (Hang et
  al. 2023: the easy, low-noise timesteps stop dominating; it converges several times faster
  than the plain MSE at no cost).
- Classifier-free guidance: 10 % of captions are replaced by the empty caption in training.
- EMA weights (decay 0.995, warmed up as (1 + s) / (10 + s): a short run should not average its
  early steps) are what a checkpoint's model files hold and what sampling uses; the raw weights
  travel beside them for resuming.
- The data position is the step (`ImageSource.batch(step, ...)`), as in pretraining: a resumed run
  draws the batches an uninterrupted one would.
- Validation loss: the same 256 captioned pictures, noise and timesteps at every evaluation (a
  fixed estimate, so the curve compares like with like); the sample grid: `RUN/samples/`.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from genforge.image import model as image_model
from genforge.image.data import ImageSource, image_source
from genforge.image.sampling import ImageGenerator, grid, save_png
from genforge.runs import latest
from genforge.train import checkpoint, distributed
from genforge.train.config import ImageTrainConfig
from genforge.train.loop import Loop

RAW = "raw_weights.safetensors"  # the non-EMA weights, for resuming


class ImageTrainer(Loop):
    cfg: ImageTrainConfig
    PLOT_UNITS = ("pictures", "loss (noise MSE, min-SNR weighted)")

    def setup(self) -> None:
        cfg = self.cfg
        self.source: ImageSource = image_source(cfg.data, cfg.size)
        # a resumed run keeps its vocabulary (the word ids its embeddings were trained on)
        previous = latest(self.run) if cfg.resume else None
        if previous is not None and (previous / image_model.TOKENIZER).is_file():
            from tokenizers import Tokenizer

            self.tokenizer = Tokenizer.from_file(str(previous / image_model.TOKENIZER))
        else:
            self.tokenizer = image_model.train_tokenizer(self.source.vocabulary_captions())
        depth = len(cfg.widths)
        self.model_cfg = image_model.ImageConfig(
            size=cfg.size,
            channels=self.source.channels,
            crop=self.source.crop,
            widths=tuple(cfg.widths),
            attention=(False, *([True] * (depth - 1))) if depth > 1 else (True,),
            text_dim=cfg.text_dim,
            text_layers=cfg.text_layers,
            pooled=cfg.pooled,
            vocab=self.tokenizer.get_vocab_size(),
            sample_prompts=self.source.sample_prompts(),
            source=self.source.name,
        )
        self.model = image_model.TextToImage(self.model_cfg)
        self.ema = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.noise = image_model.noise_scheduler(self.model_cfg)
        alphas = self.noise.alphas_cumprod
        self.snr = alphas / (1 - alphas)
        self.steps, self.lr = cfg.steps, cfg.lr
        self.warmup = cfg.warmup if cfg.warmup >= 0 else max(1, self.steps // 50)
        self.val = self._fixed_batch(256, seed=cfg.seed + 10_000)

    # -- data --
    def _tensors(self, images: np.ndarray, captions: list[str], drop: torch.Tensor | None = None):
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1)
        x = self.model.pack(x)
        if drop is not None:
            captions = ["" if d else c for c, d in zip(captions, drop.tolist(), strict=True)]
        ids, mask = image_model.encode_captions(self.tokenizer, captions, self.model_cfg.max_words)
        return x, ids, mask

    def _fixed_batch(self, rows: int, seed: int) -> tuple:
        images, captions = self.source.batch(0, rows, seed)
        x, ids, mask = self._tensors(images, captions)
        g = torch.Generator().manual_seed(seed)
        t = torch.randint(0, self.model_cfg.train_timesteps, (rows,), generator=g)
        return x, ids, mask, t, torch.randn(x.shape, generator=g)

    def micro_batches(self, step: int) -> list:
        cfg, world = self.cfg, self.world
        rows = cfg.batch_size * cfg.grad_accum * world.size
        images, captions = self.source.batch(step, rows, cfg.seed)
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        drop = torch.rand(rows, generator=g) < cfg.caption_dropout
        x, ids, mask = self._tensors(images, captions, drop)
        t = torch.randint(0, self.model_cfg.train_timesteps, (rows,), generator=g)
        noise = torch.randn(x.shape, generator=g)
        mine = slice(world.rank * cfg.batch_size * cfg.grad_accum, None)
        parts = [p[mine][: cfg.batch_size * cfg.grad_accum] for p in (x, ids, mask, t, noise)]
        return [
            tuple(p[i : i + cfg.batch_size].to(world.device) for p in parts)
            for i in range(0, cfg.batch_size * cfg.grad_accum, cfg.batch_size)
        ]

    def loss(self, batch) -> torch.Tensor:
        x, ids, mask, t, noise = batch
        noisy = self.noise.add_noise(x, noise, t)
        pred = self.net(noisy, t, ids, mask).float()
        per_image = (pred - noise).pow(2).mean(dim=(1, 2, 3))
        if self.cfg.min_snr:
            snr = self.snr.to(t.device)[t]
            per_image = per_image * snr.clamp(max=self.cfg.min_snr) / snr
        return per_image.mean()

    def batch_tokens(self, batch) -> int:
        return len(batch[0])  # pictures

    # -- the step: the loop's, then the EMA --
    def train_step(self) -> float:
        loss = super().train_step()
        decay = min(self.cfg.ema, (1 + self.step) / (10 + self.step))
        state = distributed.unwrap(self.model).state_dict()
        with torch.no_grad():
            for k, v in state.items():
                if v.dtype.is_floating_point:
                    self.ema[k].lerp_(v.detach(), 1 - decay)
                else:
                    self.ema[k].copy_(v)
        return loss

    def ema_model(self) -> image_model.TextToImage:
        out = image_model.TextToImage(self.model_cfg)
        out.load_state_dict(self.ema)
        return out.eval()

    # -- figures --
    @torch.no_grad()
    def evaluate(self) -> dict:
        x, ids, mask, t, noise = self.val
        total = 0.0
        for i in range(0, len(x), 64):
            part = (
                x[i : i + 64],
                ids[i : i + 64],
                mask[i : i + 64],
                t[i : i + 64],
                noise[i : i + 64],
            )
            with self._autocast():
                total += float(self.loss(part)) * len(part[0])
        return {"val_loss": total / len(x)}

    def samples(self) -> list[tuple[str, str]]:
        if not self.world.main:
            return []
        gen = ImageGenerator(self.ema_model(), self.tokenizer)
        prompts = self.model_cfg.sample_prompts
        pictures = np.concatenate(
            [
                gen.generate(p, 1, self.cfg.sample_steps, self.cfg.guidance, self.cfg.seed)
                for p in prompts
            ]
        )
        path = save_png(
            grid(pictures, cols=len(prompts), scale=2),
            self.run / "samples" / f"step_{self.step:07d}.png",
        )
        (path.with_suffix(".json")).write_text(json.dumps(prompts))
        return [("grid", str(path))]

    def eval_line(self, out: dict) -> str:
        return f"val loss {out['val_loss']:.4f}"

    def _progress(self, loss: float, speed: float) -> str:
        lr = self.optimizer.param_groups[0]["lr"]
        return f"loss {loss:.4f}, lr {lr:.2e}, {speed:,.1f} img/s"

    # -- checkpoints: the EMA model's folder, the raw weights beside it --
    def describe(self) -> dict:
        return asdict(self.model_cfg)

    def describe_mismatch(self) -> str:
        return "another model or caption vocabulary"

    def write_weights(self, folder: Path, model_state: dict[str, torch.Tensor]) -> None:
        from safetensors.torch import save_file

        image_model.save(self.ema_model(), self.tokenizer, folder)
        save_file({k: v.contiguous() for k, v in model_state.items()}, folder / RAW)

    def load_weights(self, folder: Path) -> None:
        from safetensors.torch import load_file

        ema, _ = image_model.load(folder)
        self.ema = {k: v.detach() for k, v in ema.state_dict().items()}  # a model of its own
        try:
            self.model.load_state_dict(load_file(folder / RAW))
        except Exception as e:
            raise checkpoint.unreadable(folder, e) from None


def train_images(cfg: ImageTrainConfig, progress: bool = True) -> dict:
    """Run (or resume) the text-to-image run `cfg` describes, under torchrun or in this process."""
    with distributed.joined(False) as world:
        trainer = ImageTrainer(cfg, world)
        result = trainer.fit(progress)
        result["skipped"] = [(str(p), why) for p, why in trainer.source.skipped]
        return result
