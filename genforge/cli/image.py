"""`genforge image train | generate | eval`: text-to-image diffusion on your own pictures.

`train` has one flag per `ImageTrainConfig` field, its help text the field's comment.
"""

from __future__ import annotations

import argparse
from dataclasses import fields

from genforge.cli.train import OMP_WAIT_POLICY, add_config_args
from genforge.errors import GenforgeError

EXTRA_HINT = "install the image extra: pip install 'genforge[image]'"


def add_parser(sub) -> None:
    p = sub.add_parser(
        "image",
        help="train and sample text-to-image diffusion models",
        description="Text-to-image diffusion: train a model on MNIST digits, shape scenes or a "
        "folder of your own captioned pictures, draw pictures from a caption, and measure "
        "what a model draws with independent checkers.",
    )
    isub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    t = isub.add_parser(
        "train",
        help="train a text-to-image diffusion model",
        description="Train a text-conditioned diffusion model (diffusers' UNet with "
        "cross-attention over a small text encoder trained with it) on --data: mnist (the "
        "10,000 digits of the mnist package), shapes (scenes drawn on the fly), or a folder of "
        "pictures captioned by a .txt file beside each or by their folder's name. Checkpoints "
        "(EMA weights), metrics.jsonl, loss.png and sample grids (samples/) go to --out; "
        "--resume continues a stopped run exactly.",
    )
    from genforge.train.config import ImageTrainConfig  # dataclasses only: --help stays fast

    add_config_args(t, ImageTrainConfig, required={"data": "SOURCE"}, out_default="runs/image-NAME")
    t.set_defaults(func=run_train, omp_wait_policy=OMP_WAIT_POLICY)

    g = isub.add_parser(
        "generate",
        help="draw pictures from a caption",
        description="Draw -n pictures of PROMPT with classifier-free guidance and write them as "
        "one PNG grid. The same --seed gives the same pictures; picture i uses seed + i.",
    )
    g.add_argument("prompt", metavar="PROMPT", help='what to draw, e.g. "two red circles"')
    add_model_arg(g)
    g.add_argument("-n", type=int, default=4, metavar="N", help="pictures (default: 4, at most 16)")
    add_sampling_args(g)
    g.add_argument(
        "-o", "--out", default="out.png", metavar="FILE", help="the PNG to write (default: out.png)"
    )
    g.add_argument(
        "--scale",
        type=int,
        default=4,
        metavar="K",
        help="enlarge each picture K times, nearest pixel (default: 4; 1 = the model's size)",
    )
    g.set_defaults(func=run_generate)

    e = isub.add_parser(
        "eval",
        help="measure what a model draws with independent checkers",
        description="Draw pictures for prompts the checkers can judge and report how many are "
        "right: a digit model (MNIST) is judged by a digit classifier trained on the real "
        "digits the model never saw (accuracy, and the Fréchet distance to real digits); a "
        "shapes model by a colour-and-shape detector on prompts whose colour-shape pairs were "
        "held out of training (colour, shape, count, position, all correct).",
    )
    add_model_arg(e)
    e.add_argument(
        "--prompts", type=int, default=200, metavar="N", help="pictures to judge (default: 200)"
    )
    add_sampling_args(e)
    e.add_argument("--json", action="store_true", help="print the figures as JSON")
    e.set_defaults(func=run_eval)


def add_model_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-m",
        "--model",
        default=None,
        metavar="MODEL",
        help="shapes (the default), digits, a model folder, or a `genforge image train` run",
    )


def add_sampling_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--steps", type=int, default=25, metavar="N", help="sampler steps (default: 25)")
    p.add_argument(
        "--guidance",
        type=float,
        default=3.0,
        metavar="W",
        help="classifier-free guidance scale; 1 = none (default: 3)",
    )
    p.add_argument("--seed", type=int, default=1, metavar="N", help="noise seed (default: 1)")
    p.add_argument(
        "--sampler",
        choices=("dpm", "ddim"),
        default="dpm",
        help="DPM-Solver++ (2M) or DDIM, diffusers' schedulers (default: dpm)",
    )


def _require_extra() -> None:
    try:
        import diffusers  # noqa: F401
        import PIL  # noqa: F401
    except ImportError:
        raise GenforgeError(f"genforge image needs diffusers and pillow; {EXTRA_HINT}.") from None


def run_train(args: argparse.Namespace) -> int:
    from pathlib import Path

    from genforge.train.config import ImageTrainConfig

    values = {f.name: getattr(args, f.name) for f in fields(ImageTrainConfig)}
    values["sample_prompts"] = tuple(values["sample_prompts"] or ())
    if not values["out"]:
        name = args.data if args.data in ("mnist", "shapes") else Path(args.data).resolve().name
        values["out"] = str(Path("runs") / f"image-{name}")
    cfg = ImageTrainConfig(**values)
    cfg.check()
    _require_extra()
    from genforge.train.images import train_images

    r = train_images(cfg)
    if r["skipped"]:
        print(f"skipped {len(r['skipped'])} files that are not readable pictures:")
        for path, why in r["skipped"][:10]:
            print(f"  {path}: {why}")
    if r.get("interrupted"):
        print(
            f"stopped at step {r['step']} of {r['steps']}; continue with --resume --out {r['run']}"
        )
        return 130
    if "val_loss" in r:
        print(f"step {r['step']}: validation loss {r['val_loss']:.4f}")
    print(f'run: {r["run"]} (draw with `genforge image generate "..." -m {r["run"]}`)')
    return 0


def run_generate(args: argparse.Namespace) -> int:
    import sys

    _require_extra()
    if args.scale < 1:
        raise GenforgeError(f"--scale must be at least 1, got {args.scale}.")
    from genforge.image.sampling import (
        ImageGenerator,
        check_png_path,
        check_request,
        grid,
        save_png,
    )

    check_request(args.prompt, args.n, args.steps, args.guidance, args.sampler)
    check_png_path(args.out)  # before the model loads: nothing drawn is thrown away
    gen = ImageGenerator.load(args.model)
    if unknown := gen.unknown_words(args.prompt):
        print(
            f"note: the model never saw {', '.join(repr(w) for w in unknown)} in training; "
            "it draws as if those words were not there.",
            file=sys.stderr,
        )
    pictures = gen.generate(args.prompt, args.n, args.steps, args.guidance, args.seed, args.sampler)
    path = save_png(grid(pictures, scale=args.scale), args.out)
    print(f"wrote {path} ({args.n} pictures, {pictures.shape[2]}x{pictures.shape[1]} each)")
    return 0


def run_eval(args: argparse.Namespace) -> int:
    import json

    _require_extra()
    from genforge.image.evaluate import evaluate
    from genforge.image.sampling import ImageGenerator

    gen = ImageGenerator.load(args.model)
    out = evaluate(gen, args.prompts, args.steps, args.guidance, args.seed, args.sampler)
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    for key, value in out.items():
        print(f"{key:<28} {value:.4g}" if isinstance(value, float) else f"{key:<28} {value}")
    return 0
