"""mobile_sdk.preprocess: accepted inputs, typed errors, and EQUAL tensors with trainer.data.pipeline."""
import io

import numpy as np
import pytest
from PIL import Image

from mobile_sdk.errors import InvalidImageError
from mobile_sdk.preprocess import load_image, prepare_image, resize_image

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (23, 31, 3), dtype=np.uint8)


def _encode(array, fmt, **kwargs):
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, fmt, **kwargs)
    return buf.getvalue()


def _photo_like(h, w, seed):
    """Smooth gradients plus noise: like a photo, unlike pure noise, JPEG keeps it recognisable."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255.0 / max(w - 1, 1), yy * 255.0 / max(h - 1, 1), (xx + yy) % 97 * 2.6], -1)
    return np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)


# -- accepted inputs -----------------------------------------------------------------------------

def test_uint8_rgb_passes_through():
    assert load_image(RGB) is RGB or np.array_equal(load_image(RGB), RGB)


def test_float_in_unit_range_is_scaled_and_rounded():
    x = np.array([[[0.0, 0.5, 1.0], [0.2, 0.998, 0.001]]], dtype=np.float32)
    assert load_image(x).tolist() == [[[0, 128, 255], [51, 254, 0]]]  # 127.5 rounds half to even -> 128
    assert load_image(x.astype(np.float64)).dtype == np.uint8


def test_grayscale_and_rgba():
    grey = RGB[:, :, 0]
    assert np.array_equal(load_image(grey), np.repeat(grey[:, :, None], 3, axis=2))
    assert np.array_equal(load_image(grey[:, :, None]), load_image(grey))
    rgba = np.concatenate([RGB, RNG.integers(0, 256, (23, 31, 1), dtype=np.uint8)], axis=2)
    assert np.array_equal(load_image(rgba), RGB)


def test_pil_path_and_bytes(tmp_path):
    assert np.array_equal(load_image(Image.fromarray(RGB)), RGB)
    assert np.array_equal(load_image(Image.fromarray(RGB).convert("RGBA")), RGB)
    assert np.array_equal(load_image(Image.fromarray(RGB[:, :, 1])), np.repeat(RGB[:, :, 1:2], 3, axis=2))
    png = _encode(RGB, "PNG")
    assert np.array_equal(load_image(png), RGB)
    assert np.array_equal(load_image(bytearray(png)), RGB)
    path = tmp_path / "x.png"
    path.write_bytes(png)
    assert np.array_equal(load_image(path), RGB) and np.array_equal(load_image(str(path)), RGB)
    jpeg = load_image(_encode(RGB, "JPEG", quality=95))
    assert jpeg.shape == RGB.shape and jpeg.dtype == np.uint8


# -- bad input: typed errors naming the problem ---------------------------------------------------

@pytest.mark.parametrize("bad,match", [
    (np.zeros((4,), np.uint8), "shape"),
    (np.zeros((2, 4, 4, 3), np.uint8), "shape"),
    (np.zeros((4, 4, 2), np.uint8), "channels"),
    (np.zeros((4, 4, 5), np.uint8), "channels"),
    (np.zeros((0, 4, 3), np.uint8), "empty"),
    (np.zeros((4, 0), np.uint8), "empty"),
    (np.zeros((4, 4, 3), np.int32), "dtype"),
    (np.zeros((4, 4, 3), bool), "dtype"),
    (np.full((4, 4, 3), 2.0, np.float32), r"\[0, 1\]"),
    (np.full((4, 4, 3), -0.1, np.float32), r"\[0, 1\]"),
    (np.full((4, 4, 3), np.nan, np.float32), "NaN"),
    (b"", "empty"),
    (b"not an image at all", "cannot decode"),
    (_encode(RGB, "PNG")[:60], "cannot decode"),
    (_encode(RGB, "GIF"), "GIF"),
    ([[1, 2, 3]], "unsupported image type"),
    ("/definitely/not/here.png", "cannot read"),
])
def test_bad_images(bad, match):
    with pytest.raises(InvalidImageError, match=match):
        load_image(bad)


def test_truncated_jpeg_is_an_error():
    jpeg = _encode(_photo_like(40, 40, 1), "JPEG")
    with pytest.raises(InvalidImageError):
        load_image(jpeg[: len(jpeg) // 2])


def test_resize_same_size_is_identity_and_bad_size_rejected():
    assert resize_image(RGB, RGB.shape[:2]) is RGB
    flipped = RGB[:, ::-1]  # a strided view comes back C-contiguous, as any resized image does
    assert resize_image(flipped, RGB.shape[:2]).flags.c_contiguous
    assert np.array_equal(resize_image(flipped, RGB.shape[:2]), flipped)
    assert prepare_image(flipped, (8, 9)).flags.c_contiguous
    assert prepare_image(RGB, (8, 9)).shape == (1, 8, 9, 3)
    with pytest.raises(ValueError, match="positive"):
        resize_image(RGB, (0, 4))


@pytest.mark.parametrize("band_values", [1, 7 * 3 * 5, 1 << 30])
def test_resize_bands_give_the_same_pixels(monkeypatch, band_values):
    """The resize runs over bands of output rows (one row, several with a shorter last one, all at
    once): the pixels are the same however the rows are banded, and come back C-contiguous."""
    from mobile_sdk import preprocess

    image = _photo_like(61, 47, 3)
    sizes = [(23, 7), (1, 1), (64, 5), (9, 100)]
    expected = [resize_image(image, size) for size in sizes]
    monkeypatch.setattr(preprocess, "_BAND_VALUES", band_values)
    for size, want in zip(sizes, expected):
        got = resize_image(image, size)
        assert got.shape == (*size, 3) and got.flags.c_contiguous
        np.testing.assert_array_equal(got, want, err_msg=f"{size}, band of {band_values} values")


# -- parity with the trainer's tf.data path ------------------------------------------------------

@pytest.fixture(scope="module")
def tf_pipeline():
    tf = pytest.importorskip("tensorflow")
    try:
        from trainer.data.pipeline import decode_image, resize_image as tf_resize_image
    except ImportError as exc:
        pytest.skip(f"trainer.data.pipeline.decode_image/resize_image not available yet: {exc}")
    return tf, decode_image, tf_resize_image


SIZES = [(32, 32), (64, 48), (17, 63), (5, 300), (97, 13)]
SOURCES = [(37, 53), (64, 64), (100, 31), (7, 9), (224, 300)]


@pytest.mark.parametrize("h,w", SOURCES)
def test_resize_equals_trainer_eager_and_in_tf_data(tf_pipeline, h, w):
    tf, _, tf_resize = tf_pipeline
    for seed, image in enumerate([RNG.integers(0, 256, (h, w, 3), dtype=np.uint8), _photo_like(h, w, 2)]):
        for size in SIZES + [(h, w), (2 * h + 1, w // 2 + 1)]:
            ours = resize_image(image, size)
            eager = tf_resize(image, size).numpy()
            assert ours.dtype == eager.dtype == np.uint8
            np.testing.assert_array_equal(ours, eager, err_msg=f"{(h, w)} -> {size}")
            assert ours.flags.c_contiguous  # LiteRT copies a strided input once more
        ds = tf.data.Dataset.from_tensors(image).map(lambda x: tf_resize(x, SIZES[2]))
        np.testing.assert_array_equal(resize_image(image, SIZES[2]), next(iter(ds)).numpy())


def test_resize_photo_to_model_sizes_equals_trainer(tf_pipeline):
    """A photo-sized downscale (the SDK's hot path), including a strided view as input."""
    _, _, tf_resize = tf_pipeline
    photo = _photo_like(480, 640, 6)
    for image in (photo, photo[::-1]):
        for size in [(224, 224), (64, 64)]:
            np.testing.assert_array_equal(resize_image(image, size), tf_resize(np.ascontiguousarray(image), size).numpy())


@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA", "P"])
def test_png_decode_equals_trainer(tf_pipeline, mode):
    _, decode_image, tf_resize = tf_pipeline
    png = _pil_bytes(Image.fromarray(_photo_like(41, 29, 3)).convert(mode), "PNG")
    ours, theirs = load_image(png), decode_image(png).numpy()
    np.testing.assert_array_equal(ours, theirs)
    np.testing.assert_array_equal(resize_image(ours, (32, 32)), tf_resize(theirs, (32, 32)).numpy())


def _pil_bytes(image, fmt):
    buf = io.BytesIO()
    image.save(buf, fmt)
    return buf.getvalue()


@pytest.mark.parametrize("quality,subsampling", [(95, 0), (75, 2), (90, 1)])
def test_jpeg_decode_equals_accurate_integer_dct(tf_pipeline, quality, subsampling):
    """PIL decodes JPEG with libjpeg's accurate integer DCT and fancy upsampling, which is what
    tf.io.decode_jpeg(dct_method="INTEGER_ACCURATE") does: bit-identical."""
    tf, _, _ = tf_pipeline
    for mode in ("RGB", "L"):
        pixels = np.asarray(Image.fromarray(_photo_like(45, 61, 4)).convert(mode))
        jpeg = _encode(pixels, "JPEG", quality=quality, subsampling=subsampling)
        expected = tf.io.decode_jpeg(jpeg, channels=3, dct_method="INTEGER_ACCURATE").numpy()
        np.testing.assert_array_equal(load_image(jpeg), expected)


@pytest.mark.parametrize("quality,subsampling,mode", [(90, 0, "RGB"), (75, 2, "RGB"), (95, 1, "L")])
def test_jpeg_decode_equals_trainer(tf_pipeline, quality, subsampling, mode):
    _, decode_image, tf_resize = tf_pipeline
    pixels = np.asarray(Image.fromarray(_photo_like(48, 64, 5)).convert(mode))
    jpeg = _encode(pixels, "JPEG", quality=quality, subsampling=subsampling)
    ours, theirs = load_image(jpeg), decode_image(jpeg).numpy()
    np.testing.assert_array_equal(ours, theirs)
    np.testing.assert_array_equal(resize_image(ours, (32, 32)), tf_resize(theirs, (32, 32)).numpy())


def test_trainer_eval_pipeline_equals_sdk_on_files(tf_pipeline, tmp_path):
    """The whole path: files -> trainer.data.pipeline.make_dataset (eval) vs mobile_sdk prepare_image,
    and the location the model gets: NaN for unknown in both."""
    try:
        from trainer.data.pipeline import make_dataset
        from trainer.data.dataset import GeoDataset
    except ImportError as exc:
        pytest.skip(f"trainer.data/pipeline not available: {exc}")
    paths = []
    for i, (fmt, mode, shape) in enumerate([("PNG", "RGB", (40, 57)), ("JPEG", "RGB", (71, 33)),
                                            ("PNG", "RGBA", (32, 32)), ("JPEG", "L", (20, 90))]):
        path = tmp_path / f"{i}.{fmt.lower()}"
        Image.fromarray(_photo_like(*shape, seed=i)).convert(mode).save(path, fmt)
        paths.append(str(path))
    n = len(paths)
    ds = GeoDataset(paths=paths, labels=[0, 1, 0, 1], lat=[10.0, np.nan, -45.5, 89.0], lon=[20.0, np.nan, 179.5, -3.0],
                    has_location=[True, False, True, True], dates=[""] * n, supercategories=[0] * n,
                    label_names=["a", "b"], supercategory_names=["all"])
    (batch, _), = make_dataset(ds, (32, 48), batch_size=n, training=False).take(1)
    ours = np.concatenate([prepare_image(p, (32, 48)) for p in paths])
    np.testing.assert_array_equal(batch["image"].numpy(), ours)
    np.testing.assert_array_equal(np.isnan(batch["location"].numpy()).all(axis=1), [False, True, False, False])
