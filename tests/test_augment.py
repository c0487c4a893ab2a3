"""Augmentations: eager == tf.data for the same seed, and properties / PIL references."""

import io
import math

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageEnhance, ImageOps

from dmformer_jax.data import augment as A
from dmformer_jax.data import randaugment as R

FILL = (124, 116, 104)


def _image(h=50, w=70, seed=0) -> np.ndarray:
    """A structured, noisy uint8 RGB image (every op changes it visibly)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([(xx * 3) % 256, (yy * 5) % 256, ((xx + yy) * 2) % 256], -1)
    return np.clip(img + rng.integers(-20, 21, img.shape), 0, 255).astype(np.uint8)


def _seed(i: int) -> tf.Tensor:
    return tf.constant([7, i], tf.int64)


def _eager(fn, *args):
    return tf.nest.map_structure(lambda t: t.numpy(), fn(*(tf.convert_to_tensor(a) for a in args)))


IMG = _image()
IMG_F = IMG.astype(np.float32)
LABELS = np.array([0, 3, 1, 2, 3, 0], np.int32)

# (name, fn(image, seed)) for every random per-image op: same seed -> same output, eager or in tf.data.
RANDOM_OPS = [
    ("random_resized_crop", lambda x, s: A.random_resized_crop(x, s, 32)),
    ("random_flip", lambda x, s: A.random_flip(x, s)),
    ("color_jitter", lambda x, s: A.color_jitter(tf.cast(x, tf.float32), s, 0.4)),
    ("rand_augment", lambda x, s: R.rand_augment(tf.cast(x, tf.float32), s, 2, 9.0, 0.5)),
    ("random_erasing", lambda x, s: A.random_erasing(A.normalize(x, (0.5,) * 3, (0.25,) * 3), s, 1.0)),
    ("eval_resize_crop", lambda x, s: A.eval_resize_crop(x, 32, 0.9)),
    ("decode_and_random_crop_jpeg", lambda x, s: A.decode_and_random_crop(tf.io.encode_jpeg(x), s, 32)),
    ("decode_and_random_crop_png", lambda x, s: A.decode_and_random_crop(tf.io.encode_png(x), s, 32)),
    ("normalize", lambda x, s: A.normalize(x, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))),
]
DETERMINISTIC_OPS = ("eval_resize_crop", "normalize")


@pytest.mark.parametrize("name,fn", RANDOM_OPS, ids=[n for n, _ in RANDOM_OPS])
def test_eager_equals_tf_data(name, fn):
    seeds = tf.stack([_seed(i) for i in range(3)])
    image = tf.constant(IMG)
    # one tf.data pipeline (one trace) over three seeds
    graph = list(tf.data.Dataset.from_tensor_slices(seeds).map(lambda s: fn(image, s)).as_numpy_iterator())
    for i in range(3):
        np.testing.assert_array_equal(_eager(fn, IMG, _seed(i)), graph[i], err_msg=name)
    if name not in DETERMINISTIC_OPS:  # a random op must depend on its seed
        outs = [_eager(fn, IMG, _seed(i)) for i in range(2, 6)]
        assert any(not np.array_equal(outs[0], o) for o in outs[1:]), name


def test_mix_batch_eager_equals_tf_data():
    images = np.stack([_image(16, 16, seed=i) for i in range(6)]).astype(np.float32)
    seeds = tf.stack([_seed(i) for i in range(4)])
    x, y = tf.constant(images), tf.constant(LABELS)
    graph = list(tf.data.Dataset.from_tensor_slices(seeds).map(
        lambda s: A.mix_batch(x, y, s, num_classes=4)).as_numpy_iterator())
    for i in range(4):
        e = _eager(lambda s: A.mix_batch(x, y, s, num_classes=4), _seed(i))
        np.testing.assert_array_equal(e[0], graph[i][0])
        np.testing.assert_array_equal(e[1], graph[i][1])


# ----------------------------------------------------------------- crop and resize


def test_crop_window_within_scale_and_ratio():
    scale, ratio = (0.08, 1.0), (3 / 4, 4 / 3)
    h, w = 120, 160
    areas = []
    for i in range(60):
        top, left, ch, cw = A.sample_crop_window(tf.constant([h, w]), _seed(i), scale, ratio).numpy()
        assert 0 <= top and top + ch <= h and 0 <= left and left + cw <= w
        frac = ch * cw / (h * w)
        areas.append(frac)
        if (ch, cw) != (h, w):  # not TF's whole-image fallback
            assert scale[0] - 0.01 <= frac <= scale[1]
            # integer rounding of the sides moves the ratio by at most ~1 pixel
            assert ratio[0] - 1.5 / ch <= cw / ch <= ratio[1] + 1.5 / ch
    assert min(areas) < 0.3 and max(areas) > 0.7  # spans the range


def test_crop_scale_bounds_light():
    for i in range(30):
        _, _, ch, cw = A.sample_crop_window(tf.constant([64, 64]), _seed(i), (0.6, 1.0), (3 / 4, 4 / 3)).numpy()
        assert ch * cw / 64**2 >= 0.59


def test_random_resized_crop_matches_pil_on_its_window():
    window = A.sample_crop_window(tf.constant(IMG.shape), _seed(3)).numpy()
    top, left, ch, cw = window
    out = A.random_resized_crop(tf.constant(IMG), _seed(3), 32).numpy()
    ref = np.asarray(Image.fromarray(IMG[top : top + ch, left : left + cw]).resize((32, 32), Image.BICUBIC))
    assert out.shape == (32, 32, 3)
    # PIL's pixels up to rounding ties (TF's own antialiased bicubic was up to 2 off)
    assert np.abs(out - ref).max() <= 1 and np.mean(out != ref) < 1e-3


def test_decode_and_random_crop_png_and_jpeg_agree_with_full_decode():
    for fmt in ("PNG", "JPEG"):
        buf = io.BytesIO()
        Image.fromarray(IMG).save(buf, format=fmt)
        encoded = tf.constant(buf.getvalue())
        full = A.decode_image(encoded)
        got = A.decode_and_random_crop(encoded, _seed(5), 32).numpy()
        ref = A.random_resized_crop(full, _seed(5), 32).numpy()
        if fmt == "PNG":
            np.testing.assert_array_equal(got, ref)
        else:  # decode_and_crop_jpeg may differ by chroma upsampling at the crop edges
            assert np.abs(got - ref).mean() < 3


def test_decode_and_random_crop_decodes_jpegs_with_the_accurate_dct_into_rgb():
    """The training decode: the crop window decoded with the accurate DCT (PIL's decode,
    test_timm_crop.py), three channels also for a greyscale JPEG."""
    buf = io.BytesIO()
    Image.fromarray(IMG).save(buf, format="JPEG", quality=90)
    encoded = tf.constant(buf.getvalue())
    window = A.sample_crop_window(tf.image.extract_jpeg_shape(encoded), _seed(5), (0.08, 1.0), (3 / 4, 4 / 3))
    got = A.decode_and_random_crop(encoded, _seed(5), 32).numpy()

    def reference(dct):
        return A.resize(tf.image.decode_and_crop_jpeg(encoded, window, channels=3, dct_method=dct), (32, 32)).numpy()

    np.testing.assert_array_equal(got, reference("INTEGER_ACCURATE"))
    assert not np.array_equal(got, reference("INTEGER_FAST"))  # the test can tell the two apart
    grey = io.BytesIO()
    Image.fromarray(IMG[..., 0]).save(grey, format="JPEG", quality=95)
    g = A.decode_and_random_crop(tf.constant(grey.getvalue()), _seed(5), 32).numpy()
    assert g.shape == (32, 32, 3)
    np.testing.assert_array_equal(g[..., 0], g[..., 2])


def test_grey_and_cmyk_jpeg_decode_to_rgb():
    grey = io.BytesIO()
    Image.fromarray(IMG[..., 0]).save(grey, format="JPEG", quality=95)
    g = A.decode_image(tf.constant(grey.getvalue())).numpy()
    assert g.shape == (50, 70, 3)
    np.testing.assert_array_equal(g[..., 0], g[..., 1])
    cmyk = io.BytesIO()
    Image.fromarray(IMG).convert("CMYK").save(cmyk, format="JPEG", quality=95)
    c = A.decode_image(tf.constant(cmyk.getvalue())).numpy().astype(float)
    assert c.shape == (50, 70, 3)
    assert np.abs(c - IMG).mean() < 12  # the RGB colours survive the CMYK round trip


def test_eval_resize_crop_matches_timm_pil_reference():
    for img, size, crop_pct in ((IMG, 32, 0.875), (IMG.transpose(1, 0, 2).copy(), 32, 0.95), (IMG, 40, 0.9)):
        out = A.eval_resize_crop(tf.constant(img), size, crop_pct).numpy()
        # timm: Resize(floor(size / crop_pct), bicubic) on the shorter side, CenterCrop(size)
        scale = math.floor(size / crop_pct)
        h, w = img.shape[:2]
        nh, nw = (scale, int(scale * w / h)) if h <= w else (int(scale * h / w), scale)
        resized = np.asarray(Image.fromarray(img).resize((nw, nh), Image.BICUBIC)).astype(np.float64)
        top, left = int(round((nh - size) / 2.0)), int(round((nw - size) / 2.0))
        ref = resized[top : top + size, left : left + size]
        assert out.shape == (size, size, 3)
        assert np.abs(out - ref).max() <= 1.0 and np.mean(out != ref) < 1e-3


def test_flip_is_mirror_or_identity_and_both_happen():
    seen = set()
    for i in range(16):
        out = A.random_flip(tf.constant(IMG), _seed(i)).numpy()
        if np.array_equal(out, IMG):
            seen.add("id")
        else:
            np.testing.assert_array_equal(out, IMG[:, ::-1])
            seen.add("flip")
    assert seen == {"id", "flip"}


def test_normalize_matches_numpy():
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    out = A.normalize(tf.constant(IMG), mean, std).numpy()
    ref = (IMG.astype(np.float64) / 255.0 - np.array(mean)) / np.array(std)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


# -------------------------------------------------------------------- colour ops


@pytest.mark.parametrize(
    "ours,pil",
    [
        (lambda x: A.adjust_brightness(x, 1.3), lambda p: ImageEnhance.Brightness(p).enhance(1.3)),
        (lambda x: A.adjust_contrast(x, 0.4), lambda p: ImageEnhance.Contrast(p).enhance(0.4)),
        (lambda x: A.adjust_saturation(x, 1.6), lambda p: ImageEnhance.Color(p).enhance(1.6)),
        (lambda x: R.sharpness(x, 1.8), lambda p: ImageEnhance.Sharpness(p).enhance(1.8)),
        (lambda x: R.sharpness(x, 0.2), lambda p: ImageEnhance.Sharpness(p).enhance(0.2)),
    ],
    ids=["brightness", "contrast", "color", "sharpness_up", "sharpness_down"],
)
def test_enhance_ops_match_pil(ours, pil):
    out = ours(tf.constant(IMG_F)).numpy()
    ref = np.asarray(pil(Image.fromarray(IMG))).astype(np.float32)
    assert np.abs(out - ref).max() <= 1.0  # PIL truncates where we round


@pytest.mark.parametrize(
    "ours,pil",
    [
        (R.autocontrast, ImageOps.autocontrast),
        (R.equalize, ImageOps.equalize),
        (lambda x: 255.0 - x, ImageOps.invert),
        (lambda x: R.posterize(x, tf.constant(2)), lambda p: ImageOps.posterize(p, 2)),
        (lambda x: R.solarize(x, 100.0), lambda p: ImageOps.solarize(p, 100)),
        (lambda x: R.solarize_add(x, 40.0), lambda p: p.point(lambda i: min(255, i + 40) if i < 128 else i)),
        (lambda x: R.translate_x(x, 7.0),
         lambda p: p.transform(p.size, Image.AFFINE, (1, 0, 7, 0, 1, 0), Image.BILINEAR, fillcolor=FILL)),
    ],
    ids=["autocontrast", "equalize", "invert", "posterize", "solarize", "solarize_add", "translate_int"],
)
def test_exact_ops_match_pil(ours, pil):
    # IMG has every channel spanning 0..255; LOW has a minimum above 0, a channel of two
    # adjacent levels and a constant channel (which autocontrast must leave as it is).
    low = (IMG // 3 + 40).astype(np.uint8)
    low[..., 1] = 100 + IMG[..., 1] % 2  # two adjacent levels
    low[..., 2] = 90
    for image in (IMG, low):
        out = ours(tf.constant(image.astype(np.float32))).numpy()
        ref = np.asarray(pil(Image.fromarray(image))).astype(np.float32)
        np.testing.assert_array_equal(out, ref)


def test_posterize_to_zero_bits_is_black_and_to_eight_bits_the_identity():
    # 0 bits: the image older Pillow returned (Pillow >= 12 rejects 0); timm's
    # PosterizeIncreasing reaches it at magnitude 10.
    np.testing.assert_array_equal(R.posterize(tf.constant(IMG_F), tf.constant(0)).numpy(), np.zeros_like(IMG_F))
    np.testing.assert_array_equal(R.posterize(tf.constant(IMG_F), tf.constant(8)).numpy(), IMG_F)


def test_equalize_on_low_contrast_image_matches_pil():
    low = (IMG // 8 + 100).astype(np.uint8)
    np.testing.assert_array_equal(R.equalize(tf.constant(low, tf.float32)).numpy(),
                                  np.asarray(ImageOps.equalize(Image.fromarray(low))))
    # A larger image (PIL's step = (count - count of the top level) // 255 then differs
    # from nearby rules): a skewed channel whose top level occurs once, one of three
    # levels whose top one is the most common, and a constant one (left as it is).
    rng = np.random.default_rng(1)
    big = np.clip(rng.normal(120, 30, (240, 320, 3)), 0, 250).astype(np.uint8)
    big[:, :2, 0] = 240
    big[0, 0, 0] = 255  # a top level of count 1 above a common one
    big[..., 1] = rng.choice(np.array([10, 50, 200], np.uint8), (240, 320), p=[0.2, 0.3, 0.5])
    big[..., 2] = 77
    np.testing.assert_array_equal(R.equalize(tf.constant(big, tf.float32)).numpy(),
                                  np.asarray(ImageOps.equalize(Image.fromarray(big))))
    small = IMG[:20, :20]  # 400 pixels: PIL's step is 1
    np.testing.assert_array_equal(R.equalize(tf.constant(small, tf.float32)).numpy(),
                                  np.asarray(ImageOps.equalize(Image.fromarray(small))))


@pytest.mark.parametrize("pixels", [7.0, -6.3, 0.25, -0.5, 100.7, -223.5, 230.0, -300.2, 0.0])
@pytest.mark.parametrize("axis", [0, 1])
def test_translate_by_slices_equals_the_projective_transform(pixels, axis):
    """`translate_x`/`translate_y` slice the padded image; TF's ImageProjectiveTransformV3
    (what `affine` runs) is the reference: equal except at rounding ties (one level), and
    all fill once the shift leaves the image."""
    image = tf.constant(np.random.default_rng(3).integers(0, 256, (40, 52, 3)).astype(np.float32))
    ours = (R.translate_y if axis == 0 else R.translate_x)(image, tf.constant(pixels)).numpy()
    matrix = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    matrix[5 if axis == 0 else 2] = pixels
    ref = R.affine(image, tf.constant(matrix)).numpy()
    # float64 NumPy: the bilinear blend of the two pixels each output samples, FILL outside.
    k = int(np.floor(np.float32(pixels)))
    f = np.float64(np.float32(pixels)) - k
    size = image.shape[axis]
    src = np.moveaxis(image.numpy().astype(np.float64), axis, 0)
    fill = np.broadcast_to(np.float64(R.FILL), src.shape[1:])
    at = lambda i: src[i] if 0 <= i < size else fill  # noqa: E731
    exact = np.moveaxis(np.stack([(1 - f) * at(i + k) + f * at(i + k + 1) for i in range(size)]), 0, axis)
    tie = np.abs(exact - np.floor(exact) - 0.5) < 1e-3
    for out in (ours, ref):
        assert np.all((np.abs(out - np.round(exact)) <= 1) & ((out == np.round(exact)) | tie))
    diff = np.abs(ours - ref)
    assert diff.max() <= 1.0 and np.all((diff == 0) | tie)
    if pixels == int(pixels):
        np.testing.assert_array_equal(ours, ref)
    if abs(pixels) >= image.shape[axis] + 1:
        np.testing.assert_array_equal(ours, np.broadcast_to(np.float32(R.FILL), ours.shape))


@pytest.mark.parametrize(
    "ours,matrix_or_angle",
    [
        (lambda x: R.shear_x(x, 0.2), (1, 0.2, 0, 0, 1, 0)),
        (lambda x: R.shear_y(x, -0.25), (1, 0, 0, -0.25, 1, 0)),
        (lambda x: R.translate_y(x, -6.3), (1, 0, 0, 0, 1, -6.3)),
        (lambda x: R.rotate(x, 20.0), 20.0),
        (lambda x: R.rotate(x, -27.0), -27.0),
    ],
    ids=["shear_x", "shear_y", "translate_frac", "rotate20", "rotate-27"],
)
def test_geometric_ops_match_pil(ours, matrix_or_angle):
    pil = Image.fromarray(IMG)
    if isinstance(matrix_or_angle, float):
        ref = pil.rotate(matrix_or_angle, resample=Image.BILINEAR, fillcolor=FILL)
    else:
        ref = pil.transform(pil.size, Image.AFFINE, matrix_or_angle, Image.BILINEAR, fillcolor=FILL)
    diff = np.abs(ours(tf.constant(IMG_F)).numpy() - np.asarray(ref))
    # identical up to rounding except along the fill border, where PIL and TF treat the
    # half-pixel margin differently
    assert (diff <= 1).mean() > 0.97 and diff.mean() < 1.2


def test_rand_augment_ops_keep_uint8_range_and_all_ops_run():
    x = tf.constant(IMG_F)
    for index in range(len(R.OP_NAMES)):
        for sign in (-1.0, 1.0):
            out = R.apply_op(x, tf.constant(index), tf.constant(9.0), tf.constant(sign)).numpy()
            assert out.shape == IMG.shape
            assert out.min() >= 0 and out.max() <= 255 and np.array_equal(out, np.round(out)), R.OP_NAMES[index]
            if R.OP_NAMES[index] not in ("AutoContrast",):
                assert not np.array_equal(out, IMG_F), R.OP_NAMES[index]


def test_color_jitter_zero_is_identity():
    np.testing.assert_array_equal(A.color_jitter(tf.constant(IMG_F), _seed(0), 0.0).numpy(), IMG_F)


# ----------------------------------------------------------------------- erasing


def test_random_erasing_box_and_untouched_rest():
    x = A.normalize(tf.constant(IMG), (0.5,) * 3, (0.25,) * 3).numpy()
    applied, areas = 0, []
    for i in range(80):
        out = A.random_erasing(tf.constant(x), _seed(i), probability=0.25).numpy()
        changed = np.any(out != x, axis=-1)
        if not changed.any():
            continue
        applied += 1
        rows, cols = np.where(changed)
        y0, y1, x0, x1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
        box = np.zeros_like(changed)
        box[y0:y1, x0:x1] = True
        np.testing.assert_array_equal(out[~box], x[~box])  # the rest is untouched
        area = (y1 - y0) * (x1 - x0) / changed.size
        areas.append(area)
        assert 0.015 <= area <= 1 / 3 + 0.03  # timm: 2%..1/3 of the area (rounded sides)
        assert y1 - y0 < x.shape[0] and x1 - x0 < x.shape[1]
        noise = out[y0:y1, x0:x1]
        assert abs(noise.mean()) < 0.3 and 0.7 < noise.std() < 1.3  # per-pixel N(0, 1)
    assert 8 <= applied <= 35  # p = 0.25 over 80 draws
    # The erased area is U[2%, 1/3] of the image, not tied to the coin that chose to erase.
    assert 0.12 < np.mean(areas) < 0.24, np.mean(areas)


def test_random_erasing_box_shape_and_place_follow_timm():
    """timm's defaults on a 200x200 image (almost every first try fits): log aspect
    U[log 0.3, log 1/0.3], independent of the area; the box always erased whole, its
    top-left corner uniform over the places where it fits (randint(0, h - eh) inclusive:
    it touches the bottom/right edge at times), top and left drawn independently."""
    from scipy import stats

    size = 200
    x = np.zeros((size, size, 3), np.float32)
    log_aspects, log_areas, tops, lefts, top_row, left_col, bottom, right = [], [], [], [], 0, 0, 0, 0
    for i in range(150):
        changed = np.any(A.random_erasing(tf.constant(x), _seed(i), probability=1.0).numpy() != x, axis=-1)
        rows, cols = np.where(changed)
        assert len(rows), i  # probability 1: always a box
        eh, ew = rows.max() + 1 - rows.min(), cols.max() + 1 - cols.min()
        log_aspects.append(math.log(eh / ew))
        log_areas.append(math.log(eh * ew))
        tops.append(rows.min() / (size - eh))
        lefts.append(cols.min() / (size - ew))
        bottom, right = bottom + (rows.max() == size - 1), right + (cols.max() == size - 1)
        top_row, left_col = top_row + (rows.min() == 0), left_col + (cols.min() == 0)
    lim = math.log(1 / 0.3)
    assert stats.kstest(log_aspects, "uniform", args=(-lim, 2 * lim)).pvalue > 1e-3
    assert min(log_aspects) < -lim + 0.1 and max(log_aspects) > lim - 0.1  # both ends reached
    assert abs(np.corrcoef(log_aspects, log_areas)[0, 1]) < 0.3
    for frac in (np.array(tops), np.array(lefts)):
        assert frac.max() <= 1.0 and abs(frac.mean() - 0.5) < 0.1
    assert abs(np.corrcoef(tops, lefts)[0, 1]) < 0.3
    assert bottom >= 1 and right >= 1  # expected ~1.2 each over these 150 seeds
    assert top_row >= 1 and left_col >= 1  # the first row and column too


# ------------------------------------------------------------------------ mixing


def _distinct_batch(b=6, s=16):
    # image i is constant i + 1 (distinct from its partner B-1-i): the mixing is readable
    return np.stack([np.full((s, s, 3), float(i + 1), np.float32) for i in range(b)])


def test_mixup_labels_equal_image_lambda():
    x = _distinct_batch()
    k, smoothing = 4, 0.1
    y_s = np.full((6, k), smoothing / k)
    y_s[np.arange(6), LABELS] += 1 - smoothing
    for i in range(6):
        images, soft = (t.numpy() for t in A.mix_batch(x, LABELS, _seed(i), k, 0.8, 0.0, 0.5, smoothing))
        np.testing.assert_allclose(soft.sum(1), 1.0, atol=1e-6)
        # image 0 = lam * 1 + (1 - lam) * 6  ->  lam from the pixels
        lam = (images[0, 0, 0, 0] - 6.0) / (1.0 - 6.0)
        assert 0 <= lam <= 1
        np.testing.assert_allclose(images, lam * x + (1 - lam) * x[::-1], atol=1e-5)
        np.testing.assert_allclose(soft, lam * y_s + (1 - lam) * y_s[::-1], atol=1e-5)


def test_cutmix_lambda_is_pasted_area():
    x = _distinct_batch(s=20)
    k = 4
    for i in range(8):
        images, soft = (t.numpy() for t in A.mix_batch(x, LABELS, _seed(i), k, 0.0, 1.0, 0.5, 0.0))
        pasted = images[..., 0] != x[..., 0]
        frac = pasted[0].mean()
        assert np.all(pasted == pasted[0])  # one box for the batch (rows differ from their partners)
        np.testing.assert_array_equal(images[pasted], x[::-1][pasted])  # box content from the partner
        rows, cols = np.where(pasted[0])
        if len(rows):
            assert pasted[0, rows.min() : rows.max() + 1, cols.min() : cols.max() + 1].all()  # a rectangle
        lam = 1 - frac
        ref = lam * np.eye(k)[LABELS] + (1 - lam) * np.eye(k)[LABELS[::-1]]
        np.testing.assert_allclose(soft, ref, atol=1e-6)


def test_mix_switch_uses_both_and_off_is_smoothed_one_hot():
    x = _distinct_batch()
    kinds = set()
    for i in range(16):
        images, _ = A.mix_batch(x, LABELS, _seed(i), 4, 0.8, 1.0, 0.5, 0.1)
        img = images.numpy()
        # mixup: all pixels of an image equal; cutmix: a box of pasted values
        kinds.add("mixup" if np.all(img[0] == img[0, 0, 0, 0]) and img[0, 0, 0, 0] not in (1.0, 6.0) else "cutmix")
    assert kinds == {"mixup", "cutmix"}
    # One of the two alone: batches are mixed by it, never by the other (a CutMix box can
    # be empty when lambda is near 1, as in timm).
    for mixup_alpha, cutmix_alpha, kind in ((0.8, 0.0, "mixup"), (0.0, 1.0, "cutmix")):
        mixed = 0
        for i in range(8):
            img = A.mix_batch(x, LABELS, _seed(i), 4, mixup_alpha, cutmix_alpha, 0.5, 0.1)[0].numpy()
            if np.array_equal(img, x):
                continue
            mixed += 1
            is_mixup = np.all(img[0] == img[0, 0, 0, 0]) and img[0, 0, 0, 0] not in (1.0, 6.0)
            assert is_mixup == (kind == "mixup"), (kind, i)
        assert mixed >= 6, (kind, mixed)
    images, soft = A.mix_batch(x, LABELS, _seed(0), 4, 0.0, 0.0, 0.5, 0.1)
    np.testing.assert_array_equal(images.numpy(), x)
    ref = np.full((6, 4), 0.025)
    ref[np.arange(6), LABELS] = 0.925
    np.testing.assert_allclose(soft.numpy(), ref, atol=1e-7)


def test_color_jitter_factors_are_uniform_in_one_plus_minus_strength_and_independent():
    """torchvision's ColorJitter(s, s, s): brightness and contrast factors each
    U[1 - s, 1 + s], drawn independently. Read back from a two-level grey image, where
    saturation does nothing and brightness (x f_b) and contrast (blend toward the mean,
    f_c) give levels f_b (m -+ d f_c) in either order (up to rounding)."""
    s, n = 0.4, 400
    lo, hi, mean = 50.0, 130.0, 90.0
    image = tf.constant([[[lo] * 3, [hi] * 3]], tf.float32)
    fb, fc = [], []
    for i in range(n):
        out = A.color_jitter(image, _seed(i), s).numpy()
        a, b = out[0, 0], out[0, 1]
        assert a[0] == a[1] == a[2] and b[0] == b[1] == b[2]  # still grey: saturation is a no-op
        fb.append((a[0] + b[0]) / (2 * mean))
        fc.append((b[0] - a[0]) / (a[0] + b[0]) * mean / ((hi - lo) / 2))
    for f in (np.array(fb), np.array(fc)):
        assert 1 - s - 0.03 < f.min() < 1 - s + 0.03 and 1 + s - 0.03 < f.max() < 1 + s + 0.03, (f.min(), f.max())
        assert abs(f.mean() - 1.0) < 0.04  # sigma of the mean: 0.23 / 20 = 0.012
        assert abs(np.mean(f < 1.0 - s / 2) - 0.25) < 0.07
    assert abs(np.corrcoef(fb, fc)[0, 1]) < 0.15
    # strength 0 is the identity
    np.testing.assert_array_equal(A.color_jitter(image, _seed(0), 0.0).numpy(), image.numpy())


def test_cutmix_box_sides_and_centres_follow_timms_rand_bbox():
    """timm `rand_bbox`: sides int(H sqrt(1 - lam)), int(W sqrt(1 - lam)), halved each way
    around a centre uniform over the pixels, clipped. Unclipped boxes have exactly those
    sides; centres cover the image evenly."""
    h, w, lam = 100, 80, 0.64  # sqrt(1 - lam) = 0.6: sides 60 x 48
    boxes = np.array([A.cutmix_box(_seed(i), h, w, tf.constant(lam)).numpy() for i in range(300)])
    y0, y1, x0, x1 = boxes.T
    inside_y, inside_x = (y0 > 0) & (y1 < h), (x0 > 0) & (x1 < w)
    assert inside_y.sum() > 30 and inside_x.sum() > 30
    assert set(y1[inside_y] - y0[inside_y]) == {60} and set(x1[inside_x] - x0[inside_x]) == {48}
    assert (0 <= y0).all() and (y1 <= h).all() and (0 <= x0).all() and (x1 <= w).all()
    cy = np.where(y0 > 0, y0 + 30, y1 - 30)  # the centre, from whichever edge was not clipped
    assert abs(cy.mean() - (h - 1) / 2) < 4 * h / math.sqrt(12 * len(cy))
    assert cy.min() < 10 and cy.max() > h - 10
    cx = np.where(x0 > 0, x0 + 24, x1 - 24)
    assert abs(np.corrcoef(cy, cx)[0, 1]) < 4 / math.sqrt(len(cy))  # independent draws
    # ...uniform over all h*w pixels: 300 centres repeat ~5.6 times (birthday count), not
    # ~110 as when cx is tied to cy (e.g. both taken from one random word).
    assert len(cy) - len(set(zip(cy, cx))) < 25
    assert (y0 == 0).any() and (x0 == 0).any() and (y1 == h).any() and (x1 == w).any()  # clipped to the image


def test_mixup_lambda_is_beta_alpha_alpha():
    from scipy import stats

    for alpha in (0.8, 2.0):
        lam = np.array([float(A.sample_beta(_seed(i), alpha)) for i in range(400)])
        assert stats.kstest(lam, "beta", args=(alpha, alpha)).pvalue > 1e-3, alpha


def test_erasing_and_cutmix_keep_static_shapes():
    """The pasted box (slices and concats) keeps the image's static shape: later
    per-channel ops (`per_channel`, the uint8 transfer) take their fast path only with it."""
    traced = []

    @tf.function
    def f(images, seed):
        erased = A.random_erasing(images[0], seed, 1.0)
        mixed, _ = A.mix_batch(images, tf.constant([0, 1]), seed, 4, 0.0, 1.0)
        traced.append((erased.shape, mixed.shape))
        return erased, mixed

    f.get_concrete_function(tf.TensorSpec([2, 32, 32, 3]), tf.TensorSpec([2], tf.int64))
    assert traced == [((32, 32, 3), (2, 32, 32, 3))]


def test_normalize_dynamic_shape_equals_static():
    """The per-plane path for images of unknown size gives the static path's values."""
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    image = np.random.default_rng(3).integers(0, 256, (13, 17, 3)).astype(np.float32)
    dynamic = tf.function(lambda x: A.normalize(x, mean, std), input_signature=[tf.TensorSpec([None, None, 3])])
    static = tf.function(lambda x: A.normalize(x, mean, std), input_signature=[tf.TensorSpec([13, 17, 3])])
    # both traced (in graphs TF rewrites x / c as x * (1/c); eager differs by ~1 ulp)
    np.testing.assert_array_equal(dynamic(tf.constant(image)).numpy(), static(tf.constant(image)).numpy())
    ref = (image.astype(np.float64) / 255.0 - np.array(mean)) / np.array(std)
    np.testing.assert_allclose(dynamic(tf.constant(image)).numpy(), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", [(375, 500), (500, 333), (480, 640), (257, 256)])
def test_eval_crop_window_resize_equals_pil_resize_then_crop(shape):
    """The eval transform resizes only the centre window: PIL's pixels of resizing the
    whole image and cropping (timm's Resize + CenterCrop), up to rounding ties."""
    image = np.random.default_rng(sum(shape)).integers(0, 256, (*shape, 3)).astype(np.uint8)
    for crop_pct in (0.875, 0.95):
        scale_size = math.floor(224 / crop_pct)
        h, w = shape
        long_new = int(scale_size * max(h, w) / min(h, w))
        nh, nw = (scale_size, long_new) if h <= w else (long_new, scale_size)
        full = np.asarray(Image.fromarray(image).resize((nw, nh), Image.BICUBIC)).astype(np.float64)
        top, left = round((nh - 224) / 2), round((nw - 224) / 2)
        want = full[top : top + 224, left : left + 224]
        got = A.eval_resize_crop(tf.constant(image), 224, crop_pct).numpy()
        assert np.abs(got - want).max() <= 1.0
        assert np.mean(got != want) < 1e-3
