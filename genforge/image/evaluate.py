"""How well a model's pictures follow their captions, judged by the independent checkers.

- A digit model (trained on `mnist`): `prompts` pictures, the ten digits in turn ("a handwritten
  seven"), labelled by `DigitClassifier` (trained on the half of MNIST the generator never saw):
  the share labelled as the digit asked for, and the Fréchet distance in the classifier's feature
  space to as many real digits, next to the distance between two halves of the real set of the
  same size (what "as close as real" looks like).
- A shapes model: `prompts` scenes that each hold at least one colour-shape pair no training scene
  showed (`HELD_OUT`), and as many that do not, judged by `detect` + `check`: the share with the
  right colours, shapes, counts and positions, and all of them at once (GenEval's attributes).
"""

from __future__ import annotations

import random

import numpy as np

from genforge.errors import GenforgeError
from genforge.image.checkers import DigitClassifier, check, detect, frechet_distance
from genforge.image.data import digit_caption, mnist_split, random_scene
from genforge.image.sampling import ImageGenerator

BATCH = 16  # pictures sampled together
ATTRIBUTES = ("colour", "shape", "count", "position", "all")


def evaluate(
    gen: ImageGenerator,
    prompts: int = 200,
    steps: int = 25,
    guidance: float = 3.0,
    seed: int = 1,
    sampler: str = "dpm",
) -> dict:
    if prompts < 10:
        raise GenforgeError(f"--prompts must be at least 10, got {prompts}.")
    source = gen.cfg.source
    if source == "mnist":
        return evaluate_digits(gen, prompts, steps, guidance, seed, sampler)
    if source == "shapes":
        return evaluate_shapes(gen, prompts, steps, guidance, seed, sampler)
    raise GenforgeError(
        f"no checker judges a model trained on {source or 'unknown pictures'!r}; the checkers "
        "know MNIST digits and shape scenes."
    )


def _draw(gen: ImageGenerator, captions: list[str], steps, guidance, seed, sampler) -> np.ndarray:
    from tqdm import tqdm  # an evaluation takes minutes: show where it is

    out = []
    for i in tqdm(range(0, len(captions), BATCH), desc="drawing", unit="batch", leave=False):
        part = captions[i : i + BATCH]
        seeds = [seed + i + j for j in range(len(part))]
        out.append(gen.draw(part, seeds, steps, guidance, sampler))
    return np.concatenate(out)


def evaluate_digits(gen, prompts, steps, guidance, seed, sampler) -> dict:
    digits = [i % 10 for i in range(prompts)]
    pictures = _draw(gen, [digit_caption(d) for d in digits], steps, guidance, seed, sampler)[
        ..., 0
    ]
    checker = DigitClassifier.cached()
    right = checker.predict(pictures) == np.asarray(digits)
    real_a, _ = mnist_split("generator")
    real_b, _ = mnist_split("checker")
    rng = np.random.default_rng(seed)
    a = real_a[rng.choice(len(real_a), prompts, replace=False)]
    b = real_b[rng.choice(len(real_b), prompts, replace=False)]
    feats = checker.features
    return {
        "pictures": prompts,
        "digit_accuracy": float(right.mean()),
        "fd_generated_vs_real": frechet_distance(feats(pictures), feats(a)),
        "fd_real_vs_real": frechet_distance(feats(b), feats(a)),
        "checker_accuracy_on_real": checker.test_accuracy,
    }


def evaluate_shapes(gen, prompts, steps, guidance, seed, sampler) -> dict:
    out: dict = {"pictures": 2 * prompts}
    for held_out, name in ((True, "held_out"), (False, "seen")):
        rng = random.Random(seed + held_out)
        scenes = [random_scene(rng, held_out) for _ in range(prompts)]
        pictures = _draw(gen, [s.caption() for s in scenes], steps, guidance, seed, sampler)
        results = [check(scene, detect(p)) for scene, p in zip(scenes, pictures, strict=True)]
        for attribute in ATTRIBUTES:
            out[f"{name}_{attribute}"] = float(np.mean([r[attribute] for r in results]))
    return out
