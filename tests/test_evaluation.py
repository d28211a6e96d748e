"""AES against a base model, with numbers worked by hand."""

import pytest

from trainers.loop.evaluation import aes


def test_aes_rewards_shorter_and_more_accurate():
    # dL = (100 - 60) / 100 = .4; dA = (.55 - .5) / .5 = .1 -> .4 + 3 * .1 = .7
    assert aes(0.55, 60, 0.5, 100) == pytest.approx(0.7)


def test_aes_penalizes_an_accuracy_drop_with_gamma():
    # dL = .4; dA = (.45 - .5) / .5 = -.1 -> .4 - 5 * .1 = -.1
    assert aes(0.45, 60, 0.5, 100) == pytest.approx(-0.1)


def test_aes_custom_coefficients_and_bad_base():
    assert aes(0.5, 150, 0.5, 100, alpha=2.0) == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="base_length"):
        aes(0.5, 10, 0.5, 0)
