"""Convert any supported dataset split into sharded TFRecords, for iNaturalist-scale input.

    python -m trainer.prepare --data SPEC --split train --out DIR [--shards N] [--image-size H]
                              [--label-names FILE] [--seed N] [--tune-fraction F] [--force]

writes DIR/SPLIT/ atomically (a temp folder renamed into place); `--split train` writes DIR/train/
and DIR/tune/, the held-out tuning rows of trainer.data.splits (`trainer.train --data tfrecords:DIR`):
    shard-00000-of-0000N.tfrecord ...   tf.train.Example records: image (encoded bytes), label,
                                        lat, lon (NaN when unknown), has_location, supercategory,
                                        orientation (the image's EXIF orientation, 1-8)
    index.json                          format, split, label and supercategory names, counts per
                                        label, number of examples, shard file names, image size

Rows are spread over the shards in a seeded random order, so every shard mixes all labels.
Without --image-size the original JPEG/PNG bytes are stored untouched (the training pipeline skips
and names any it cannot decode); with it, each image is decoded and resized by the spec in
trainer.data.pipeline (turned upright by its EXIF orientation first, so orientation is then 1),
then stored as PNG (lossless), and unreadable images are skipped, listed in index.json and named
on stderr.
Read it back with `trainer.data.pipeline.make_dataset_from_tfrecords(DIR/SPLIT, ...)`.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import tensorflow as tf
from tqdm import tqdm

from mobile_sdk.fileio import staged_folder
from mobile_sdk.preprocess import image_orientation

from trainer.data.dataset import DatasetError, GeoDataset
from trainer.data.pipeline import (TFRECORD_FORMAT, TFRECORD_INDEX, TFRECORD_VERSION, decode_image, orient_image,
                                   resize_image)
from trainer.data.readers import load_split
from trainer.data.splits import DEFAULT_TUNE_FRACTION, tuning_split

# Files per split: each worker of multi-worker training reads its own files, so this is the most
# workers a prepared dataset serves (prepare with more --shards for more workers).
DEFAULT_SHARDS = 8


def _example(image_bytes: bytes, orientation: int, label: int, lat: float, lon: float, has_location: bool,
             supercategory: int):
    def floats(v):
        return tf.train.Feature(float_list=tf.train.FloatList(value=[v]))

    def ints(v):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[v]))

    return tf.train.Example(features=tf.train.Features(feature={
        "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[image_bytes])),
        "label": ints(int(label)), "lat": floats(float(lat)), "lon": floats(float(lon)),
        "has_location": ints(int(has_location)), "supercategory": ints(int(supercategory)),
        "orientation": ints(int(orientation)),
    })).SerializeToString()


def write_tfrecords(ds: GeoDataset, out_dir, split: str, shards: int = DEFAULT_SHARDS, image_size: int | None = None,
                    seed: int = 0, force: bool = False, progress: bool = True, tune_fraction: float | None = None) -> Path:
    """Write `ds` as `out_dir/split/` (see module docstring). Returns that folder. `tune_fraction` is
    recorded in the index of a tuning split (what part of train it holds)."""
    if shards < 1:
        raise ValueError(f"shards must be >= 1, got {shards}")
    if image_size is not None and image_size < 1:
        raise ValueError(f"image_size must be >= 1, got {image_size}")
    if len(ds) == 0:
        raise ValueError("the dataset is empty: nothing to write")
    shards = min(shards, len(ds))
    final = Path(out_dir) / split
    with staged_folder(final, marker=TFRECORD_INDEX, force=force, command="trainer.prepare") as tmp:
        names = [f"shard-{i:05d}-of-{shards:05d}.tfrecord" for i in range(shards)]
        order = np.random.default_rng(seed).permutation(len(ds))
        writers = [tf.io.TFRecordWriter(str(tmp / n)) for n in names]
        written, skipped = [], []
        try:
            for row in tqdm(order, desc=f"tfrecords {split}", unit="img", disable=not progress):
                try:
                    data = Path(ds.paths[row]).read_bytes()
                    orientation = image_orientation(data)
                    if image_size is not None:
                        size = (image_size, image_size)
                        upright = orient_image(decode_image(data, size), orientation)
                        data, orientation = tf.io.encode_png(resize_image(upright, size)).numpy(), 1
                except (OSError, tf.errors.OpError):  # unreadable or undecodable: skipped and named
                    skipped.append(str(ds.paths[row]))
                    continue
                writers[len(written) % shards].write(_example(data, orientation, ds.labels[row], ds.lat[row],
                                                              ds.lon[row], ds.has_location[row],
                                                              ds.supercategories[row]))
                written.append(row)
        finally:
            for w in writers:
                w.close()
        if skipped:
            print(f"skipped {len(skipped)} unreadable image(s): {', '.join(skipped[:10])}", file=sys.stderr)
        index = {"format": TFRECORD_FORMAT, "version": TFRECORD_VERSION, "split": split, "num_examples": len(written),
                 "image_size": image_size, "shards": names, "label_names": ds.label_names,
                 "supercategory_names": ds.supercategory_names, "skipped_images": skipped,
                 "counts": np.bincount(ds.labels[written], minlength=ds.num_labels).tolist(),
                 "tune_fraction": tune_fraction}
        (tmp / TFRECORD_INDEX).write_text(json.dumps(index, indent=1) + "\n", encoding="utf-8")
    return final


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m trainer.prepare", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="data SPEC (docs/datasets.md)")
    parser.add_argument("--split", default="train")
    parser.add_argument("--out", required=True, help="output folder; the split goes to OUT/SPLIT/")
    parser.add_argument("--shards", type=int, default=DEFAULT_SHARDS,
                        help="TFRecord files per split; multi-worker training needs at least one per worker")
    parser.add_argument("--tune-fraction", type=float, default=DEFAULT_TUNE_FRACTION,
                        help="with --split train: also write OUT/tune/, this seeded label-stratified part of "
                             "train that trainer.train tunes on (and not OUT/train/)")
    parser.add_argument("--image-size", type=int, default=None, help="resize to HxH (PNG) before writing")
    parser.add_argument("--label-names", help="text file, one label per line: align labels with a training set")
    parser.add_argument("--seed", type=int, default=0, help="seed of the row order across shards")
    parser.add_argument("--force", action="store_true", help="replace an existing OUT/SPLIT")
    args = parser.parse_args(argv)
    try:
        label_names = None
        if args.label_names:
            label_names = [line for line in Path(args.label_names).read_text(encoding="utf-8").splitlines() if line]
        ds = load_split(args.data, args.split, label_names=label_names)
        parts = {args.split: (ds, None)}
        if args.split == "train":
            tune_rows, train_rows = tuning_split(ds.labels, args.tune_fraction)
            parts = {"train": (ds.subset(train_rows), None), "tune": (ds.subset(tune_rows), args.tune_fraction)}
        for name, (rows, fraction) in parts.items():
            out = write_tfrecords(rows, args.out, name, args.shards, args.image_size, args.seed, args.force,
                                  tune_fraction=fraction)
            print(f"wrote {len(rows)} examples of split {name!r} to {out}")
    except (DatasetError, FileExistsError, ValueError, OSError) as exc:
        parser.exit(2, f"error: {exc}\n")


if __name__ == "__main__":
    main()
