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
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from .encoding import ENCODINGS
from .errors import BundleError, BundleIntegrityError, WhitelistTableError
from .runtime import TFLiteModel
from .fileio import atomic_write_bytes, sha256_file
from .taxonomy import Taxonomy
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
MODEL_KINDS = ("image", "postprocess", "featuremod", "geoprior")
QUANTIZATIONS = ("float32", "float16", "dynamic", "int8")


def write_labels(bundle_dir, labels) -> Path:
    """labels.txt: one label per line, in output order (atomic)."""
    labels = [str(label) for label in labels]
    bad = [label for label in labels if not label or "\n" in label or "\r" in label or label != label.strip()]
    if not labels or bad:
        raise ValueError(f"labels must be non-empty single-line names without surrounding spaces; bad: {bad[:3]}")
    return atomic_write_bytes(Path(bundle_dir) / LABELS_FILE, ("\n".join(labels) + "\n").encode("utf-8"))


def read_labels(path) -> list[str]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise BundleError(f"cannot read labels {path}: {exc}") from None
    return text.splitlines()


def manifest_for(bundle_dir, *, model_kind: str, backbone: str, input_size, num_labels: int, quantization: str,
                 location_encoding: str, outputs, whitelist_radius_miles: float | None = None,
                 whitelist_precision: int | None = None, training: dict | None = None,
                 metrics: dict | None = None, model_version: str | None = None,
                 recommended_fusion: dict | None = None, calibration: dict | None = None,
                 sections: dict | None = None) -> dict:
    """The manifest of a bundle folder whose other files are already written: hashes them all.

    `outputs`: the model's output names; `training`: a JSON-able summary of the training config;
    `metrics`: validation metrics; `model_version` defaults to the first 12 hex digits of the
    model's sha256. Whitelist radius/precision are required iff whitelist.gwl is present.
    `recommended_fusion`: {"whitelist": "off"|"soft"|"hard", "floor": soft factor or None, ...}, the
    combination GeoClassifier applies unless its options say otherwise. `calibration`:
    {"temperature": T, ...}; GeoClassifier divides the model's logits by T.
    `sections`: the optional manifest sections (`OPTIONAL_SECTIONS`) describing optional files.
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
        "training": training or {},
        "metrics": metrics or {},
        **(sections or {}),
    }
    if recommended_fusion is not None:
        manifest["recommended_fusion"] = dict(recommended_fusion)
    if calibration is not None:
        manifest["calibration"] = dict(calibration)
    _check_manifest(manifest, bundle_dir)
    json.dumps(manifest, allow_nan=False)  # fail here, not in the app, on a non-JSON value
    return manifest


def write_manifest(bundle_dir, manifest: dict) -> Path:
    """Write manifest.json atomically (the last file of a bundle)."""
    _check_manifest(manifest, Path(bundle_dir))
    text = json.dumps(manifest, indent=2, sort_keys=True, allow_nan=False) + "\n"
    return atomic_write_bytes(Path(bundle_dir) / MANIFEST_FILE, text.encode("utf-8"))


def _check_manifest(m, where) -> None:
    def fail(problem):
        raise BundleError(f"{where}: malformed {MANIFEST_FILE}: {problem}")

    if not isinstance(m, dict):
        fail("not a JSON object")
    if m.get("format_version") != FORMAT_VERSION:
        fail(f"format_version {m.get('format_version')!r}, this SDK reads {FORMAT_VERSION}")
    required = {"model_version": str, "model_kind": str, "backbone": str, "input_size": list, "num_labels": int,
                "quantization": str, "location_encoding": str, "outputs": list, "files": dict,
                "training": dict, "metrics": dict}
    for key, kind in required.items():
        if not isinstance(m.get(key), kind) or isinstance(m.get(key), bool):
            fail(f"{key!r} missing or not a {kind.__name__}")
    if m["model_kind"] not in MODEL_KINDS or m["quantization"] not in QUANTIZATIONS \
            or m["location_encoding"] not in ENCODINGS:
        fail(f"unknown model_kind/quantization/location_encoding {m['model_kind']!r}/{m['quantization']!r}/"
             f"{m['location_encoding']!r}")
    if len(m["input_size"]) != 2 or not all(isinstance(s, int) and s > 0 for s in m["input_size"]):
        fail(f"input_size {m['input_size']!r}")
    wl = m.get("whitelist")
    if wl is not None:
        if not isinstance(wl, dict) or wl.get("file") != WHITELIST_FILE \
                or not isinstance(wl.get("precision"), int) or not isinstance(wl.get("radius_miles"), (int, float)) \
                or not math.isfinite(wl["radius_miles"]):
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
    needed = [MODEL_FILE, LABELS_FILE] + ([WHITELIST_FILE] if wl else [])
    for section, section_files in OPTIONAL_SECTIONS.items():
        if m.get(section) is not None:
            if not isinstance(m[section], dict):
                fail(f"{section!r} must be an object or null")
            named = m[section].get("file")
            if named is not None and named not in OPTIONAL_FILES:
                fail(f"{section!r} names file {named!r}, expected one of {OPTIONAL_FILES}")
            needed += list(section_files) + ([named] if named else [])
    for name in needed:
        digest = m["files"].get(name)
        if not isinstance(digest, str) or len(digest) != 64:
            fail(f"no sha256 for {name}")


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
    try:
        manifest = json.loads((path / MANIFEST_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BundleError(f"{path}: no {MANIFEST_FILE} (an incomplete or interrupted export?)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{path}: unreadable {MANIFEST_FILE}: {exc}") from None
    _check_manifest(manifest, path)
    for name, expected in manifest["files"].items():
        file = path / name
        if not file.is_file():
            raise BundleError(f"{path}: {name} is listed in the manifest but missing")
        if verify_hashes and sha256_file(file) != expected:
            raise BundleIntegrityError(f"{path}: {name} does not match its sha256 in the manifest "
                                       "(modified or corrupted after export)")
    labels = read_labels(path / LABELS_FILE)
    if len(labels) != manifest["num_labels"]:
        raise BundleError(f"{path}: {LABELS_FILE} has {len(labels)} labels, manifest says {manifest['num_labels']}")
    model = TFLiteModel(path / MODEL_FILE, num_threads=num_threads)
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
