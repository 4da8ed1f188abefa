"""Text-to-image recipes: train, judge with the independent checkers, and ship.

    python recipes/images.py shapes     # the default image model: coloured shapes in relations
    python recipes/images.py digits     # MNIST digits from captions

(or `make recipe-images IMAGE_RECIPE=...`). Each trains with `genforge image train` into
runs/image-NAME (an interrupted recipe resumes its run), judges the result with
`genforge.image.evaluate` (digits: a classifier trained on the real digits the generator never saw;
shapes: the colour-and-shape detector on prompts whose colour-shape pairs were held out of
training), writes its section of recipes/RESULTS.md with the sample grid and the loss curve, and
with --ship writes the model in fp16 to genforge/image/models/NAME, the model `-m NAME` loads.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from run import cpu_name, write_section  # noqa: E402

RECIPES = {
    "shapes": {"data": "shapes", "flags": ["--steps", "2000"]},
    "digits": {"data": "mnist", "flags": ["--steps", "1500"]},
}
EVAL_PROMPTS = 500


def train(name: str, root: Path) -> Path:
    recipe, out = RECIPES[name], root / f"image-{name}"
    cmd = [sys.executable, "-m", "genforge", "image", "train", "--data", recipe["data"]]
    cmd += [*recipe["flags"], "--out", str(out)]
    from genforge.runs import latest

    if latest(out) is not None:
        cmd.append("--resume")
    subprocess.run(cmd, check=True)
    return out


def cpu_flags() -> str:
    try:
        flags = Path("/proc/cpuinfo").read_text().split("flags", 1)[1].split("\n", 1)[0].split()
    except (OSError, IndexError):
        return "unknown"
    wanted = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8")
    return " ".join(f for f in wanted if f in flags) or "none of avx2/avx512/amx"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("recipe", choices=sorted(RECIPES))
    ap.add_argument("--root", type=Path, default=Path("runs"), help="where the runs go")
    ap.add_argument("--results", type=Path, default=HERE / "RESULTS.md")
    ap.add_argument("--ship", action="store_true", help="write the model into the package")
    ap.add_argument("--prompts", type=int, default=EVAL_PROMPTS, help="prompts to judge")
    args = ap.parse_args()

    import torch

    from genforge.image import model as image_model
    from genforge.image.evaluate import evaluate
    from genforge.image.sampling import ImageGenerator, grid, save_png, shipped_folder
    from genforge.runs import latest

    run = train(args.recipe, args.root)
    checkpoint = latest(run)
    state = torch.load(checkpoint / "train_state.pt", weights_only=True)
    gen = ImageGenerator.load(run)
    t = time.perf_counter()
    figures = evaluate(gen, args.prompts)
    eval_s = time.perf_counter() - t
    name = f"images-{args.recipe}"
    shutil.copyfile(run / "loss.png", HERE / f"{name}-loss.png")
    prompts = gen.cfg.sample_prompts
    pictures = [gen.generate(p, 4, seed=1) for p in prompts]
    import numpy as np

    save_png(grid(np.concatenate(pictures), cols=4, scale=2), HERE / f"{name}-samples.png")
    if args.ship:
        folder = shipped_folder(args.recipe)
        shutil.rmtree(folder, ignore_errors=True)
        image_model.save(gen.net, gen.tokenizer, folder, dtype=torch.float16)
    n_params = sum(p.numel() for p in gen.net.parameters())
    lines = [
        f"## {name}",
        "",
        f"`python recipes/images.py {args.recipe}`: `genforge image train --data "
        f"{RECIPES[args.recipe]['data']} {' '.join(RECIPES[args.recipe]['flags'])}` "
        f"({n_params / 1e6:.1f}M parameters: UNet and text encoder), then "
        f"`genforge image eval` on {args.prompts} prompts (DPM-Solver++, 25 steps, guidance 3).",
        "",
        f"- CPU: {cpu_name()} ({torch.get_num_threads()} threads; {cpu_flags()})",
        f"- training: {state['step']} steps of {state['train']['batch_size']} pictures in "
        f"{state['elapsed_s'] / 60:.1f} min of step time "
        f"({state['step'] * state['train']['batch_size'] / state['elapsed_s']:.1f} pictures/s)",
        f"- evaluation: {eval_s:.0f} s",
    ]
    for key, value in figures.items():
        shown = f"{value:.3f}" if isinstance(value, float) else str(value)
        lines.append(f"- {key.replace('_', ' ')}: {shown}")
    lines += [
        "",
        f"Samples (4 seeds per prompt; prompts: {'; '.join(prompts)}):",
        "",
        f"![samples]({name}-samples.png) ![loss]({name}-loss.png)",
    ]
    write_section(name, lines, args.results)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
