"""Sampling speed: genforge's image sampler next to diffusers' own pipeline running the same network.

    make bench-images      # or: python benchmarks/image_speed.py [-m shapes --n 16 --rounds 5]

The same UNet (the shipped `shapes` model by default), the same DPM-Solver++ (2M) scheduler from
the same config, 25 steps, classifier-free guidance 3, 16 pictures per call, fp32, on the same
threads. The peer is diffusers' `StableDiffusionPipeline` given the UNet and the scheduler and the
caption states as `prompt_embeds` (it has no text encoder of ours: the states are computed by
ours inside its timing, as genforge's sampler computes them inside its own), with `output_type="latent"` (no VAE: the model works on pixels; its
"latents" are the 2x2-folded pictures). One difference it cannot avoid: the pipeline does not pass
the caption mask to the UNet's cross-attention, so its padded caption positions are attended to
(one bias add less per attention; its pictures differ slightly). Variants are timed in
interleaved rounds and the median counts. Rewrites the section "Image sampling speed" of
RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

from bench_engine import provenance, write_section

HERE = Path(__file__).parent
HEADING = "## Image sampling speed (image_speed.py)"
PROMPT = "two red circles above a blue square"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-m", "--model", default="shapes")
    ap.add_argument("--n", type=int, default=16, help="pictures per call")
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", type=Path, default=HERE / "RESULTS.md", help="RESULTS.md to update")
    args = ap.parse_args()
    load = os.getloadavg()[0]

    import diffusers
    import torch
    from diffusers import StableDiffusionPipeline

    from genforge.image import model as image_model
    from genforge.image.sampling import ImageGenerator, make_scheduler

    gen = ImageGenerator.load(args.model)
    cfg, n = gen.cfg, args.n
    pipe = StableDiffusionPipeline(
        vae=None,
        text_encoder=None,
        tokenizer=None,
        unet=gen.net.unet,
        scheduler=make_scheduler(gen.noise_config, "dpm"),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    side = (cfg.size // cfg.patch) * pipe.vae_scale_factor  # the pipeline divides by it

    def ours():
        return gen.generate(PROMPT, n, args.steps, 3.0, seed=1)

    def theirs():
        captions = [PROMPT] * n + [""] * n
        with torch.inference_mode():
            ids, mask = image_model.encode_captions(gen.tokenizer, captions, cfg.max_words)
            states = gen.net.text(ids, mask)
            return pipe(
                prompt_embeds=states[:n],
                negative_prompt_embeds=states[n:],
                num_inference_steps=args.steps,
                guidance_scale=3.0,
                height=side,
                width=side,
                output_type="latent",
                generator=torch.Generator().manual_seed(1),
            ).images

    assert theirs().shape == (n, *gen.net.latent_shape)  # the same network, the same work
    variants = {
        "genforge ImageGenerator": ours,
        f"diffusers {diffusers.__version__} StableDiffusionPipeline": theirs,
    }
    for f in variants.values():
        f()  # warm-up
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(args.rounds):
        for name, f in variants.items():
            t = time.perf_counter()
            f()
            times[name].append(time.perf_counter() - t)
    rate = {k: n / statistics.median(v) for k, v in times.items()}
    ours_rate, theirs_rate = rate.values()
    lines = [
        HEADING,
        "",
        provenance(load, "make bench-images"),
        "",
        f"Model `{args.model}` ({sum(p.numel() for p in gen.net.unet.parameters()) / 1e6:.1f}M-"
        f"parameter UNet, {cfg.size}x{cfg.size} pictures), {n} pictures per call, {args.steps} "
        f"DPM-Solver++ steps, guidance 3, fp32, {torch.get_num_threads()} threads, median of "
        f"{args.rounds} interleaved rounds.",
        "",
        "| sampler | pictures/s | vs diffusers |",
        "|---|---|---|",
    ]
    for name, r in rate.items():
        lines.append(f"| {name} | {r:.2f} | {r / theirs_rate:.2f}x |")
    write_section(args.out, HEADING, lines)
    del ours_rate


if __name__ == "__main__":
    main()
