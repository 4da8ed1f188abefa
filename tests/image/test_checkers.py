"""The digit classifier that will judge generated digits: accurate on real digits it did not train
on, and a Fréchet distance in its features that tells real digits from noise."""

from __future__ import annotations

import numpy as np
import pytest
from components import require_mnist, require_module

from genforge.image.checkers import DigitClassifier, frechet_distance

require_module("scipy", "image")


def test_frechet_distance_of_gaussians():
    rng = np.random.default_rng(0)
    a = rng.normal(0, 1, (4000, 3))
    b = rng.normal(0, 1, (4000, 3))
    c = rng.normal([2, 0, 0], [1, 1, 1], (4000, 3))
    assert frechet_distance(a, b) < 0.05
    # |mu_a - mu_c|^2 = 4, same covariances: the distance is 4
    assert frechet_distance(a, c) == pytest.approx(4, abs=0.3)
    wide = rng.normal(0, 2, (4000, 3))  # sigma 2: tr(1 + 4 - 2 * 2) * 3 dims = 3
    assert frechet_distance(a, wide) == pytest.approx(3, abs=0.3)


@pytest.mark.slow
def test_the_digit_classifier_reads_real_digits():
    from genforge.image.data import mnist_split

    require_mnist()
    checker = DigitClassifier.cached()  # trained on the checker half (a minute), then cached
    images, labels = mnist_split("generator")  # digits it never trained on
    accuracy = (checker.predict(images) == labels).mean()
    assert accuracy >= 0.98 and accuracy == pytest.approx(checker.test_accuracy)
    # two halves of the real digits (every other one: the split is ordered by class) are close;
    # noise, or digits of one class only, are far
    real = frechet_distance(checker.features(images[::2]), checker.features(images[1::2]))
    noise = np.random.default_rng(0).integers(0, 256, (1000, 28, 28), dtype=np.uint8)
    assert frechet_distance(checker.features(images[::5]), checker.features(noise)) > 50 * real
    sevens = images[labels == 7]
    assert frechet_distance(checker.features(images[::5]), checker.features(sevens)) > 10 * real
