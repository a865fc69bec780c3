"""Performance: what an app pays for geolocation, and what training pays for its input pipeline.

- classify() against the bare LiteRT signature call on the same int8 bundle (ratio), at 224 px
  alpha 1.0 and 64 px alpha 0.35, location known and unknown; on a 1024x768 photo (numpy, and a
  JPEG file against Pillow's decode of it plus the bare call). The bundles are built here from
  untrained 500-label post-processing models and the iNat500 whitelist table;
- geo model (post-processing, feature modulation) against image-only LiteRT latency, at 224 px
  alpha 1.0 and at the demo size, int8 (ratio; weights do not change latency, so untrained
  models of each architecture are converted);
- int8 against float32: file size and top-1 of the same trained run on the same validation rows;
- the whitelist table: bytes vs gzip -9 JSON, build time, single and batched lookup throughput
  (benchmarks.bench_whitelist, owned by the SDK);
- training images/s: the trainer's tf.data input pipeline feeding a model against plain
  model.fit on the same images already decoded in memory (the ceiling for the pipeline), and the
  whole `python -m trainer.train` command against that ceiling (benchmarks.train_ceiling).
"""
from __future__ import annotations

import functools
import os
import time
from pathlib import Path

import numpy as np

from benchmarks.common import Section, Target, interleaved, ratio_target, shown_path
from benchmarks.bench_whitelist import OBSERVATIONS
from trainer.evaluation.metrics import markdown_table

REPO = Path(__file__).resolve().parents[1]
DEMO_SIZE = (64, 0.35)  # image size, alpha of `make demo`
SERVER_SIZE = (224, 1.0)
NUM_LABELS = 500  # as the iNat500 bundles
PHOTO_SHAPE = (768, 1024)  # a phone photo scaled to 1024 px wide


@functools.lru_cache(maxsize=None)
def tflite_bytes(kind: str, image_size: int, alpha: float, num_classes: int = NUM_LABELS, seed: int = 0,
                 encoding: str = "sincos", geo_net: str = "paper") -> bytes:
    """An untrained model of `kind` (its geo net: `encoding`, `geo_net`) converted to int8 TFLite
    (calibrated on random inputs: fine for latency, which does not depend on the weights' values —
    only on which weights are equal: zero-initialised kernels are randomised as training makes them,
    else the converter merges identical layers and times fewer ops than a trained model runs)."""
    import keras

    from converters.export import convert_model, representative_data
    from converters.quantization import QuantizationConfig
    from trainer.model import networks

    keras.utils.set_random_seed(seed)
    image_model = networks.build_image_model(num_classes, image_size=image_size, alpha=alpha)
    if kind == "image":
        model = image_model
    elif kind == "postprocess":
        head = networks.build_geo_head(num_classes, encoding, seed=seed, geo_net=geo_net)
        logits = head.get_layer("geo_logits_dense")
        logits.kernel.assign(np.random.default_rng(seed).normal(0, 0.01, logits.kernel.shape).astype("float32"))
        model = networks.build_postprocess_model(image_model, head)
    else:
        model = networks.build_featuremod_model(image_model, encoding, seed=seed, geo_net=geo_net)
        rng = np.random.default_rng(seed)
        for modulation in networks.modulation_layers(model).values():
            for dense in (modulation.gamma, modulation.beta):
                if dense is not None:
                    dense.kernel.assign(rng.normal(0, 0.01, dense.kernel.shape).astype("float32"))
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (8, image_size, image_size, 3), dtype=np.uint8)
    locations = np.stack([rng.uniform(-60, 70, 8), rng.uniform(-180, 180, 8)], axis=1).astype(np.float32)
    return convert_model(model, QuantizationConfig.for_int8(representative_data(images, locations)))


def signature_call(content: bytes, places=None):
    """The bare LiteRT call an app would make: the serving signature on ready uint8 pixels, at
    (47.4, 8.5), or at each location `places` (an iterator of (lat, lon) or None = unknown) yields."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=content, num_threads=1)
    runner = interpreter.get_signature_runner("serving_default")
    details = runner.get_input_details()["image"]
    image = np.random.default_rng(0).integers(0, 256, details["shape"], dtype=np.uint8)
    if places is None:
        location = np.array([[47.4, 8.5]], np.float32)
        return lambda: runner(image=image, location=location)
    as_input = lambda place: np.array([place or (np.nan, np.nan)], np.float32)  # noqa: E731
    return lambda: runner(image=image, location=as_input(next(places)))


def enough_repeats(fn, minimum: int, seconds: float = 3.0, cap: int = 3000) -> int:
    """At least `minimum` repeats, more for fast calls, so each median rests on ~`seconds` of samples."""
    begin = time.perf_counter()
    fn()
    return int(min(cap, max(minimum, seconds / max(time.perf_counter() - begin, 1e-6))))


def cpu_and_wall(calls: dict, repeats: int, warmup: int):
    """Interleaved medians twice: by this thread's CPU time (the verdict: LiteRT with one thread and
    Pillow run on the calling thread, so its CPU time is the latency an idle machine shows; process
    time would also count TensorFlow's idle pool threads left by the conversions) and by wall time."""
    cpu = interleaved(calls, repeats=repeats, warmup=warmup, clock=time.thread_time)
    return cpu, interleaved(calls, repeats=repeats, warmup=1)


def ratio_cells(t, wall, base, wall_base) -> list[str]:
    """Table cells: CPU-time median (wall median) and the ratio by each."""
    return [f"{t.median * 1e3:.3f} ms ({wall.median * 1e3:.3f} ms wall, n={t.repeats})",
            f"{t.median / base:.3f}x ({wall.median / wall_base:.3f}x wall)"]


def latency_ratios(repeats: int, sizes):
    rows, targets = [], []
    for image_size, alpha in sizes:
        calls = {kind: signature_call(tflite_bytes(kind, image_size, alpha, num_classes=NUM_LABELS))
                 for kind in ("image", "postprocess", "featuremod")}
        timings, wall = cpu_and_wall(calls, enough_repeats(calls["image"], repeats), warmup=3)
        base = timings["image"].median
        for kind, t in timings.items():
            rows.append([f"{image_size} px, alpha {alpha}", kind, *ratio_cells(t, wall[kind], base, wall["image"].median)])
        for kind in ("postprocess", "featuremod"):
            why = ("feature modulation adds, per modulated block, an int8 FULLY_CONNECTED (geo features -> "
                   "channels), an int8 MUL (the known gate) and a broadcast int8 ADD into the feature map (14 "
                   "blocks), after the float location front end and geo MLP; the int8 graph has no "
                   "QUANTIZE/DEQUANTIZE around the Adds (one QUANTIZE after the float first geo layer, one for "
                   "the known flag). A model with one modulated block costs 1.07-1.13x, so the front end alone "
                   "is over the limit. One Dense for all 14 blocks (one FC, one gate, 14 slices; the converter "
                   "keeps a RESHAPE per slice) measured 1.25-1.30x against 1.28-1.31x unfused over 5 "
                   "interleaved rounds (3-4% less in each): the op count barely changes. Fewer modulated blocks would cut the "
                   "cost; not tried, as it needs an accuracy comparison by training") if kind == "featuremod" else (
                "the geo MLP (256-128-128 + logits) is a fixed cost, large next to a small image network")
            key = "featuremod_vs_image_latency_64_int8" if (kind, (image_size, alpha)) == ("featuremod", DEMO_SIZE) else None
            targets.append(ratio_target(f"{kind} ≤ 1.05x image-only latency at {image_size} px alpha {alpha}",
                                        timings[kind].median, base, 1.05,
                                        f"{kind}/image-only int8 invoke, CPU time "
                                        f"({wall[kind].median / wall['image'].median:.3f}x wall){load_note()}", why, key=key))
    table = markdown_table(["model size", "model (int8, untrained weights)", "median CPU time per image",
                            "vs image-only"], rows)
    return table, targets


def load_note() -> str:
    """The 1-minute load average, stated next to each ratio (the machine may be shared)."""
    return f" (load avg {os.getloadavg()[0]:.1f})" if hasattr(os, "getloadavg") else ""


def inat500_table(work: Path, points: int = 100, seed: int = 0):
    """(label names, whitelist table path, `points` observation locations drawn at random) of the
    iNat500 observations (table: 100 miles, precision 4, as the export writes it), or None when the
    shared data file is absent."""
    from mobile_sdk.whitelist.builder import write_whitelist

    if not OBSERVATIONS.exists():
        return None
    data = np.load(OBSERVATIONS)
    ids, labels = np.unique(data["train_ids"], return_inverse=True)
    names = [str(n) for n in data["taxon_names"]][:len(ids)]
    locs = data["train_locs"].astype(np.float64)
    path = write_whitelist(work / "inat500.gwl", locs[:, 0], locs[:, 1], labels, len(names), 100.0, 4, names)
    drawn = locs[np.random.default_rng(seed).choice(len(locs), points, replace=False)]
    return names, path, [(float(lat), float(lon)) for lat, lon in drawn]


def sdk_bundle(work: Path, image_size: int, alpha: float, names, table: Path) -> Path:
    """A 500-label int8 post-processing bundle (untrained weights) with the real whitelist table."""
    import shutil

    from mobile_sdk import bundle

    folder = work / f"bundle-{image_size}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    (folder / bundle.MODEL_FILE).write_bytes(tflite_bytes("postprocess", image_size, alpha, num_classes=len(names)))
    shutil.copy(table, folder / bundle.WHITELIST_FILE)
    bundle.write_labels(folder, names)
    bundle.write_manifest(folder, bundle.manifest_for(
        folder, model_kind="postprocess", backbone="mobilenet_v2", input_size=(image_size, image_size),
        num_labels=len(names), quantization="int8", location_encoding="sincos",
        outputs=["probabilities", "logits", "vision_logits", "geo_logits"], whitelist_radius_miles=100.0,
        whitelist_precision=4))
    return folder


def photo(seed: int = 0) -> np.ndarray:
    """A 1024x768 photo stand-in: smooth gradients plus sensor-like noise (JPEG-compresses like one)."""
    height, width = PHOTO_SHAPE
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([xx * 255.0 / (width - 1), yy * 255.0 / (height - 1), (xx + yy) % 97 * 2.6], -1)
    return np.clip(base + np.random.default_rng(seed).normal(0, 12, base.shape), 0, 255).astype(np.uint8)


def classify_ratios(work: Path, repeats: int, quick: bool):
    """classify(...) against the bare signature call, interleaved in one process. Each classify call
    also reads the top category, as an app does. Known locations take 100 observation points in
    turn; the warm-up visits each once, so the table is warm as in an app that has been in the area
    (a cold lookup is the whitelist rows' first-lookup time)."""
    import itertools

    from PIL import Image

    from mobile_sdk import GeoClassifier, GeoClassifierOptions
    from mobile_sdk.preprocess import resize_image

    found = inat500_table(work)
    if found is None:
        missing = f"no {OBSERVATIONS.name} (the shared iNat500 observations)"
        keys = ("classify_vs_bare_224_int8", "classify_vs_bare_64_int8", "classify_photo_vs_bare_224_int8",
                "classify_jpeg_vs_decode_plus_bare_224_int8")
        return f"Skipped: {missing}.", [Target(k, None, missing, key=k) for k in keys]
    names, table, points = found
    # Every call walks the same points in the same order: the invoke's own cost varies a little with
    # the location (the float geo network), so each classify is compared with the bare call on the
    # same inputs (location unknown: NaN in both).
    places = lambda: itertools.cycle(points)  # noqa: E731
    image_photo = photo()
    jpeg = work / "photo.jpg"
    Image.fromarray(image_photo).save(jpeg, quality=90)

    def decode():  # what any app pays to get pixels from the file: Pillow's plain decode
        with Image.open(jpeg) as opened:
            opened.load()

    rows, targets = [], []
    for image_size, alpha in [DEMO_SIZE] if quick else [DEMO_SIZE, SERVER_SIZE]:
        folder = sdk_bundle(work, image_size, alpha, names, table)
        classifier = GeoClassifier.from_bundle(folder, GeoClassifierOptions(num_threads=1))
        pixels = np.random.default_rng(0).integers(0, 256, (image_size, image_size, 3), dtype=np.uint8)
        content = (folder / "model.tflite").read_bytes()
        known_places, photo_places, jpeg_places = places(), places(), places()
        calls = {"bare LiteRT signature call": signature_call(content, places()),
                 "bare LiteRT signature call, location unknown": signature_call(content, itertools.repeat(None)),
                 "classify(pixels), location known": lambda: classifier.classify(pixels, *next(known_places)).categories[0],
                 "classify(pixels), location unknown": lambda: classifier.classify(pixels).categories[0]}
        if (image_size, alpha) == SERVER_SIZE:
            calls.update({
                "classify(1024x768 numpy photo)": lambda: classifier.classify(image_photo, *next(photo_places)).categories[0],
                "classify(JPEG file)": lambda: classifier.classify(jpeg, *next(jpeg_places)).categories[0],
                "Pillow decode of the JPEG": decode,
                "resize_image of the numpy photo alone": lambda: resize_image(image_photo, (image_size, image_size))})
        timings, wall = cpu_and_wall(calls, enough_repeats(calls["bare LiteRT signature call"], repeats),
                                     warmup=len(points))
        load = load_note()
        classifier.close()
        bare, wall_bare = timings["bare LiteRT signature call"], wall["bare LiteRT signature call"].median
        rows += [[f"{image_size} px, alpha {alpha}", name, *ratio_cells(t, wall[name], bare.median, wall_bare)]
                 for name, t in timings.items()]
        bare_unknown = timings["bare LiteRT signature call, location unknown"].median
        known, unknown = (timings[f"classify(pixels), location {k}"].median for k in ("known", "unknown"))
        limit = 1.05 if (image_size, alpha) == SERVER_SIZE else 1.25
        worst, base = max((known, bare.median), (unknown, bare_unknown), key=lambda pair: pair[0] / pair[1])
        targets.append(ratio_target(
            f"classify(pixels at input size) ≤ {limit}x bare invoke, {image_size} px alpha {alpha} int8",
            worst, base, limit,
            f"classify/bare on the same locations, by CPU time, the worse of location known "
            f"{known / bare.median:.3f}x and unknown {unknown / bare_unknown:.3f}x{load}",
            f"classify adds {(worst - base) * 1e6:.0f} µs (validation, whitelist lookup, scoring) to a "
            f"{base * 1e3:.2f} ms invoke", key=f"classify_vs_bare_{image_size}_int8"))
        if (image_size, alpha) == SERVER_SIZE:
            resized = timings["resize_image of the numpy photo alone"].median
            targets.append(ratio_target(
                "classify(1024x768 numpy photo) ≤ 1.25x bare invoke, 224 px alpha 1.0 int8",
                timings["classify(1024x768 numpy photo)"].median, bare.median, 1.25, f"classify/bare by CPU time{load}",
                f"the bilinear resize to 224x224 in numpy (four gathers of 150,528 bytes, nine float32 passes) takes "
                f"{resized * 1e3:.2f} ms alone, and it evicts the model's weights from the caches the invoke then "
                "misses", key="classify_photo_vs_bare_224_int8"))
            decoded = timings["Pillow decode of the JPEG"].median
            targets.append(ratio_target(
                "classify(JPEG file) ≤ 1.15x (Pillow decode + bare invoke), 224 px alpha 1.0 int8",
                timings["classify(JPEG file)"].median, decoded + bare.median, 1.15,
                f"classify/(decode + bare) by CPU time, decode {decoded * 1e3:.2f} ms{load}",
                "reading the file, the copy out of Pillow and the resize of the 512x384 image libjpeg decodes at 1/2 "
                "(the draft rule, docs/CONTRACTS.md)", key="classify_jpeg_vs_decode_plus_bare_224_int8"))
    table_md = markdown_table(["bundle (int8, 500 labels, untrained)", "call", "median CPU time", "vs bare"], rows)
    return table_md, targets


def find_trained_run(*candidates: Path) -> Path | None:
    """The first post-processing run that exists (bench accuracy section, else `make demo`'s)."""
    for root in candidates:
        run = root / "runs" / "postprocess"
        if (run / "model.keras").exists() and (root / "world" / "val.json").exists():
            return root
    return None


def export_pair(root: Path, work: Path, verify_samples: int) -> dict:
    """Export the trained post-processing run as float32 and int8 bundles; verification runs both
    on the same seeded validation rows, so their accuracies compare like with like."""
    from converters.export import export_bundle

    manifests = {}
    for mode in ("float32", "int8"):
        manifests[mode] = export_bundle(str(root / "runs" / "postprocess"), work / f"bundle-{mode}", mode,
                                        data=str(root / "world"), force=True, verify_samples=verify_samples)
    return manifests


def training_throughput(root: Path, steps: int, batch_size: int = 32, image_size: int = 64, alpha: float = 0.35):
    """images/s of the trainer's input pipeline feeding model.fit vs in-memory arrays, same model
    and steps, each after one untimed warm-up epoch (tracing)."""
    import keras

    from trainer.model import networks
    from trainer.training.config import TrainConfig
    from trainer.training.inputs import load_splits

    config = TrainConfig(data=str(root / "world"), image_size=image_size, alpha=alpha, batch_size=batch_size)
    splits = load_splits(config)
    x_images, x_locations, y = [], [], []
    train = splits.dataset("train", batch_size, training=True)
    for features, labels in train.take(steps):
        x_images.append(features["image"].numpy())
        x_locations.append(features["location"].numpy())
        y.append(labels.numpy())
    arrays = ({"image": np.concatenate(x_images), "location": np.concatenate(x_locations)}, np.concatenate(y))

    def fit_seconds(fit):
        keras.utils.set_random_seed(0)
        image_model = networks.build_image_model(len(splits.labels), image_size=image_size, alpha=alpha)
        model = keras.Model(image_model.input, image_model.output["logits"])  # as trainer.train fits it
        model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        fit(model, 1)  # warm-up: tracing and first-epoch costs
        begin = time.perf_counter()
        fit(model, 1)
        return time.perf_counter() - begin

    pipeline = fit_seconds(lambda m, e: m.fit(train, steps_per_epoch=steps, epochs=e, verbose=0))
    memory = fit_seconds(lambda m, e: m.fit(*arrays, batch_size=batch_size, epochs=e, shuffle=True, verbose=0))
    images = steps * batch_size
    return images / pipeline, images / memory


def run(work: Path, repeats: int = 50, quick: bool = False, accuracy_dir: Path | None = None) -> Section:
    begin = time.monotonic()
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    parts, targets = [], []

    sizes = [DEMO_SIZE] if quick else [SERVER_SIZE, DEMO_SIZE]
    table, latency_targets = latency_ratios(max(5, repeats // 2) if not quick else repeats, sizes)
    parts += ["### Geo model vs image-only latency (LiteRT, 1 thread, batch 1, interleaved)", "", table]
    targets += latency_targets

    table, classify_targets = classify_ratios(work, repeats, quick)
    parts += ["", "### classify() vs the bare LiteRT call (LiteRT, 1 thread, interleaved)", "",
              "Each classify call also reads the top category, as an app does. Location known: 100 "
              "iNat500 observation points in turn (inside the whitelist table, so the hard whitelist "
              "filters), each looked up once in the warm-up. Verdicts use CPU time (LiteRT runs on the calling "
              "thread, so it is what an idle machine shows); wall time, inflated by the shared machine's load, "
              "is in brackets. The bare call is the LiteRT signature runner an app would call (it resizes and "
              "re-allocates its inputs on every call); classify runs the same interpreter through its tensors, "
              "allocated once (`mobile_sdk.runtime`).", "", table]
    targets += classify_targets

    root = find_trained_run(*[p for p in (accuracy_dir, REPO / "out" / "demo") if p is not None])
    if root is None:
        parts += ["", "### Trained-model benchmarks", "",
                  "Skipped: no trained post-processing run found (run `make demo` or the accuracy section)."]
        targets += [Target("int8 top-1 within 1 point of float", None, "no trained run"),
                    Target("int8 file ≤ 0.3x float", None, "no trained run"),
                    Target("trainer.train ≥ 0.9x the images/s of a bare in-memory model.fit", None, "no world",
                           key="train_cli_vs_fit_ceiling")]
    else:
        manifests = export_pair(root, work, verify_samples=64 if quick else 1000)
        v = {m: manifests[m]["metrics"]["verification"] for m in manifests}
        acc = {m: v[m]["located"]["tflite_top1_accuracy"] for m in v}
        size = {m: v[m]["file_bytes"] for m in v}
        parts += ["", f"### int8 vs float32 (post-processing run in `{shown_path(root)}`, {v['int8']['samples']} validation images)", "",
                  markdown_table(["quantization", "file bytes", "LiteRT top-1", "Keras top-1", "top-1 agreement with Keras"],
                                 [[m, f"{size[m]:,}", f"{100 * acc[m]:.1f}%",
                                   f"{100 * v[m]['located']['keras_top1_accuracy']:.1f}%",
                                   f"{100 * v[m]['located']['top1_agreement']:.1f}%"] for m in ("float32", "int8")])]
        drop = 100 * (acc["float32"] - acc["int8"])
        targets.append(Target("int8 top-1 within 1 point of float", drop <= 1.0,
                              f"float32 {100 * acc['float32']:.1f}% vs int8 {100 * acc['int8']:.1f}% ({-drop:+.1f} points)"))
        beyond = size["int8"] - size["float32"] / 4  # bytes beyond one byte per float32 weight
        targets.append(ratio_target("int8 file ≤ 0.3x float", size["int8"], size["float32"], 0.3, "int8/float32 bytes",
                                    f"the int8 file holds {beyond / 1024:.0f} KiB beyond one byte per weight "
                                    "(graph, per-channel scales and zero points, the float32 location front end "
                                    f"— not broken down further); at alpha 0.35 that is {beyond / size['int8']:.0%} "
                                    "of the file"))
        pipeline, memory = training_throughput(root, steps=8 if quick else 40)
        parts += ["", "### Training throughput (image-only MobileNet V2, 64 px, alpha 0.35, batch 32)", "",
                  markdown_table(["input", "images/s"], [["trainer tf.data pipeline (decode, augment)", f"{pipeline:.0f}"],
                                                         ["in-memory arrays (plain model.fit)", f"{memory:.0f}"]]),
                  "", f"Pipeline / in-memory = {pipeline / memory:.2f}x (measured one after the other on a shared "
                      "machine). Above 1 means the input pipeline is not the bottleneck: both are bound by the "
                      "model's compute, and Keras slices numpy arrays per batch on the Python side."]
        from benchmarks import train_ceiling

        ceiling = train_ceiling.section(root / "world", rows=300 if quick else 2400, epochs=3 if quick else 5,
                                        work=work)
        parts += ["", f"### {ceiling.title}", "", ceiling.body]
        targets += ceiling.targets

    from benchmarks import bench_whitelist

    whitelist = bench_whitelist.section(**({"repeats": 1, "queries": 1000} if quick else {}))
    parts += ["", f"### {whitelist.title}", "", whitelist.body]
    targets += whitelist.targets
    return Section("Performance", "\n".join(parts), targets, time.monotonic() - begin)
