"""Independent checkers of generated pictures: not the generator's own judgement, and not by eye.

- `detect` / `check`: a shape-scene detector. Pixels are given the nearest palette colour (or the
  white background), each colour's connected regions are objects, and an object's shape follows
  from how much of its bounding box it fills (a square all of it, a circle about pi/4, a triangle
  about half). `check` compares what it found with the scene a caption asked for: colours, shapes,
  counts, and where the groups stand (GenEval's attributes).
- `DigitClassifier`: a small convolutional network trained on the MNIST digits the generator never
  sees (`mnist_split("checker")`), which labels generated digits, and whose penultimate features
  give a Fréchet distance between sets of digits.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from genforge.image.data import BACKGROUND, COLOURS, Scene

# -- shapes ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Detected:
    colour: str
    shape: str
    x: float  # centroid, pixels
    y: float
    area: int


_PALETTE = np.array([BACKGROUND, *COLOURS.values()], dtype=np.float32)
_NAMES = ["background", *COLOURS]


def detect(image: np.ndarray, min_area: int | None = None) -> list[Detected]:
    """The objects in an RGB picture (uint8 (H, W, 3)): one per connected region of a palette
    colour of at least `min_area` pixels (default: a quarter of an object's, 1/64 of the picture
    for 32x32 scenes, so that specks of a noisy sample are not objects)."""
    from scipy import ndimage

    h, w = image.shape[:2]
    min_area = max(4, (h * w) // 256) if min_area is None else min_area
    pixels = image.reshape(-1, 1, 3).astype(np.float32)
    nearest = np.argmin(((pixels - _PALETTE[None]) ** 2).sum(-1), axis=1).reshape(h, w)
    found = []
    for index, colour in enumerate(_NAMES[1:], start=1):
        regions, n = ndimage.label(nearest == index)
        for label, box in enumerate(ndimage.find_objects(regions), start=1):
            mask = regions[box] == label
            area = int(mask.sum())
            if area < min_area:
                continue
            fill = area / mask.size
            ratio = mask.shape[0] / mask.shape[1]
            if fill >= 0.9 and 0.75 <= ratio <= 1.33:
                shape = "square"
            elif fill >= 0.68:
                shape = "circle"
            else:
                shape = "triangle"
            ys, xs = np.nonzero(mask)
            found.append(
                Detected(colour, shape, box[1].start + xs.mean(), box[0].start + ys.mean(), area)
            )
    return found


def check(scene: Scene, found: list[Detected]) -> dict[str, bool]:
    """What a picture got right of `scene`: `colour` (the colours of its objects, counted),
    `shape` (their shapes, counted), `count` (how many objects), `position` (each object of the
    first group on the named side of every object of the second; true for one group), and `all`
    (each group's colour, shape and count, nothing else, and the position)."""
    want = Counter()
    for g in scene.groups:
        want[(g.colour, g.shape)] += g.count
    got = Counter((d.colour, d.shape) for d in found)

    verdicts = {
        "colour": _sum(want, 0) == _sum(got, 0),
        "shape": _sum(want, 1) == _sum(got, 1),
        "count": sum(want.values()) == sum(got.values()),
        "position": _position(scene, found),
    }
    verdicts["all"] = want == got and verdicts["position"]
    return verdicts


def _sum(counts: Counter, i: int) -> Counter:
    out: Counter = Counter()
    for key, n in counts.items():
        out[key[i]] += n
    return out


def _position(scene: Scene, found: list[Detected]) -> bool:
    if scene.relation is None:
        return True
    a, b = scene.groups
    first = [d for d in found if (d.colour, d.shape) == (a.colour, a.shape)]
    second = [d for d in found if (d.colour, d.shape) == (b.colour, b.shape)]
    if not first or not second:
        return False
    side = {
        "above": lambda p, q: p.y < q.y,
        "below": lambda p, q: p.y > q.y,
        "left of": lambda p, q: p.x < q.x,
        "right of": lambda p, q: p.x > q.x,
    }[scene.relation]
    return all(side(p, q) for p in first for q in second)


# -- digits ----------------------------------------------------------------------------------------

DIGIT_CHECKER_VERSION = 1  # raise when the network or its training changes: cached weights go stale


def _digit_net():
    from torch import nn

    def block(cin: int, cout: int) -> list:
        return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]

    return nn.Sequential(
        *block(1, 32),
        *block(32, 32),
        nn.MaxPool2d(2),  # 14x14
        *block(32, 64),
        *block(64, 64),
        nn.MaxPool2d(2),  # 7x7
        nn.Flatten(),
        nn.Dropout(0.3),
        nn.Linear(64 * 7 * 7, 128),
        nn.ReLU(),  # the features the Fréchet distance compares
        nn.Linear(128, 10),
    )


@dataclass
class DigitClassifier:
    """A CNN that labels 28x28 digits (uint8, white on black as MNIST), trained by `fit` on the
    checker half of MNIST; `test_accuracy` is on the generator half, which it did not train on."""

    net: object
    test_accuracy: float

    @classmethod
    def fit(cls, epochs: int = 12, seed: int = 0) -> DigitClassifier:
        """Train on the checker half of MNIST; `test_accuracy` is on the generator half, real
        digits it never saw (the ones the generator learns from)."""
        import torch

        from genforge.image.data import mnist_split

        images, labels = mnist_split("checker")
        x = torch.from_numpy(images).float().div(255).unsqueeze(1)
        y = torch.from_numpy(labels)
        g = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        net = _digit_net()
        opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-4)
        steps = epochs * ((len(y) + 63) // 64)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
        net.train()
        for _ in range(epochs):
            order = torch.randperm(len(y), generator=g)
            for i in range(0, len(order), 64):
                batch = order[i : i + 64]
                loss = torch.nn.functional.cross_entropy(net(_shifted(x[batch], g)), y[batch])
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
        out = cls(net.eval(), 0.0)
        test_images, test_labels = mnist_split("generator")
        out.test_accuracy = float((out.predict(test_images) == test_labels).mean())
        return out

    @classmethod
    def cached(cls) -> DigitClassifier:
        """The classifier trained by `fit()` once and kept in the genforge cache (a few MB)."""
        import torch

        from genforge import hub

        path = hub.home() / "checkers" / f"digits-v{DIGIT_CHECKER_VERSION}.pt"
        if path.is_file():
            saved = torch.load(path, weights_only=True)
            net = _digit_net()
            net.load_state_dict(saved["state"])
            return cls(net.eval(), float(saved["test_accuracy"]))
        out = cls.fit()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        torch.save({"state": out.net.state_dict(), "test_accuracy": out.test_accuracy}, tmp)
        tmp.replace(path)
        return out

    def _run(self, images: np.ndarray, features: bool):
        import torch

        x = torch.from_numpy(np.asarray(images, dtype=np.uint8)).float().div(255).unsqueeze(1)
        net = self.net[:-1] if features else self.net
        with torch.inference_mode():
            return torch.cat([net(x[i : i + 500]) for i in range(0, len(x), 500)]).numpy()

    def predict(self, images: np.ndarray) -> np.ndarray:
        """The label of each digit (N, 28, 28)."""
        return self._run(images, features=False).argmax(1)

    def features(self, images: np.ndarray) -> np.ndarray:
        """(N, 128) penultimate activations, for `frechet_distance`."""
        return self._run(images, features=True)


def _shifted(x, g, most: int = 2):
    """Each digit moved by up to `most` pixels each way (its own shift): 5,000 digits are few for
    98 %, and a generated digit need not sit where MNIST centres them."""
    import torch

    shifts = torch.randint(-most, most + 1, (len(x), 2), generator=g)
    out = torch.empty_like(x)
    for dy, dx in torch.unique(shifts, dim=0).tolist():
        rows = ((shifts[:, 0] == dy) & (shifts[:, 1] == dx)).nonzero().flatten()
        out[rows] = torch.roll(x[rows], shifts=(dy, dx), dims=(2, 3))
    return out


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """The Fréchet distance between Gaussians fitted to two sets of feature vectors (FID's
    formula): |mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2))."""
    import warnings

    from scipy import linalg

    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    # Features that never fire (a ReLU unit dead for every digit) make the covariances singular:
    # as FID's reference code does, a tiny ridge keeps the square root defined.
    ridge = np.eye(len(s_a)) * 1e-6
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        root = linalg.sqrtm((s_a + ridge) @ (s_b + ridge)).real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a + s_b - 2 * root))
