"""RandAugment's policy (what is drawn) and level -> argument mapping, against timm.

timm reference: `timm/data/auto_augment.py` (huggingface/pytorch-image-models),
``rand_augment_transform('rand-m9-mstd0.5-inc1')``:

- ``RandAugment.__call__``: ``np.random.choice(ops, num_layers=2, replace=True)`` over
  the 15 ``_RAND_INCREASING_TRANSFORMS``;
- ``AugmentOp.__call__``: skip with probability ``1 - prob`` (prob 0.5); magnitude
  ``random.gauss(9, 0.5)`` clipped to ``[0, 10]`` (``_LEVEL_DENOM``);
- the ``*_level_to_arg`` functions, copied by hand into `TIMM_ARGS` below.

The policy is observed by recording the arguments the sampler passes to `apply_op`
(eagerly, so `tf.cond`/`tf.switch_case` call only the branch taken) and the mapping
by recording what each op receives at fixed levels.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import tensorflow as tf

from dmformer_jax.data import randaugment as R

N_IMAGES = 2500


def _record_draws(seeds) -> list[list[tuple[int, float, float]]]:
    """Per seed: the list of (op index, magnitude, sign) that `rand_augment` (default
    arguments: timm's m9, mstd0.5, 2 ops, p 0.5) actually applied."""
    calls = []

    def record(image, index, magnitude, sign):
        calls.append((int(index), float(magnitude), float(sign)))
        return image

    original = R.apply_op
    R.apply_op = record
    try:
        image = tf.zeros([4, 4, 3], tf.float32)
        per_image = []
        for i in seeds:
            start = len(calls)
            R.rand_augment(image, tf.constant([11, i], tf.int64))
            per_image.append(calls[start:])
    finally:
        R.apply_op = original
    return per_image


@pytest.fixture(scope="module")
def all_draws():
    return _record_draws(range(N_IMAGES))


@pytest.fixture
def draws(all_draws):
    return all_draws


def _check_pure_function_of_seed(all_draws):
    """Redraws a few seeds inside the test itself (not in a fixture): the draws are a
    pure function of the seed, and a mutation tool (mutmut records calls made while a
    test runs, not during fixture setup) sees that this test exercises `rand_augment`."""
    assert _record_draws([0, 1, 7]) == [all_draws[0], all_draws[1], all_draws[7]]


def _chi2(counts, probs):
    n = np.sum(counts)
    expected = n * np.asarray(probs)
    return float(np.sum((np.asarray(counts) - expected) ** 2 / expected))


def test_ops_per_image_is_binomial_2_half(draws):
    _check_pure_function_of_seed(draws)
    counts = np.bincount([len(d) for d in draws], minlength=3)
    assert len(counts) == 3  # never more than num_ops = 2
    # chi-square, 2 dof: 13.8 is the 0.1% critical value
    assert _chi2(counts, [0.25, 0.5, 0.25]) < 13.8, counts


def test_each_op_is_applied_with_probability_half_and_chosen_uniformly(draws):
    _check_pure_function_of_seed(draws)
    applied = [op for d in draws for op in d]
    rate = len(applied) / (2 * N_IMAGES)
    sigma = math.sqrt(0.25 / (2 * N_IMAGES))
    assert abs(rate - 0.5) < 4 * sigma, rate
    counts = np.bincount([idx for idx, _, _ in applied], minlength=len(R.OP_NAMES))
    assert len(counts) == 15
    assert _chi2(counts, [1 / 15] * 15) < 36.1, counts  # 14 dof, 0.1% critical value
    signs = np.array([s for _, _, s in applied])
    assert set(np.unique(signs)) == {-1.0, 1.0}
    assert abs(np.mean(signs == -1.0) - 0.5) < 4 * math.sqrt(0.25 / len(signs))


def _clipped_normal_moments(mu, sigma, lo, hi):
    """Mean, std and P(X >= hi) of clip(N(mu, sigma), lo, hi), by quadrature (float64)."""
    x = np.linspace(mu - 12 * sigma, mu + 12 * sigma, 200_001)
    pdf = np.exp(-0.5 * ((x - mu) / sigma) ** 2) / (sigma * math.sqrt(2 * math.pi))
    y = np.clip(x, lo, hi)
    dx = x[1] - x[0]
    mean = np.sum(y * pdf) * dx
    var = np.sum((y - mean) ** 2 * pdf) * dx
    return mean, math.sqrt(var), np.sum(pdf[x >= hi]) * dx


def test_magnitude_is_normal_9_std_half_clipped_to_10(draws):
    _check_pure_function_of_seed(draws)
    m = np.array([mag for d in draws for _, mag, _ in d])
    assert m.min() >= 0.0 and m.max() <= 10.0
    mean, std, p_clip = _clipped_normal_moments(9.0, 0.5, 0.0, 10.0)  # 8.996, 0.490, 0.0228
    n = len(m)
    assert abs(m.mean() - mean) < 4 * std / math.sqrt(n), m.mean()
    assert abs(m.std() - std) < 4 * std / math.sqrt(2 * n), m.std()
    assert abs(np.mean(m == 10.0) - p_clip) < 4 * math.sqrt(p_clip * (1 - p_clip) / n)
    # timm draws the magnitude and the sign independently (random.gauss, random.random)
    sign = np.array([sg for d in draws for _, _, sg in d])
    assert abs(np.corrcoef(m, sign)[0, 1]) < 4 / math.sqrt(n)
    assert abs(np.corrcoef(np.abs(m - 9.0), sign)[0, 1]) < 4 / math.sqrt(n)  # spread too, not only sign


def test_magnitude_std_zero_gives_the_fixed_magnitude():
    got = []
    original = R.apply_op
    R.apply_op = lambda image, index, magnitude, sign: got.append(float(magnitude)) or image
    try:
        for magnitude in (7.0, 0.0):
            got.clear()
            for i in range(40):
                R.rand_augment(tf.zeros([4, 4, 3]), tf.constant([5, i], tf.int64), magnitude=magnitude,
                               magnitude_std=0.0)
            assert got and set(got) == {magnitude}
    finally:
        R.apply_op = original


# ------------------------------------------------------------------ level -> argument

H, W = 24, 40  # not square: TranslateX uses the width, TranslateY the height
LEVELS = (0.0, 1.0, 3.3, 5.0, 7.5, 9.0, 10.0)

# timm's level -> argument at each of LEVELS, computed by hand from its *_level_to_arg:
#   Rotate:   (m/10)*30 (negated at random)          Shear: (m/10)*0.3 (negated)
#   TranslateRel: (m/10)*0.45 * side (negated)       Enhance increasing: 1 +- (m/10)*0.9
#   PosterizeIncreasing: 4 - int((m/10)*4)           SolarizeIncreasing: 256 - int((m/10)*256)
#   SolarizeAdd: int((m/10)*110)
TIMM_ARGS = {
    "Rotate": (0.0, 3.0, 9.9, 15.0, 22.5, 27.0, 30.0),
    "ShearX": (0.0, 0.03, 0.099, 0.15, 0.225, 0.27, 0.3),
    "ShearY": (0.0, 0.03, 0.099, 0.15, 0.225, 0.27, 0.3),
    "TranslateXRel": (0.0, 1.8, 5.94, 9.0, 13.5, 16.2, 18.0),  # 0.45 * m/10 * 40
    "TranslateYRel": (0.0, 1.08, 3.564, 5.4, 8.1, 9.72, 10.8),  # 0.45 * m/10 * 24
    "ColorIncreasing": (0.0, 0.09, 0.297, 0.45, 0.675, 0.81, 0.9),  # deviation from 1
    "ContrastIncreasing": (0.0, 0.09, 0.297, 0.45, 0.675, 0.81, 0.9),
    "BrightnessIncreasing": (0.0, 0.09, 0.297, 0.45, 0.675, 0.81, 0.9),
    "SharpnessIncreasing": (0.0, 0.09, 0.297, 0.45, 0.675, 0.81, 0.9),
    "PosterizeIncreasing": (4, 4, 3, 2, 1, 1, 0),
    "SolarizeIncreasing": (256, 231, 172, 128, 64, 26, 0),
    "SolarizeAdd": (0, 11, 36, 55, 82, 99, 110),
}
SIGNED = {"Rotate", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel"}
ENHANCE = {"ColorIncreasing", "ContrastIncreasing", "BrightnessIncreasing", "SharpnessIncreasing"}
# The function each op hands its argument to (module attribute of randaugment).
TARGET = {
    "Rotate": "rotate", "ShearX": "shear_x", "ShearY": "shear_y",
    "TranslateXRel": "translate_x", "TranslateYRel": "translate_y",
    "ColorIncreasing": "adjust_saturation", "ContrastIncreasing": "adjust_contrast",
    "BrightnessIncreasing": "adjust_brightness", "SharpnessIncreasing": "sharpness",
    "PosterizeIncreasing": "posterize", "SolarizeIncreasing": "solarize", "SolarizeAdd": "solarize_add",
}


@pytest.fixture
def recorded(monkeypatch):
    calls = []
    for fn_name in set(TARGET.values()):
        monkeypatch.setattr(R, fn_name, lambda image, arg, _n=fn_name: calls.append((_n, float(arg))) or image)
    return calls


@pytest.mark.parametrize("name", sorted(TIMM_ARGS))
def test_level_to_argument_matches_timm(name, recorded):
    index = R.OP_NAMES.index(name)
    image = tf.zeros([H, W, 3], tf.float32)
    for sign in (1.0, -1.0):
        for level, expected in zip(LEVELS, TIMM_ARGS[name]):
            recorded.clear()
            R.apply_op(image, tf.constant(index), tf.constant(level, tf.float32), tf.constant(sign))
            assert [n for n, _ in recorded] == [TARGET[name]], (name, recorded)
            got = recorded[0][1]
            if name in SIGNED:
                want = sign * expected
            elif name in ENHANCE:
                want = max(0.1, 1.0 + sign * expected)
            else:
                want = expected  # integer arguments: exact
                assert got == want, (name, level, got, want)
            assert got == pytest.approx(want, abs=1e-5), (name, level, sign, got, want)


def test_the_op_set_is_timms_increasing_set():
    # timm `_RAND_INCREASING_TRANSFORMS`, in timm's order.
    assert R.OP_NAMES == (
        "AutoContrast", "Equalize", "Invert", "Rotate", "PosterizeIncreasing", "SolarizeIncreasing",
        "SolarizeAdd", "ColorIncreasing", "ContrastIncreasing", "BrightnessIncreasing",
        "SharpnessIncreasing", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel",
    )
