"""What the training pipeline's safety machinery costs, measured side by side in one process.

    python -m benchmarks.pipeline [--images 150] [--size 64] [--repeats 7]

On the same photo-like JPEG files (500x375, a quarter of them with an EXIF orientation other than
1), whole passes over the dataset, batch 32, with three pipelines interleaved round by round, so
that the shared machine's load hits them alike:
- plain: read, decode (the draft rule), [augment,] resize, batch, prefetch: no safety machinery;
- no orientation: trainer.data.pipeline.make_dataset with its orientation step made the identity, i.e.
  corrupt images skipped and named (position scan, ignore_errors, gap scan, sentinel) only;
- pipeline: make_dataset as it ships (+ the EXIF orientation: a transpose and a reverse chosen by
  a per-element int).
Both evaluation (training=False) and training (shuffle, augmentation). Wall and CPU time (this
process, all threads) per pass; ratios of medians. Also the one-time cost of reading the
orientations from the file headers (GeoDataset.orientations) against a decoding pass. Prints JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import timing_of

BATCH = 32


def photo_files(folder: Path, count: int, seed: int = 0) -> list[Path]:
    """`count` smooth photo-like 500x375 JPEGs (quality 90); every 4th carries EXIF orientation 6."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    files = []
    for i in range(count):
        small = rng.integers(0, 256, (15, 20, 3), dtype=np.uint8)
        image = Image.fromarray(small).resize((500, 375), Image.BILINEAR)
        exif = Image.Exif()
        exif[0x0112] = 6 if i % 4 == 0 else 1
        files.append(folder / f"{i:04d}.jpg")
        image.save(files[-1], "JPEG", quality=90, exif=exif.tobytes())
    return files


def plain_dataset(ds, size: int, training: bool, seed: int = 0):
    """The same decode/augment/resize per element as make_dataset, without the safety machinery."""
    import tensorflow as tf

    from trainer.data.pipeline import AUTOTUNE, augment_image, decode_image, resize_image

    shape = (size, size)
    elements = tf.data.Dataset.from_tensor_slices((ds.paths, ds.labels.astype(np.int32)))
    if training:
        elements = elements.shuffle(len(ds), seed=seed, reshuffle_each_iteration=True)
    seeds = tf.data.Dataset.random(seed=seed).batch(2)

    def prepare(element, seed_pair):
        path, label = element
        image = decode_image(tf.io.read_file(path), shape)
        if training:
            image = augment_image(image, seed_pair)
        return {"image": resize_image(image, shape)}, label

    return (tf.data.Dataset.zip((elements, seeds)).map(prepare, num_parallel_calls=AUTOTUNE, deterministic=True)
            .batch(BATCH).prefetch(AUTOTUNE))


def measure(images: int = 150, size: int = 64, repeats: int = 7) -> dict:
    from trainer.data import pipeline
    from trainer.data.dataset import GeoDataset

    with tempfile.TemporaryDirectory(prefix="geoaware-pipeline-bench-") as tmp:
        files = photo_files(Path(tmp), images)
        n = len(files)

        def dataset():
            return GeoDataset(paths=np.array([str(f) for f in files]), labels=np.arange(n, dtype=np.int32) % 5,
                              lat=np.full(n, np.nan), lon=np.full(n, np.nan), has_location=np.zeros(n, bool),
                              dates=np.full(n, ""), supercategories=np.zeros(n, np.int32),
                              label_names=list("abcde"), supercategory_names=["s"])

        begin = time.perf_counter()
        orientations = dataset().orientations  # the header pass, once per dataset
        header_s = time.perf_counter() - begin
        assert (orientations == 6).sum() == -(-n // 4)
        ds = dataset()
        ds.orientations  # noqa: B018 - read before timing, as a run reads it once
        results = {}
        for training in (False, True):
            shipped = pipeline.orient_image
            pipeline.orient_image = lambda image, orientation: image  # the graph is built now, without it
            try:
                unoriented = pipeline.make_dataset(ds, size, BATCH, training=training)
            finally:
                pipeline.orient_image = shipped
            variants = {"plain": plain_dataset(ds, size, training),
                        "no orientation": unoriented,
                        "pipeline": pipeline.make_dataset(ds, size, BATCH, training=training)}
            wall = {name: [] for name in variants}
            cpu = {name: [] for name in variants}
            for round_ in range(repeats + 1):  # the first round warms up
                for name, variant in variants.items():
                    w, c = time.perf_counter(), time.process_time()
                    count = sum(int(x["image"].shape[0]) for x, _ in variant)
                    if round_:
                        wall[name].append(time.perf_counter() - w)
                        cpu[name].append(time.process_time() - c)
                    assert count == n, (name, count)
            medians = {name: {"wall_s": timing_of(wall[name]).median, "cpu_s": timing_of(cpu[name]).median}
                       for name in variants}
            mode = "training" if training else "eval"
            results[mode] = {
                "seconds": medians,
                "skip_and_name / plain": {k: medians["no orientation"][k] / medians["plain"][k]
                                          for k in ("wall_s", "cpu_s")},
                "orientation / no orientation": {k: medians["pipeline"][k] / medians["no orientation"][k]
                                                 for k in ("wall_s", "cpu_s")},
                "pipeline / plain": {k: medians["pipeline"][k] / medians["plain"][k] for k in ("wall_s", "cpu_s")},
            }
        decode_pass = results["eval"]["seconds"]["plain"]["wall_s"]
    return {"images": n, "size": size, "repeats": repeats, "load_average": os.getloadavg(),
            "orientation header pass s": header_s, "header pass / eval decoding pass": header_s / decode_pass,
            **results}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.pipeline", description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=150)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)
    out = measure(args.images, args.size, args.repeats)
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
