"""The tf.data input pipeline and THE image preprocessing spec (mirrored in numpy by
mobile_sdk.preprocess; a parity test pins the two together, so keep these names and signatures).

Image spec (docs/CONTRACTS.md "Images"):
1. `decode_image`: JPEG or PNG bytes -> RGB uint8 [h, w, 3]; grayscale is replicated to three
   channels, RGBA drops its alpha channel (no blending against a background), 16-bit keeps the
   high byte. JPEG: accurate integer IDCT (libjpeg ISLOW) and fancy chroma upsampling, i.e.
   exactly PIL's decode; given the model input size, a large JPEG is decoded at 1/2, 1/4 or 1/8
   scale (`mobile_sdk.preprocess.draft_ratio`, libjpeg's DCT scaling, PIL's `draft`), the same on
   both sides. Then `orient_image` turns it upright by the EXIF orientation in the file's header,
   which is read once per dataset, outside the graph (`GeoDataset.orientations`, or the
   `orientation` feature trainer.prepare stores), with the SDK's `image_orientation`.
2. `resize_image`: to (H, W) with bilinear interpolation, half-pixel centres, no antialiasing, no
   crop, no aspect-ratio preservation (`tf.image.resize(..., "bilinear", antialias=False)`),
   computed in float32, then round half to even, clip to [0, 255], cast to uint8. An image that
   already has size (H, W) passes through unchanged.
3. The model receives uint8 [H, W, 3] and scales pixels inside its graph.

Training augmentation (random crop, horizontal flip) is applied between steps 1 and 2, in tf.data
only; the evaluation path is deterministic and is exactly steps 1-2.

An image that cannot be read or decoded is skipped, counted (`skipped_images`) and named in the
log, so one corrupt file cannot end a long run.

Elements of every dataset built here:
    ({"image": uint8 [B, H, W, 3], "location": float32 [B, 2] degrees, NaN = unknown}, label int32 [B])
"""
from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path

import numpy as np
import tensorflow as tf

from mobile_sdk.preprocess import DRAFT_MARGIN, ORIENTATION_STEPS
from trainer.data.dataset import GeoDataset

log = logging.getLogger(__name__)

AUTOTUNE = tf.data.AUTOTUNE
# Random crop: fraction of the image area kept, and the aspect-ratio range of the crop box.
CROP_AREA = (0.6, 1.0)
CROP_ASPECT = (3 / 4, 4 / 3)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TFRECORD_INDEX = "index.json"
TFRECORD_FORMAT = "geoaware-tfrecords"
TFRECORD_VERSION = 2  # 2: records carry the EXIF orientation
TFRECORD_FEATURES = {
    "image": tf.io.FixedLenFeature([], tf.string),
    "label": tf.io.FixedLenFeature([], tf.int64),
    "lat": tf.io.FixedLenFeature([], tf.float32),
    "lon": tf.io.FixedLenFeature([], tf.float32),
    "has_location": tf.io.FixedLenFeature([], tf.int64),
    "supercategory": tf.io.FixedLenFeature([], tf.int64),
    "orientation": tf.io.FixedLenFeature([], tf.int64, default_value=1),  # absent in older records: as stored
}


def _draft_index(data, size):
    """Index into (1, 2, 4, 8) of mobile_sdk.preprocess.draft_ratio for a JPEG and `size`."""
    if size is None:
        return tf.constant(0)
    shape = tf.io.extract_jpeg_shape(data)
    short = tf.minimum(shape[0], shape[1])
    need = DRAFT_MARGIN * max(int(s) for s in size)
    ratios = tf.constant([8, 4, 2])
    fits = tf.math.floordiv(short, ratios) >= need
    return tf.where(tf.reduce_any(fits), 3 - tf.argmax(tf.cast(fits, tf.int32), output_type=tf.int32), 0)


def decode_image(data, size=None) -> tf.Tensor:
    """JPEG/PNG bytes (Python bytes or a scalar string tensor) -> RGB uint8 tensor [h, w, 3].

    Grayscale is replicated to 3 channels; RGBA/grey+alpha drop the alpha channel. JPEG uses libjpeg's accurate integer IDCT with fancy upsampling, which is what PIL
    does, so the SDK's PIL decode gives identical pixels; `size` (the model input (H, W)) lets a
    large JPEG decode at reduced scale exactly as the SDK's draft mode. Works eagerly (`.numpy()`
    the result) and inside tf.data."""
    data = tf.convert_to_tensor(data, tf.string)
    is_png = tf.equal(tf.strings.substr(data, 0, 8), PNG_MAGIC)
    check = tf.debugging.Assert(tf.logical_or(tf.io.is_jpeg(data), is_png), ["image bytes are neither JPEG nor PNG"])
    with tf.control_dependencies([check]):
        data = tf.identity(data)

    def jpeg():
        return tf.switch_case(_draft_index(data, size), [
            lambda r=r: tf.io.decode_jpeg(data, channels=3, ratio=r, dct_method="INTEGER_ACCURATE") for r in (1, 2, 4, 8)])

    image = tf.cond(tf.io.is_jpeg(data), jpeg, lambda: tf.io.decode_png(data, channels=3, dtype=tf.uint8))
    image.set_shape([None, None, 3])
    return image


# ORIENTATION_STEPS as arrays, row = orientation (row 0 and anything outside 1-8: as stored). Numpy,
# not tensors: a tensor made at import starts TensorFlow's runtime, after which
# MultiWorkerMirroredStrategy can no longer configure its collectives (nor logical devices be set).
_STEPS = np.array([(False, False, False)] + [ORIENTATION_STEPS[code] for code in range(1, 9)])
_PERMUTATIONS = np.where(_STEPS[:, :1], [1, 0, 2], [0, 1, 2]).astype(np.int32)
_REVERSED_AXES = _STEPS[:, 1:]


def orient_image(image, orientation) -> tf.Tensor:
    """Stored pixels [h, w, 3] -> upright by an EXIF orientation (int scalar; 1 or anything outside
    1-8 leaves them as stored): mobile_sdk.preprocess.ORIENTATION_STEPS, as the SDK's `orient`.
    No branch: a transpose and a reverse whose permutation and axes are looked up by the
    orientation (identities for 1)."""
    code = tf.cast(orientation, tf.int32)
    code = tf.where((code >= 1) & (code <= 8), code, 0)
    image = tf.transpose(image, tf.gather(_PERMUTATIONS, code))
    image = tf.reverse(image, tf.boolean_mask(tf.range(2), tf.gather(_REVERSED_AXES, code)))
    image.set_shape([None, None, 3])
    return image


def resize_image(image, size) -> tf.Tensor:
    """uint8 [h, w, 3] -> uint8 [H, W, 3], exactly the spec above (size = (H, W))."""
    height, width = int(size[0]), int(size[1])
    image = tf.convert_to_tensor(image)
    if image.dtype != tf.uint8:
        raise ValueError(f"resize_image expects uint8 pixels, got {image.dtype.name}")
    resized = tf.image.resize(tf.cast(image, tf.float32), (height, width), method="bilinear", antialias=False)
    resized = tf.cast(tf.clip_by_value(tf.round(resized), 0.0, 255.0), tf.uint8)
    # Same size: return the input itself so the pass-through is exact by construction.
    same = tf.logical_and(tf.equal(tf.shape(image)[0], height), tf.equal(tf.shape(image)[1], width))
    out = tf.cond(same, lambda: image, lambda: resized)
    out.set_shape([height, width, 3])
    return out


def augment_image(image, seed) -> tf.Tensor:
    """Training only: a random crop (CROP_AREA of the area, CROP_ASPECT ratios), then a random
    horizontal flip. `seed` is a [2] int tensor, so augmentation is reproducible per element."""
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=2)
    begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(image), bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]), seed=seeds[0],
        min_object_covered=0.0, aspect_ratio_range=CROP_ASPECT, area_range=CROP_AREA,
        max_attempts=20, use_image_if_no_bounding_boxes=True)
    image = tf.slice(image, begin, crop_size)
    return tf.image.stateless_random_flip_left_right(image, seed=seeds[1])


def _location(lat, lon, has_location) -> tf.Tensor:
    nan = tf.constant(float("nan"), tf.float32)
    known = tf.cast(has_location, tf.bool)
    return tf.stack([tf.where(known, tf.cast(lat, tf.float32), nan), tf.where(known, tf.cast(lon, tf.float32), nan)])


_skipped: list[str] = []
_skipped_lock = threading.Lock()
# Each element carries the sources of the LAG elements before it, so the elements dropped in a gap
# can be named without keeping anything else: a gap longer than LAG names its last LAG.
LAG = 16
# A decodable 1x1 PNG ending every finite stream: a gap just before it reveals skipped last elements.
_SENTINEL_PNG = (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x00\x00\x00\x00:~\x9bU"
                 b"\x00\x00\x00\nIDATx\x9cc`\x00\x00\x00\x02\x00\x01H\xaf\xa4q\x00\x00\x00\x00IEND\xaeB`\x82")


def skipped_images() -> list[str]:
    """The sources (file paths, or TFRecord shard:record) of images skipped as unreadable so far."""
    with _skipped_lock:
        return list(_skipped)


def _report_skipped(window, gap) -> bool:
    gap = int(gap.numpy())
    names = [s.decode("utf-8", "replace") for s in window.numpy()[-gap:]]
    names += [f"({gap - len(names)} more before these)"] if gap > len(names) else []
    with _skipped_lock:
        _skipped.extend(names)
        count = len(_skipped)
    for name in names:
        log.warning("skipped an unreadable or undecodable image: %s (%d skipped so far)", name, count)
    return True


def _finish(ds: tf.data.Dataset, image_size, batch_size: int, training: bool, shuffle_seed: int,
            drop_remainder: bool, load) -> tf.data.Dataset:
    """(source, data, orientation, location, label) elements -> decoded, upright, augmented,
    resized, batched.

    `load(data)` gives the encoded bytes (reads a path, or is the identity for records). Reading
    and decoding errors drop the element (`ignore_errors`, at full map speed); a scan over stream
    positions finds the gaps and reports the dropped sources (`skipped_images`, the log)."""
    size = (int(image_size[0]), int(image_size[1])) if np.ndim(image_size) else (int(image_size),) * 2
    sentinel = (tf.constant(""), tf.constant(_SENTINEL_PNG), tf.constant(1, tf.int32), tf.fill([2], np.float32(np.nan)),
                tf.constant(0, tf.int32))
    ds = ds.concatenate(tf.data.Dataset.from_tensors(sentinel))

    def track(state, element):  # each element's stream position and the sources of the LAG before it
        position, window = state
        return (position + 1, tf.concat([window[1:], element[:1]], 0)), (position + 1, window, element)

    ds = ds.scan((tf.constant(-1, tf.int64), tf.fill([LAG], "")), track)
    # A seeded stream of per-element seeds keeps augmentation reproducible under parallel map.
    seeds = tf.data.Dataset.random(seed=shuffle_seed).batch(2) if training else \
        tf.data.Dataset.from_tensors(tf.zeros([2], tf.int64)).repeat()
    ds = tf.data.Dataset.zip((ds, seeds))

    def prepare(tracked, seed):
        position, window, (source, data, orientation, location, label) = tracked
        image = decode_image(tf.cond(tf.equal(source, ""), lambda: data, lambda: load(data)), size)
        image = orient_image(image, orientation)
        if training:
            image = augment_image(image, seed)
        return position, window, source, {"image": resize_image(image, size), "location": location}, label

    def find_gap(last, element):
        position, window = element[:2]
        gap = position - last - 1
        reported = tf.cond(gap > 0, lambda: tf.py_function(_report_skipped, [window, gap], tf.bool),
                           lambda: tf.constant(True))
        with tf.control_dependencies([reported]):
            return tf.identity(position), element

    return (ds.map(prepare, num_parallel_calls=AUTOTUNE, deterministic=True)
            .ignore_errors()
            .scan(tf.constant(-1, tf.int64), find_gap)
            .filter(lambda position, window, source, x, y: tf.not_equal(source, ""))
            .batch(batch_size, drop_remainder=drop_remainder)
            .map(lambda position, window, source, x, y: (x, y))
            .prefetch(AUTOTUNE))


def _check_args(batch_size):
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")


def make_dataset(ds: GeoDataset, image_size, batch_size: int, training: bool, shuffle_seed: int = 0,
                 repeat: bool = False, drop_remainder: bool = False,
                 shuffle_buffer: int | None = None) -> tf.data.Dataset:
    """GeoDataset -> tf.data yielding ({"image", "location"}, label) batches (module docstring).

    training=True shuffles (seeded, reshuffled every epoch) and augments; location dropout lives in
    the geo models (trainer.model.layers.LocationDropout). training=False keeps the dataset's row order
    and is deterministic. `image_size` is H or (H, W). `repeat=True` repeats forever."""
    _check_args(batch_size)
    if len(ds) == 0:
        raise ValueError("cannot make a tf.data pipeline from an empty dataset")
    locations = np.where(ds.has_location[:, None], ds.locations, np.nan).astype(np.float32)
    elements = tf.data.Dataset.from_tensor_slices((ds.paths, ds.orientations.astype(np.int32), locations,
                                                   ds.labels.astype(np.int32)))
    if training:
        elements = elements.shuffle(shuffle_buffer or len(ds), seed=shuffle_seed, reshuffle_each_iteration=True)
    if repeat:
        elements = elements.repeat()
    elements = elements.map(lambda path, orientation, loc, label: (path, path, orientation, loc, label))
    return _finish(elements, image_size, batch_size, training, shuffle_seed, drop_remainder, tf.io.read_file)


def read_tfrecord_index(path) -> dict:
    """The index.json of a folder written by `python -m trainer.prepare` (one split)."""
    index_path = Path(path) / TFRECORD_INDEX
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{index_path} not found: is {path} a split folder written by trainer.prepare?") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read {index_path}: {exc}") from None
    if index.get("format") != TFRECORD_FORMAT:
        raise ValueError(f"{index_path}: not a {TFRECORD_FORMAT} index (format={index.get('format')!r})")
    if index.get("version", 1) < 2 and index.get("image_size") is None:
        log.warning("%s was prepared before records carried the EXIF orientation: its images are used as "
                    "stored, not upright as the SDK reads them; prepare it again", path)
    missing = [s for s in index["shards"] if not (Path(path) / s).is_file()]
    if missing:
        raise ValueError(f"{path}: shard(s) listed in the index are missing: {missing}")
    return index


def shard_files(files: list[str], shard: tuple[int, int]) -> list[str]:
    """The files input pipeline `index` of `count` reads (`shard=(count, index)`): every count-th
    from the index-th, so the workers of multi-worker training read disjoint files."""
    count, first = shard
    if not files[first::count]:
        raise ValueError(f"{os.path.dirname(files[0]) if files else 'the dataset'} has {len(files)} TFRecord files, "
                         f"fewer than the {count} input pipelines (workers) reading it: prepare it with --shards "
                         "of at least the worker count")
    return files[first::count]


def make_dataset_from_tfrecords(path, image_size, batch_size: int, training: bool, shuffle_seed: int = 0,
                                repeat: bool = False, drop_remainder: bool = False, shuffle_buffer: int = 10_000,
                                shard: tuple[int, int] = (1, 0)) -> tf.data.Dataset:
    """Like make_dataset, from a split folder written by trainer.prepare (same element structure).

    Training shuffles the shard order and a `shuffle_buffer` of records; evaluation reads the
    shards in order, deterministically. `shard=(count, index)` reads only every count-th file from
    the index-th on: one input pipeline's share in multi-worker training."""
    _check_args(batch_size)
    index = read_tfrecord_index(path)
    files = shard_files([os.path.join(str(path), s) for s in index["shards"]], shard)
    shards = tf.data.Dataset.from_tensor_slices(files)
    if training:
        shards = shards.shuffle(len(files), seed=shuffle_seed, reshuffle_each_iteration=True)
    def numbered(shard):  # source "SHARD:RECORD" names a record that cannot be decoded
        return tf.data.TFRecordDataset(shard).enumerate().map(
            lambda i, r: (tf.strings.join([shard, tf.strings.as_string(i)], ":"), r))

    records = shards.interleave(numbered, cycle_length=min(len(files), 8), num_parallel_calls=AUTOTUNE,
                                deterministic=True)
    if training:
        records = records.shuffle(shuffle_buffer, seed=shuffle_seed, reshuffle_each_iteration=True)
    if repeat:
        records = records.repeat()

    def parse(shard, record):
        f = tf.io.parse_single_example(record, TFRECORD_FEATURES)
        return (shard, f["image"], tf.cast(f["orientation"], tf.int32),
                _location(f["lat"], f["lon"], f["has_location"]), tf.cast(f["label"], tf.int32))

    records = records.map(parse, num_parallel_calls=AUTOTUNE, deterministic=True)
    return _finish(records, image_size, batch_size, training, shuffle_seed, drop_remainder, tf.identity)
