"""The image preprocessing spec and the tf.data pipeline (eager and inside tf.data)."""
import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from trainer.data.pipeline import augment_image, decode_image, make_dataset, resize_image
from trainer.data.dataset import GeoDataset


def encode(pixels, fmt, mode=None):
    buf = io.BytesIO()
    Image.fromarray(pixels, mode=mode).save(buf, format=fmt)
    return buf.getvalue()


RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (9, 14, 3), dtype=np.uint8)


def test_decode_png_rgb_is_lossless():
    np.testing.assert_array_equal(decode_image(encode(RGB, "PNG")).numpy(), RGB)


def test_decode_grayscale_replicates_channels():
    gray = RNG.integers(0, 256, (7, 5), dtype=np.uint8)
    out = decode_image(encode(gray, "PNG")).numpy()
    assert out.shape == (7, 5, 3)
    np.testing.assert_array_equal(out, np.repeat(gray[..., None], 3, axis=2))


def test_decode_rgba_drops_alpha_without_blending():
    rgba = RNG.integers(0, 256, (6, 8, 4), dtype=np.uint8)
    np.testing.assert_array_equal(decode_image(encode(rgba, "PNG")).numpy(), rgba[..., :3])


def test_decode_gray_alpha_drops_alpha():
    la = RNG.integers(0, 256, (6, 8, 2), dtype=np.uint8)
    out = decode_image(encode(la, "PNG", mode="LA")).numpy()
    np.testing.assert_array_equal(out, np.repeat(la[..., :1], 3, axis=2))


@pytest.mark.parametrize("quality", [75, 95])
@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_decode_jpeg_equals_pil(quality, mode):
    # Random pixels stress chroma upsampling and the IDCT: TF's default decode differs from PIL by
    # up to ~7 counts here; the accurate IDCT + fancy upsampling matches exactly.
    pixels = RGB if mode == "RGB" else RGB[..., 0]
    buf = io.BytesIO()
    Image.fromarray(pixels, mode=mode).save(buf, format="JPEG", quality=quality)
    out = decode_image(buf.getvalue()).numpy()
    pil = np.asarray(Image.open(buf).convert("RGB"))
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, pil)


@pytest.mark.parametrize("fmt", ["GIF", "BMP"])
def test_decode_rejects_formats_outside_the_spec(fmt):
    with pytest.raises(tf.errors.InvalidArgumentError):
        decode_image(encode(RGB, fmt))


def test_decode_garbage_raises():
    with pytest.raises(tf.errors.InvalidArgumentError):
        decode_image(b"definitely not an image")


def test_resize_same_size_passes_through():
    np.testing.assert_array_equal(resize_image(RGB, (9, 14)).numpy(), RGB)


def test_resize_is_half_pixel_bilinear_rounded_half_to_even():
    # Upscaling 2 -> 4 samples the input at -0.25, 0.25, 0.75, 1.25 (clamped): weights 0, .25, .75, 1.
    row = np.array([[0, 100], [2, 0]], dtype=np.uint8)
    img = np.repeat(row[:, :, None], 3, axis=2)[:1]  # [1, 2, 3]: one row [0, 100]
    np.testing.assert_array_equal(resize_image(img, (1, 4)).numpy()[0, :, 0], [0, 25, 75, 100])
    # [2, 0] -> 2, 1.5, 0.5, 0 -> half to even: 2, 2, 0, 0.
    img2 = np.repeat(row[:, :, None], 3, axis=2)[1:]
    np.testing.assert_array_equal(resize_image(img2, (1, 4)).numpy()[0, :, 0], [2, 2, 0, 0])


def test_resize_downscale_has_no_antialiasing():
    # Half-pixel 4 -> 2 samples exactly between pixels 0|1 and 2|3: a plain 2-tap average.
    img = np.repeat(np.array([[0, 10, 200, 255]], dtype=np.uint8)[:, :, None], 3, axis=2)
    np.testing.assert_array_equal(resize_image(img, (1, 2)).numpy()[0, :, 0], [5, 228])  # 227.5 -> 228


def test_resize_rejects_float_input():
    with pytest.raises(ValueError, match="uint8"):
        resize_image(RGB.astype(np.float32), (4, 4))


def test_resize_eager_equals_inside_tf_data():
    fn = lambda im: resize_image(im, (5, 23))  # noqa: E731
    graph = next(iter(tf.data.Dataset.from_tensors(RGB).map(fn))).numpy()
    np.testing.assert_array_equal(graph, fn(RGB).numpy())


def test_augment_crops_and_is_reproducible_per_seed():
    seed = tf.constant([3, 4], tf.int64)
    a, b = augment_image(RGB, seed).numpy(), augment_image(RGB, seed).numpy()
    np.testing.assert_array_equal(a, b)
    assert a.shape[0] <= 9 and a.shape[1] <= 14 and a.shape[0] * a.shape[1] >= 0.5 * 9 * 14
    outs = {augment_image(RGB, tf.constant([s, 0], tf.int64)).numpy().tobytes() for s in range(8)}
    assert len(outs) > 1  # different seeds, different crops/flips


@pytest.fixture
def small_dataset(tmp_path):
    paths, labels = [], []
    for i in range(10):
        size = (20 + i, 30 - i)
        pixels = np.random.default_rng(i).integers(0, 256, (*size, 3), dtype=np.uint8)
        path = tmp_path / f"{i}.{'png' if i % 2 else 'jpg'}"
        path.write_bytes(encode(pixels, "PNG" if i % 2 else "JPEG"))
        paths.append(str(path))
        labels.append(i % 3)
    lat = np.array([10.0 * i if i != 4 else np.nan for i in range(10)])
    lon = np.array([-170.0 + i if i != 4 else np.nan for i in range(10)])
    return GeoDataset(paths=paths, labels=labels, lat=lat, lon=lon, has_location=~np.isnan(lat),
                      dates=[""] * 10, supercategories=[0] * 10, label_names=["a", "b", "c"],
                      supercategory_names=["s"])


def _collect(dataset):
    images, locations, labels = [], [], []
    for x, y in dataset:
        images.append(x["image"].numpy())
        locations.append(x["location"].numpy())
        labels.append(y.numpy())
    return np.concatenate(images), np.concatenate(locations), np.concatenate(labels)


def test_eval_path_is_decode_then_resize_in_row_order(small_dataset):
    ds = make_dataset(small_dataset, (16, 12), batch_size=4, training=False)
    spec = ds.element_spec
    assert spec[0]["image"].dtype == tf.uint8 and spec[0]["location"].dtype == tf.float32
    assert spec[1].dtype == tf.int32
    images, locations, labels = _collect(ds)
    assert images.shape == (10, 16, 12, 3)
    assert labels.tolist() == small_dataset.labels.tolist()
    for i, path in enumerate(small_dataset.paths):
        expected = resize_image(decode_image(open(path, "rb").read()), (16, 12)).numpy()
        np.testing.assert_array_equal(images[i], expected)
    np.testing.assert_allclose(locations, small_dataset.locations.astype(np.float32))
    assert np.isnan(locations[4]).all()  # unknown stays NaN, never (0, 0)
    np.testing.assert_array_equal(_collect(ds)[0], images)  # deterministic


def test_training_path_is_seeded_and_shuffles(small_dataset):
    def run(seed):
        return _collect(make_dataset(small_dataset, 16, batch_size=3, training=True, shuffle_seed=seed))

    a, b, c = run(1), run(1), run(2)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert sorted(a[2].tolist()) == sorted(small_dataset.labels.tolist())
    assert not np.array_equal(a[0], c[0])


def test_repeat_and_drop_remainder(small_dataset):
    ds = make_dataset(small_dataset, 8, batch_size=4, training=True, repeat=True, drop_remainder=True)
    batches = list(ds.take(5))
    assert all(x["image"].shape == (4, 8, 8, 3) for x, _ in batches)


@pytest.mark.parametrize("kwargs, message", [
    ({"batch_size": 0}, "batch_size"),
    ({"batch_size": -1}, "batch_size"),
])
def test_bad_pipeline_arguments(small_dataset, kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_dataset(small_dataset, 8, training=True, **kwargs)


def test_empty_dataset_is_rejected(small_dataset):
    with pytest.raises(ValueError, match="empty"):
        make_dataset(small_dataset.subset([]), 8, 2, training=False)


@pytest.mark.parametrize("training", [False, True])
def test_unreadable_images_are_skipped_counted_and_named(small_dataset, training, caplog):
    """One corrupt file must not end a training run: it is skipped, counted and named in the log;
    the other rows come through unchanged and in order."""
    from trainer.data.pipeline import skipped_images

    paths = small_dataset.paths
    good_jpeg = open(paths[0], "rb").read()
    open(paths[2], "wb").write(good_jpeg[: len(good_jpeg) // 2])  # truncated JPEG
    open(paths[3], "wb").write(b"\x89PNG\r\n\x1a\nnot really")  # broken PNG
    open(paths[5], "wb").write(b"plain text")  # neither format
    import os
    os.unlink(paths[7])  # vanished since the dataset was listed
    broken = {paths[2], paths[3], paths[5], paths[7]}
    before = len(skipped_images())
    with caplog.at_level("WARNING", logger="trainer.data.pipeline"):
        _, _, labels = _collect(make_dataset(small_dataset, (8, 8), 4, training=training, shuffle_seed=3))
    assert len(labels) == 6
    if not training:
        keep = [i for i in range(10) if paths[i] not in broken]
        np.testing.assert_array_equal(labels, small_dataset.labels[keep])
    assert set(skipped_images()[before:]) == broken
    assert all(any(p in message for message in caplog.messages) for p in broken)


def test_unreadable_images_in_tfrecords_are_skipped_and_name_their_shard(small_dataset, tmp_path):
    from trainer.data.pipeline import make_dataset_from_tfrecords, skipped_images
    from trainer.prepare import write_tfrecords

    open(small_dataset.paths[2], "wb").write(b"plain text")
    out = write_tfrecords(small_dataset, tmp_path / "rec", "train", shards=2, progress=False)
    before = len(skipped_images())
    _, _, labels = _collect(make_dataset_from_tfrecords(out, 8, 4, training=False))
    assert len(labels) == 9
    import re
    assert len(skipped_images()) == before + 1 and re.fullmatch(r".*shard-0000\d-of-00002\.tfrecord:\d+", skipped_images()[-1])


def test_prepare_with_resizing_skips_and_lists_unreadable_images(small_dataset, tmp_path):
    from trainer.data.pipeline import read_tfrecord_index
    from trainer.prepare import write_tfrecords

    open(small_dataset.paths[1], "wb").write(b"plain text")
    out = write_tfrecords(small_dataset, tmp_path / "rec", "train", shards=2, image_size=8, progress=False)
    index = read_tfrecord_index(out)
    assert index["skipped_images"] == [small_dataset.paths[1]] and index["num_examples"] == 9
    assert sum(index["counts"]) == 9
