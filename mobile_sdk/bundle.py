"""The bundle: the folder an app ships. File names and manifest schema live here, once.

    model.tflite    the exported model (signature in docs/CONTRACTS.md)
    labels.txt      one label per line, in output order
    whitelist.gwl   the geohash whitelist table (docs/whitelist-format.md), optional
    taxonomy.json   the labels' taxonomy (`mobile_sdk.taxonomy`), optional
    expected_nearby.json  per-label "expected nearby" thresholds (`mobile_sdk.nearby`), optional
    geo.tflite, vision.tflite  the post-processing model's two parts (`mobile_sdk.split_runner`), optional
    manifest.json   see `manifest_for`

The export writes it (`write_labels`, `mobile_sdk.whitelist.builder.write_whitelist`, then `manifest_for`
and `write_manifest` last, inside a temporary folder it renames); the SDK reads it (`open_bundle`).
Both sides apply the same rules (`_check_manifest`, `_label_problems`). A bundle is untrusted
input: it may name only the files above, each a regular file directly inside its folder and
under its size limit (`MAX_BYTES`), and every check runs before the file is read.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from .encoding import ENCODINGS
from .errors import BundleError, BundleIntegrityError, WhitelistTableError
from .runtime import TFLiteModel
from .fileio import atomic_write_bytes, read_regular_file, sha256_file
from .geo_scores import GEO_OBJECTIVES
from .taxonomy import Taxonomy
from .whitelist.codec import label_set_hash
from .whitelist.reader import WhitelistTable

FORMAT_VERSION = 1
MODEL_FILE = "model.tflite"
LABELS_FILE = "labels.txt"
WHITELIST_FILE = "whitelist.gwl"
FUSION_WHITELIST = ("off", "soft", "hard")  # how the whitelist joins the model's output (recommended_fusion)
MANIFEST_FILE = "manifest.json"
TAXONOMY_FILE = "taxonomy.json"
NEARBY_FILE = "expected_nearby.json"
GEO_MODEL_FILE = "geo.tflite"
VISION_MODEL_FILE = "vision.tflite"
OPTIONAL_FILES = (TAXONOMY_FILE, NEARBY_FILE, GEO_MODEL_FILE, VISION_MODEL_FILE)
# Optional manifest sections, each naming the files it needs (checked against `files`).
OPTIONAL_SECTIONS = {"taxonomy": (TAXONOMY_FILE,), "expected_nearby": (), "split_models": (GEO_MODEL_FILE,
                                                                                          VISION_MODEL_FILE)}
MODEL_KINDS = ("image", "postprocess", "featuremod", "geoprior")  # of a bundle and of a training run (trainer.train --model)
QUANTIZATIONS = ("float32", "float16", "dynamic", "int8")
# Size limits of what a bundle may hold: far above any real bundle, far below what hurts a phone.
MAX_BYTES = {MANIFEST_FILE: 4 << 20, LABELS_FILE: 16 << 20, MODEL_FILE: 1 << 30, WHITELIST_FILE: 256 << 20,
             GEO_MODEL_FILE: 1 << 30, VISION_MODEL_FILE: 1 << 30, TAXONOMY_FILE: 64 << 20, NEARBY_FILE: 64 << 20}


def _label_problems(labels) -> list[str]:
    """What the writer refuses and the reader rejects: empty, multi-line, space-padded or repeated names."""
    seen, problems = set(), []
    for label in labels:
        if not label or "\n" in label or "\r" in label or label != label.strip():
            problems.append(f"bad name {label!r}")
        elif label in seen:
            problems.append(f"duplicate {label!r}")
        seen.add(label)
    return problems if labels else ["no labels"]


def write_labels(bundle_dir, labels) -> Path:
    """labels.txt: one label per line, in output order (atomic)."""
    labels = [str(label) for label in labels]
    problems = _label_problems(labels)
    if problems:
        raise ValueError(f"labels must be distinct, non-empty single-line names without surrounding spaces: "
                         f"{problems[:3]}")
    return atomic_write_bytes(Path(bundle_dir) / LABELS_FILE, ("\n".join(labels) + "\n").encode("utf-8"))


def _parse_labels(data: bytes, source) -> list[str]:
    """labels.txt bytes -> names, the exact inverse of write_labels (lines end with \\n only)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BundleError(f"{source}: labels are not UTF-8: {exc}") from None
    if not text.endswith("\n"):
        raise BundleError(f"{source}: labels file is empty or its last line does not end with a newline")
    labels = text[:-1].split("\n")
    problems = _label_problems(labels)
    if problems:
        raise BundleError(f"{source}: labels the writer would refuse: {problems[:3]}")
    return labels


def read_labels(path) -> list[str]:
    path = Path(path)
    return _parse_labels(read_regular_file(path, MAX_BYTES[LABELS_FILE], BundleError, "labels"), path)


def manifest_for(bundle_dir, *, model_kind: str, backbone: str, input_size, num_labels: int, quantization: str,
                 location_encoding: str, outputs, whitelist_radius_miles: float | None = None,
                 whitelist_precision: int | None = None, training: dict | None = None,
                 metrics: dict | None = None, model_version: str | None = None,
                 recommended_fusion: dict | None = None, calibration: dict | None = None,
                 sections: dict | None = None, geo_objective: str | None = None) -> dict:
    """The manifest of a bundle folder whose other files are already written: hashes them all.

    `outputs`: the model's output names; `training`: a JSON-able summary of the training config;
    `metrics`: validation metrics; `model_version` defaults to the first 12 hex digits of the
    model's sha256. Whitelist radius/precision are required iff whitelist.gwl is present.
    `recommended_fusion`: {"whitelist": "off"|"soft"|"hard", "floor": soft factor or None, ...}, the
    combination GeoClassifier applies unless its options say otherwise. `calibration`:
    {"temperature": T, ...}; GeoClassifier divides the model's logits by T.
    `sections`: the optional manifest sections (`OPTIONAL_SECTIONS`) describing optional files.
    `geo_objective`: a geo model's (model_kind geoprior) training objective, which says what its
    logits mean (`mobile_sdk.geo_scores`).
    """
    bundle_dir = Path(bundle_dir)
    if model_kind not in MODEL_KINDS:
        raise ValueError(f"model_kind must be one of {MODEL_KINDS}, got {model_kind!r}")
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization must be one of {QUANTIZATIONS}, got {quantization!r}")
    if location_encoding not in ENCODINGS:
        raise ValueError(f"location_encoding must be one of {ENCODINGS}, got {location_encoding!r}")
    size = [int(s) for s in input_size]
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"input_size must be (height, width) of positive ints, got {input_size!r}")
    if not isinstance(num_labels, int) or num_labels < 1:
        raise ValueError(f"num_labels must be a positive int, got {num_labels!r}")
    outputs = [str(o) for o in outputs]
    if "probabilities" not in outputs:
        raise ValueError(f"outputs must include 'probabilities', got {outputs}")
    files = [MODEL_FILE, LABELS_FILE] + [f for f in (WHITELIST_FILE, *OPTIONAL_FILES) if (bundle_dir / f).exists()]
    missing = [f for f in files if not (bundle_dir / f).is_file()]
    if missing:
        raise ValueError(f"{bundle_dir}: missing {missing}; write them before the manifest")
    whitelist = None
    if WHITELIST_FILE in files:
        if whitelist_radius_miles is None or whitelist_precision is None:
            raise ValueError("whitelist.gwl is present: give whitelist_radius_miles and whitelist_precision")
        whitelist = {"file": WHITELIST_FILE, "radius_miles": float(whitelist_radius_miles),
                     "precision": int(whitelist_precision)}
    hashes = {f: sha256_file(bundle_dir / f) for f in files}
    labels = read_labels(bundle_dir / LABELS_FILE)
    manifest = {
        "format_version": FORMAT_VERSION,
        "model_version": model_version or hashes[MODEL_FILE][:12],
        "model_kind": model_kind,
        "backbone": str(backbone),
        "input_size": size,
        "num_labels": num_labels,
        "quantization": quantization,
        "location_encoding": location_encoding,
        "outputs": outputs,
        "whitelist": whitelist,
        "files": hashes,
        "label_set_sha256": label_set_hash(labels).hex(),  # checked on open even without hashes or a table
        "training": training or {},
        "metrics": metrics or {},
        **(sections or {}),
    }
    if recommended_fusion is not None:
        manifest["recommended_fusion"] = dict(recommended_fusion)
    if calibration is not None:
        manifest["calibration"] = dict(calibration)
    if geo_objective is not None:
        manifest["geo_objective"] = geo_objective
    _check_manifest(manifest, bundle_dir)
    if len(labels) != num_labels:
        raise ValueError(f"{bundle_dir}: {LABELS_FILE} has {len(labels)} labels, num_labels is {num_labels}")
    json.dumps(manifest, allow_nan=False)  # fail here, not in the app, on a non-JSON value
    return manifest


def write_manifest(bundle_dir, manifest: dict) -> Path:
    """Write manifest.json atomically (the last file of a bundle)."""
    _check_manifest(manifest, Path(bundle_dir))
    text = json.dumps(manifest, indent=2, sort_keys=True, allow_nan=False) + "\n"
    return atomic_write_bytes(Path(bundle_dir) / MANIFEST_FILE, text.encode("utf-8"))


def _is_int(value) -> bool:
    return type(value) is int  # not bool, which JSON's true would be


def _check_manifest(m, where) -> None:
    """The manifest rules, applied by the writer and the reader alike (BundleError naming the problem)."""
    def fail(problem):
        raise BundleError(f"{where}: malformed {MANIFEST_FILE}: {problem}")

    if not isinstance(m, dict):
        fail("not a JSON object")
    if not _is_int(m.get("format_version")) or m["format_version"] != FORMAT_VERSION:
        fail(f"format_version {m.get('format_version')!r}, this SDK reads {FORMAT_VERSION}")
    required = {"model_version": str, "model_kind": str, "backbone": str, "input_size": list, "num_labels": int,
                "quantization": str, "location_encoding": str, "outputs": list, "files": dict,
                "label_set_sha256": str, "training": dict, "metrics": dict}
    for key, kind in required.items():
        if not isinstance(m.get(key), kind) or isinstance(m.get(key), bool):
            fail(f"{key!r} missing or not a {kind.__name__}")
    if m["model_kind"] not in MODEL_KINDS or m["quantization"] not in QUANTIZATIONS \
            or m["location_encoding"] not in ENCODINGS:
        fail(f"unknown model_kind/quantization/location_encoding {m['model_kind']!r}/{m['quantization']!r}/"
             f"{m['location_encoding']!r}")
    if not m["model_version"]:
        fail("empty model_version")
    if len(m["input_size"]) != 2 or not all(_is_int(s) and s > 0 for s in m["input_size"]):
        fail(f"input_size {m['input_size']!r}")
    if m["num_labels"] < 1:
        fail(f"num_labels {m['num_labels']!r}")
    if not all(isinstance(o, str) for o in m["outputs"]) or "probabilities" not in m["outputs"]:
        fail(f"outputs {m['outputs']!r} must be names including 'probabilities'")
    if not _is_sha256(m["label_set_sha256"]):
        fail("label_set_sha256 is not a sha256")
    wl = m.get("whitelist")
    if wl is not None:
        if not isinstance(wl, dict) or set(wl) != {"file", "radius_miles", "precision"} \
                or wl.get("file") != WHITELIST_FILE or not _is_int(wl.get("precision")) or wl["precision"] < 1 \
                or isinstance(wl.get("radius_miles"), bool) or not isinstance(wl.get("radius_miles"), (int, float)) \
                or not (math.isfinite(wl["radius_miles"]) and wl["radius_miles"] > 0):
            fail(f"whitelist entry {wl!r}")
    fusion = m.get("recommended_fusion")
    if fusion is not None:
        mode = fusion.get("whitelist") if isinstance(fusion, dict) else None
        floor = fusion.get("floor") if isinstance(fusion, dict) else None
        if mode not in FUSION_WHITELIST or (mode != "off" and wl is None) or (mode == "soft") != (floor is not None) \
                or (floor is not None and (isinstance(floor, bool) or not isinstance(floor, (int, float))
                                           or not 0.0 < floor <= 1.0)):
            fail(f"recommended_fusion {fusion!r} (whitelist off|soft|hard, a soft floor in (0, 1], and a "
                 "whitelist table unless off)")
    calibration = m.get("calibration")
    if calibration is not None:
        t = calibration.get("temperature") if isinstance(calibration, dict) else None
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t <= 0:
            fail(f"calibration {calibration!r} (needs a positive, finite temperature)")
    if "geo_objective" in m and (m["geo_objective"] not in GEO_OBJECTIVES or m["model_kind"] != "geoprior"):
        fail(f"geo_objective {m['geo_objective']!r} (one of {GEO_OBJECTIVES}, for model_kind geoprior only)")
    needed = [MODEL_FILE, LABELS_FILE] + ([WHITELIST_FILE] if wl else [])
    for section, section_files in OPTIONAL_SECTIONS.items():
        if m.get(section) is not None:
            if not isinstance(m[section], dict):
                fail(f"{section!r} must be an object or null")
            named = m[section].get("file")
            if named is not None and named not in OPTIONAL_FILES:
                fail(f"{section!r} names file {named!r}, expected one of {OPTIONAL_FILES}")
            needed += list(section_files) + ([named] if named else [])
    # Only the bundle's own file names: none can point anywhere else (no '..', separator or absolute
    # path), and nothing is looked up on disk for a name the manifest made up.
    known = {MODEL_FILE, LABELS_FILE, WHITELIST_FILE, *OPTIONAL_FILES}
    if not set(m["files"]) <= known or (WHITELIST_FILE in m["files"]) != bool(wl):
        fail(f"files may name only {sorted(known)} (whitelist.gwl iff a whitelist entry), "
             f"got {sorted(map(repr, m['files']))[:8]}")
    for name in needed:
        if not _is_sha256(m["files"].get(name)):
            fail(f"no sha256 for {name}")


def _is_sha256(value) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def _bundle_file(folder: Path, name: str) -> Path:
    """`folder/name` if it is a regular file inside the folder within its size limit, else BundleError.
    A symlink is followed only to a file directly inside the same folder."""
    path = folder / name
    try:
        info = os.lstat(path)
        if stat.S_ISLNK(info.st_mode):
            if path.resolve(strict=True).parent != folder.resolve():
                raise BundleError(f"{folder}: {name} is a link leading out of the bundle folder")
            info = os.stat(path)
    except FileNotFoundError:
        raise BundleError(f"{folder}: {name} is listed in the manifest but missing") from None
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop
        raise BundleError(f"{folder}: cannot read {name}: {exc}") from None
    if not stat.S_ISREG(info.st_mode):
        raise BundleError(f"{folder}: {name} is not a regular file")
    if info.st_size > MAX_BYTES[name]:
        raise BundleError(f"{folder}: {name} is {info.st_size:,} bytes, over the limit of {MAX_BYTES[name]:,}")
    return path


def _read_manifest(folder: Path) -> dict:
    path = folder / MANIFEST_FILE
    if not (path.exists() or path.is_symlink()):
        raise BundleError(f"{folder}: no {MANIFEST_FILE} (an incomplete or interrupted export?)")
    data = read_regular_file(_bundle_file(folder, MANIFEST_FILE), MAX_BYTES[MANIFEST_FILE], BundleError, "manifest")
    try:
        manifest = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # ValueError: JSON errors, huge numbers
        raise BundleError(f"{folder}: unreadable {MANIFEST_FILE}: {str(exc)[:200]}") from None
    _check_manifest(manifest, folder)
    return manifest


def _integrity_error(folder, name):
    raise BundleIntegrityError(f"{folder}: {name} does not match its sha256 in the manifest "
                               "(modified or corrupted after export)")


@dataclass(frozen=True)
class Bundle:
    path: Path
    manifest: dict
    labels: list
    model: TFLiteModel
    whitelist: WhitelistTable | None
    taxonomy: Taxonomy | None = None

    @property
    def model_version(self) -> str:
        return self.manifest["model_version"]

    @property
    def input_size(self) -> tuple[int, int]:
        return self.model.input_size


def open_bundle(path, num_threads: int | None = None, verify_hashes: bool = True) -> Bundle:
    """Open and verify a bundle: manifest schema, every file's sha256, label count, the model's
    signature, and the whitelist table's header, checksum and label set. Raises BundleError,
    BundleIntegrityError, ModelError or WhitelistTableError/LabelSetMismatchError naming the problem."""
    path = Path(path)
    if not path.is_dir():
        raise BundleError(f"bundle {path} is not a folder")
    manifest = _read_manifest(path)
    files = {name: _bundle_file(path, name) for name in manifest["files"]}  # every check before any read

    def read(name):
        data = read_regular_file(files[name], MAX_BYTES[name], BundleError, name)
        if verify_hashes and hashlib.sha256(data).hexdigest() != manifest["files"][name]:
            _integrity_error(path, name)
        return data

    model_bytes = read(MODEL_FILE)
    labels = _parse_labels(read(LABELS_FILE), path / LABELS_FILE)
    for name in sorted(set(files) - {MODEL_FILE, LABELS_FILE}):  # hashed here, read by their own readers
        if verify_hashes and sha256_file(files[name]) != manifest["files"][name]:
            _integrity_error(path, name)
    if len(labels) != manifest["num_labels"]:
        raise BundleError(f"{path}: {LABELS_FILE} has {len(labels)} labels, manifest says {manifest['num_labels']}")
    if label_set_hash(labels).hex() != manifest["label_set_sha256"]:
        raise BundleIntegrityError(f"{path}: {LABELS_FILE} is not the label set the bundle was built for "
                                   "(label_set_sha256 differs)")
    model = TFLiteModel(model_bytes, num_threads=num_threads, source=str(path / MODEL_FILE))
    if list(model.input_size) != manifest["input_size"]:
        raise BundleError(f"{path}: model input size {list(model.input_size)} != manifest {manifest['input_size']}")
    n_out = model.output_shapes["probabilities"][-1]
    if n_out != len(labels):
        raise BundleError(f"{path}: model outputs {n_out} probabilities for {len(labels)} labels")
    whitelist = None
    if manifest["whitelist"] is not None:
        whitelist = WhitelistTable.open(path / WHITELIST_FILE, expected_label_names=labels)
        wl = manifest["whitelist"]
        if whitelist.precision != wl["precision"] or not math.isclose(whitelist.radius_miles, wl["radius_miles"]):
            raise WhitelistTableError(f"{path}: whitelist table (precision {whitelist.precision}, "
                                      f"{whitelist.radius_miles} mi) disagrees with the manifest {wl}")
    taxonomy = Taxonomy.read(path / TAXONOMY_FILE, labels) if manifest.get("taxonomy") else None
    return Bundle(path, manifest, labels, model, whitelist, taxonomy)
