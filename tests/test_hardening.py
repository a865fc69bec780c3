"""Bad input, as an attacker or a careless user would give it: every case in one table with the
typed error it must raise, then one test per hardening rule (bundles confined to their folder,
bounded reads, decompression bombs, option types, float PIL images, reader = writer rules, and
the smaller format cases with trainer/SDK parity)."""
import io
import json
import os
import shutil
import struct
import warnings
import zlib
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image, ImageOps

from mobile_sdk import GeoClassifier, GeoClassifierOptions
from mobile_sdk import bundle as bundle_mod
from mobile_sdk import preprocess
from mobile_sdk.__main__ import main as cli_main
from mobile_sdk.errors import (BundleError, BundleIntegrityError, GeoAwareError, InvalidImageError,
                               InvalidLocationError, InvalidOptionsError)
from mobile_sdk.preprocess import load_image, prepare_image
from test_sdk import IMAGE, LABELS, PARIS, SIZE, _write_bundle


class CliRefused(Exception):
    """The CLI exited with status 2 and a one-line message (what it must do on bad input)."""


@pytest.fixture(scope="module")
def ctx(tmp_path_factory, toy_tflite):
    root = tmp_path_factory.mktemp("hardening")
    bundle = _write_bundle(root / "bundle", toy_tflite("postprocess"), "postprocess")
    fifo = root / "fifo"
    os.mkfifo(fifo)
    huge = root / "huge.jpg"
    with open(huge, "wb") as f:  # sparse: over the size limit without using the disk
        f.truncate(preprocess.MAX_IMAGE_BYTES + 1)
    good = root / "good.png"
    Image.fromarray(IMAGE).save(good)

    def cli(argv):
        try:
            code = cli_main([str(a) for a in argv])
        except SystemExit as exc:  # argparse's own refusals
            code = exc.code
        if code == 2:
            raise CliRefused()
        return code

    with GeoClassifier.from_bundle(bundle) as clf:
        yield SimpleNamespace(clf=clf, bundle=bundle, fifo=fifo, huge=huge, good=good, root=root, cli=cli)


def _jpeg(pixels, **kwargs) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", **kwargs)
    return buf.getvalue()


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def jpeg_claiming(width, height) -> bytes:
    """A small JPEG whose frame header claims width x height (a decompression bomb's header)."""
    data = bytearray(_jpeg(np.zeros((8, 8, 3), np.uint8)))
    sof = data.index(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, height, width)
    return bytes(data)


def png_claiming(width, height) -> bytes:
    data = bytearray(_png(Image.new("L", (8, 8))))
    struct.pack_into(">II", data, 16, width, height)
    struct.pack_into(">I", data, 29, zlib.crc32(bytes(data[12:29])))
    return bytes(data)


NOISE = np.random.default_rng(3).integers(0, 256, (40, 40, 3), dtype=np.uint8)
TRUNCATED_JPEG = _jpeg(NOISE)[:300]


def _options(**kwargs):
    return lambda c: GeoClassifierOptions(**kwargs)


def _classify(image, lat=None, lon=None):
    return lambda c: c.clf.classify(image(c) if callable(image) else image, lat, lon)


CASES = [
    # classify: images
    ("classify None", _classify(None), InvalidImageError),
    ("classify int", _classify(5), InvalidImageError),
    ("classify list of lists", _classify([[1, 2], [3, 4]]), InvalidImageError),
    ("classify /dev/zero", _classify("/dev/zero"), InvalidImageError),
    ("classify /dev/urandom", _classify("/dev/urandom"), InvalidImageError),
    ("classify a FIFO", _classify(lambda c: str(c.fifo)), InvalidImageError),
    ("classify a folder", _classify(lambda c: c.root), InvalidImageError),
    ("classify a missing file", _classify(lambda c: c.root / "absent.jpg"), InvalidImageError),
    ("classify a file over the size limit", _classify(lambda c: c.huge), InvalidImageError),
    ("classify empty bytes", _classify(b""), InvalidImageError),
    ("classify garbage bytes", _classify(b"\x00garbage" * 10), InvalidImageError),
    ("classify a truncated JPEG", _classify(TRUNCATED_JPEG), InvalidImageError),
    ("classify a GIF", _classify(lambda c: _gif()), InvalidImageError),
    ("classify a 20000x20000 JPEG bomb", _classify(jpeg_claiming(20000, 20000)), InvalidImageError),
    ("classify a 14000x14000 PNG bomb", _classify(png_claiming(14000, 14000)), InvalidImageError),
    ("classify a 65535x65535 PNG", _classify(png_claiming(65535, 65535)), InvalidImageError),
    ("classify a 4-D array", _classify(np.zeros((1, 4, 4, 3), np.uint8)), InvalidImageError),
    ("classify 2 channels", _classify(np.zeros((4, 4, 2), np.uint8)), InvalidImageError),
    ("classify an empty array", _classify(np.zeros((0, 4, 3), np.uint8)), InvalidImageError),
    ("classify int64 pixels", _classify(np.zeros((4, 4, 3), np.int64)), InvalidImageError),
    ("classify bool pixels", _classify(np.zeros((4, 4, 3), bool)), InvalidImageError),
    ("classify object pixels", _classify(np.full((4, 4, 3), None)), InvalidImageError),
    ("classify float pixels above 1", _classify(np.full((4, 4, 3), 3.0)), InvalidImageError),
    ("classify NaN pixels", _classify(np.full((4, 4, 3), np.nan)), InvalidImageError),
    ("classify a 32-bit PIL image", _classify(Image.new("I", (4, 4))), InvalidImageError),
    ("classify a PIL float image in 0..255", _classify(Image.fromarray(np.full((4, 4), 200.0, np.float32))),
     InvalidImageError),
    # classify: locations
    ("classify lat 10**400", _classify(IMAGE, 10**400, 0), InvalidLocationError),
    ("classify lon -10**400", _classify(IMAGE, 0, -10**400), InvalidLocationError),
    ("classify lat as text", _classify(IMAGE, "48", 2.0), InvalidLocationError),
    ("classify lat NaN", _classify(IMAGE, float("nan"), 2.0), InvalidLocationError),
    ("classify lon inf", _classify(IMAGE, 48.0, float("inf")), InvalidLocationError),
    ("classify lat 91", _classify(IMAGE, 91.0, 2.0), InvalidLocationError),
    ("classify lat only", _classify(IMAGE, 48.0, None), InvalidLocationError),
    ("classify lat True", _classify(IMAGE, True, 2.0), InvalidLocationError),
    ("classify lat complex", _classify(IMAGE, 1 + 2j, 2.0), InvalidLocationError),
    ("classify lat a list", _classify(IMAGE, [48.0], 2.0), InvalidLocationError),
    # classify_batch
    ("batch None", lambda c: c.clf.classify_batch(None), InvalidImageError),
    ("batch an int", lambda c: c.clf.classify_batch(7), InvalidImageError),
    ("batch one path string", lambda c: c.clf.classify_batch(str(c.good)), InvalidImageError),
    ("batch a bad image inside", lambda c: c.clf.classify_batch([IMAGE, b"junk"]), InvalidImageError),
    ("batch locations an int", lambda c: c.clf.classify_batch([IMAGE], 5), InvalidLocationError),
    ("batch fewer locations", lambda c: c.clf.classify_batch([IMAGE, IMAGE], [PARIS]), InvalidLocationError),
    ("batch a 1-tuple location", lambda c: c.clf.classify_batch([IMAGE], [(48.0,)]), InvalidLocationError),
    ("batch a text location", lambda c: c.clf.classify_batch([IMAGE], ["ab"]), InvalidLocationError),
    ("batch an overflowing location", lambda c: c.clf.classify_batch([IMAGE], [(10**400, 0)]),
     InvalidLocationError),
    # species_near
    ("near max_results 0", lambda c: c.clf.species_near(*PARIS, max_results=0), InvalidOptionsError),
    ("near max_results -1", lambda c: c.clf.species_near(*PARIS, max_results=-1), InvalidOptionsError),
    ("near max_results True", lambda c: c.clf.species_near(*PARIS, max_results=True), InvalidOptionsError),
    ("near max_results 2.5", lambda c: c.clf.species_near(*PARIS, max_results=2.5), InvalidOptionsError),
    ("near max_results '3'", lambda c: c.clf.species_near(*PARIS, max_results="3"), InvalidOptionsError),
    ("near no location", lambda c: c.clf.species_near(None, None), InvalidLocationError),
    ("near lat 100", lambda c: c.clf.species_near(100.0, 0.0), InvalidLocationError),
    ("near lat 10**400", lambda c: c.clf.species_near(10**400, 0.0), InvalidLocationError),
    # options
    ("options max_results 0", _options(max_results=0), InvalidOptionsError),
    ("options max_results 2.0", _options(max_results=2.0), InvalidOptionsError),
    ("options max_results True", _options(max_results=True), InvalidOptionsError),
    ("options max_results np.int64(0)", _options(max_results=np.int64(0)), InvalidOptionsError),
    ("options max_results np.bool_", _options(max_results=np.bool_(True)), InvalidOptionsError),
    ("options score_threshold 1.5", _options(score_threshold=1.5), InvalidOptionsError),
    ("options score_threshold -0.1", _options(score_threshold=-0.1), InvalidOptionsError),
    ("options score_threshold NaN", _options(score_threshold=float("nan")), InvalidOptionsError),
    ("options score_threshold text", _options(score_threshold="0.2"), InvalidOptionsError),
    ("options score_threshold True", _options(score_threshold=True), InvalidOptionsError),
    ("options allowlist a string", _options(category_allowlist="abc"), InvalidOptionsError),
    ("options allowlist an int", _options(category_allowlist=5), InvalidOptionsError),
    ("options denylist of ints", _options(category_denylist=[1]), InvalidOptionsError),
    ("options allow and deny", _options(category_allowlist=["a"], category_denylist=["b"]), InvalidOptionsError),
    ("options num_threads 0", _options(num_threads=0), InvalidOptionsError),
    ("options num_threads 1.0", _options(num_threads=1.0), InvalidOptionsError),
    ("options use_whitelist text", _options(use_whitelist="yes"), InvalidOptionsError),
    ("options whitelist_mode unknown", _options(whitelist_mode="medium"), InvalidOptionsError),
    ("options whitelist_mode a list", _options(whitelist_mode=["hard"]), InvalidOptionsError),
    ("options whitelist_floor 0", _options(whitelist_floor=0.0), InvalidOptionsError),
    ("options whitelist_floor 2", _options(whitelist_floor=2.0), InvalidOptionsError),
    ("options whitelist_floor np.float32 NaN", _options(whitelist_floor=np.float32("nan")), InvalidOptionsError),
    ("options bundle_path an int", _options(bundle_path=3), InvalidOptionsError),
    ("options an unknown allowlist label",
     lambda c: GeoClassifier.from_bundle(c.bundle, GeoClassifierOptions(category_allowlist=["nope"])),
     InvalidOptionsError),
    ("options not an options object", lambda c: GeoClassifier.from_bundle(c.bundle, {"max_results": 3}),
     InvalidOptionsError),
    ("create_from_options(None)", lambda c: GeoClassifier.create_from_options(None), InvalidOptionsError),
    ("options without a bundle_path", lambda c: GeoClassifier.create_from_options(GeoClassifierOptions()),
     InvalidOptionsError),
    ("from_bundle a file", lambda c: GeoClassifier.from_bundle(c.good), BundleError),
    ("from_bundle a missing folder", lambda c: GeoClassifier.from_bundle(c.root / "absent"), BundleError),
    # CLI: exit status 2 with a one-line message, never a traceback
    ("cli missing bundle", lambda c: c.cli([c.root / "absent", c.good]), CliRefused),
    ("cli image /dev/zero", lambda c: c.cli([c.bundle, "/dev/zero"]), CliRefused),
    ("cli image a FIFO", lambda c: c.cli([c.bundle, c.fifo]), CliRefused),
    ("cli image over the size limit", lambda c: c.cli([c.bundle, c.huge]), CliRefused),
    ("cli lat only", lambda c: c.cli([c.bundle, c.good, "--lat", "48"]), CliRefused),
    ("cli lat 1e400", lambda c: c.cli([c.bundle, c.good, "--lat", "1e400", "--lon", "0"]), CliRefused),
    ("cli lat not a number", lambda c: c.cli([c.bundle, c.good, "--lat", "north", "--lon", "0"]), CliRefused),
    ("cli top 0", lambda c: c.cli([c.bundle, c.good, "--top", "0"]), CliRefused),
]


def _gif():
    buf = io.BytesIO()
    Image.fromarray(IMAGE).save(buf, "GIF")
    return buf.getvalue()


@pytest.mark.filterwarnings("error::PIL.Image.DecompressionBombWarning")  # the SDK refuses; Pillow keeps quiet
@pytest.mark.parametrize("call,error", [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_bad_input_catalogue(ctx, call, error, capsys):
    with pytest.raises(error):
        call(ctx)
    if error is CliRefused:
        err = capsys.readouterr().err
        assert "Traceback" not in err and err.strip()
    else:
        assert issubclass(error, GeoAwareError)


def test_options_errors_are_value_errors_and_numpy_numbers_are_accepted(ctx):
    with pytest.raises(ValueError):
        GeoClassifierOptions(max_results=0)
    options = GeoClassifierOptions(max_results=np.int64(2), score_threshold=np.float32(0.0),
                                   whitelist_floor=np.float64(0.5), num_threads=np.int32(1), use_whitelist=np.bool_(True))
    assert (type(options.max_results), type(options.score_threshold), type(options.use_whitelist)) == (int, float, bool)
    with GeoClassifier.from_bundle(ctx.bundle, options) as clf:
        assert len(clf.classify(IMAGE, *PARIS).categories) == 2
        assert len(clf.species_near(*PARIS, max_results=np.int64(1)).categories) == 1


# -- bundles: confined to their folder, bounded, validated like the writer ---------------------

@pytest.fixture()
def copy(ctx, tmp_path):
    out = tmp_path / "bundle"
    shutil.copytree(ctx.bundle, out)
    return out


def _manifest(folder):
    return json.loads((folder / bundle_mod.MANIFEST_FILE).read_text())


def _write_manifest_raw(folder, manifest):
    (folder / bundle_mod.MANIFEST_FILE).write_text(json.dumps(manifest))


@pytest.mark.parametrize("name", ["../../../../etc/passwd", "/etc/passwd", "sub/labels.txt", "..", "",
                                  "labels.txt\x00", "extra.bin", "../geo.tflite"])
def test_manifest_names_only_its_own_files_and_no_existence_oracle(copy, name, monkeypatch):
    manifest = _manifest(copy)
    real_hash = bundle_mod.sha256_file("/etc/passwd")
    touched = []
    for fn in ("read_regular_file", "sha256_file"):  # every read of a bundle goes through these
        real = getattr(bundle_mod, fn)
        monkeypatch.setattr(bundle_mod, fn, lambda path, *a, real=real, **k: touched.append(str(path)) or real(path, *a, **k))
    messages = []
    for digest in (real_hash, "0" * 64):  # the real hash, then a wrong one
        manifest["files"][name] = digest
        _write_manifest_raw(copy, manifest)
        with pytest.raises(BundleError, match="files may name only") as exc:
            bundle_mod.open_bundle(copy)
        messages.append(str(exc.value))
    assert messages[0] == messages[1]  # the answer does not depend on what exists out there
    assert all(t.endswith("manifest.json") for t in touched), touched  # nothing but the manifest was read


def test_bundle_files_must_be_regular_files_inside_the_folder(copy, tmp_path):
    (copy / "labels.txt").unlink()
    (copy / "labels.txt").symlink_to("/etc/passwd")
    with pytest.raises(BundleError, match="link leading out of the bundle folder"):
        bundle_mod.open_bundle(copy)
    (copy / "labels.txt").unlink()
    os.mkfifo(copy / "labels.txt")
    with pytest.raises(BundleError, match="labels.txt is not a regular file"):
        bundle_mod.open_bundle(copy)  # refused at once, not blocked on the FIFO
    (copy / "labels.txt").unlink()
    (copy / "labels.txt").mkdir()
    with pytest.raises(BundleError, match="not a regular file"):
        bundle_mod.open_bundle(copy)


def test_a_link_to_a_file_inside_the_folder_is_allowed(copy):
    (copy / "labels.txt").rename(copy / "labels.real")
    (copy / "labels.txt").symlink_to("labels.real")
    assert bundle_mod.open_bundle(copy).labels == LABELS


@pytest.mark.parametrize("target", ["/dev/zero", "fifo"])
def test_manifest_that_is_a_device_or_fifo_is_refused(copy, target):
    (copy / "manifest.json").unlink()
    if target == "fifo":
        os.mkfifo(copy / "manifest.json")
    else:
        (copy / "manifest.json").symlink_to(target)
    with pytest.raises(BundleError):
        bundle_mod.open_bundle(copy)


def test_oversized_bundle_files_are_refused_before_reading(copy, monkeypatch):
    monkeypatch.setitem(bundle_mod.MAX_BYTES, bundle_mod.MODEL_FILE, 1000)
    with pytest.raises(BundleError, match="model.tflite is .* bytes, over the limit of 1,000"):
        bundle_mod.open_bundle(copy)
    monkeypatch.setitem(bundle_mod.MAX_BYTES, bundle_mod.MANIFEST_FILE, 100)
    with pytest.raises(BundleError, match="manifest.json is .* over the limit"):
        bundle_mod.open_bundle(copy)


def test_deeply_nested_manifest_is_a_bundle_error(copy):
    (copy / "manifest.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(BundleError, match="unreadable manifest.json"):
        bundle_mod.open_bundle(copy)


def _rehash(folder, manifest):
    manifest["files"] = {f: bundle_mod.sha256_file(folder / f) for f in manifest["files"]}
    _write_manifest_raw(folder, manifest)


@pytest.mark.parametrize("labels,match", [
    (["paris_a", "paris_a", "both_c", "newyork_d"], "duplicate"),
    (["paris_a", "", "both_c", "newyork_d"], "bad name ''"),
    (["paris_a", " sydney_b", "both_c", "newyork_d"], "bad name ' sydney_b'"),
])
def test_reader_refuses_labels_the_writer_refuses(copy, labels, match):
    with pytest.raises(ValueError):
        bundle_mod.write_labels(copy / "elsewhere", labels)
    (copy / "labels.txt").write_text("\n".join(labels) + "\n")
    _rehash(copy, _manifest(copy))
    with pytest.raises(BundleError, match=match):
        bundle_mod.open_bundle(copy)


@pytest.mark.parametrize("change,match", [
    (dict(format_version=True), "format_version"),
    (dict(outputs=["logits"]), "probabilities"),
    (dict(outputs=[1, "probabilities"]), "outputs"),
    (dict(num_labels=True), "num_labels"),
    (dict(input_size=[True, 32]), "input_size"),
    (dict(model_version=""), "model_version"),
    (dict(label_set_sha256="x"), "label_set_sha256"),
    (dict(whitelist={"file": "whitelist.gwl", "radius_miles": -1.0, "precision": 4}), "whitelist entry"),
    (dict(whitelist={"file": "whitelist.gwl", "radius_miles": 100.0, "precision": True}), "whitelist entry"),
])
def test_reader_applies_the_writers_manifest_rules(copy, change, match):
    manifest = {**_manifest(copy), **change}
    with pytest.raises(BundleError, match=match):
        bundle_mod.write_manifest(copy / "elsewhere", manifest)  # the writer refuses it...
    _write_manifest_raw(copy, manifest)
    with pytest.raises(BundleError, match=match):
        bundle_mod.open_bundle(copy)  # ...and so does the reader


def test_label_set_hash_catches_swapped_labels_without_hashes_or_table(copy):
    manifest = _manifest(copy)
    assert manifest["label_set_sha256"] == __import__("hashlib").sha256("\n".join(LABELS).encode()).hexdigest()
    swapped = [LABELS[1], LABELS[0], *LABELS[2:]]
    (copy / "labels.txt").write_text("\n".join(swapped) + "\n")
    manifest["whitelist"] = None
    del manifest["files"]["whitelist.gwl"]
    _write_manifest_raw(copy, manifest)
    with pytest.raises(BundleIntegrityError, match="label_set_sha256"):
        bundle_mod.open_bundle(copy, verify_hashes=False)


# -- images: limits, float PIL images, byte order, 16-bit grey, draft ---------------------

@pytest.mark.filterwarnings("error::PIL.Image.DecompressionBombWarning")
def test_pixel_limits_refuse_bombs_from_the_header_before_decoding():
    for data in (jpeg_claiming(20000, 20000), png_claiming(14000, 14000)):
        with pytest.raises(InvalidImageError, match="over the limit"):  # not "truncated": nothing was decoded
            load_image(data, SIZE)
    # A 200-megapixel photo (16320 x 12240) is within the header limit and, as a JPEG, is decoded
    # at 1/8 scale for a small model; as a PNG it would be decoded whole, so it is refused.
    with pytest.raises(InvalidImageError, match="over the limit"):
        load_image(png_claiming(16320, 12240), SIZE)
    assert load_image(jpeg_claiming(16320, 12240), SIZE).shape == (1530, 2040, 3)  # libjpeg pads the short scan


def test_mode_f_pil_image_is_handled_like_the_numpy_float_path():
    values = np.random.default_rng(0).random((20, 30)).astype(np.float32)
    ours = load_image(Image.fromarray(values, mode="F"))
    np.testing.assert_array_equal(ours, load_image(values))
    assert abs(float(ours.mean()) - 127.5) < 10  # not PIL's truncation to black


def test_big_endian_arrays_are_accepted():
    values = np.random.default_rng(0).random((6, 7, 3))
    for dtype in (">f4", ">f8", ">f2"):
        np.testing.assert_array_equal(load_image(values.astype(dtype)), load_image(values.astype(dtype[1:])))


@pytest.fixture(scope="module")
def tf_decode():
    pytest.importorskip("tensorflow")
    from trainer.data.pipeline import decode_image, resize_image
    return decode_image, resize_image


def test_16_bit_grey_png_is_its_high_byte_on_both_sides(tf_decode):
    decode_image, _ = tf_decode
    grey = np.random.default_rng(0).integers(0, 65536, (9, 11), dtype=np.uint16)
    data = _png(Image.fromarray(grey))
    ours = load_image(data)
    np.testing.assert_array_equal(ours, np.repeat((grey >> 8).astype(np.uint8)[:, :, None], 3, axis=2))
    np.testing.assert_array_equal(ours, decode_image(data).numpy())


def test_large_jpeg_is_drafted_identically_on_both_sides(tf_decode, tmp_path):
    """draft_ratio picks libjpeg's 1/r scale: PIL's draft and tf.io.decode_jpeg(ratio=r) decode the
    same pixels, so trainer and SDK stay equal while a big photo costs a fraction to decode."""
    decode_image, resize_image = tf_decode
    base = np.random.default_rng(2).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    photo = np.asarray(Image.fromarray(base).resize((600, 400), Image.BILINEAR))
    data = _jpeg(photo, quality=90)
    assert [preprocess.draft_ratio(400, 600, s) for s in [(32, 32), (64, 64), (100, 100), (224, 224)]] == [8, 4, 4, 1]
    for size in [(32, 32), (64, 64), (224, 224)]:
        ratio = preprocess.draft_ratio(400, 600, size)
        ours = load_image(data, size)
        assert ours.shape == (-(-400 // ratio), -(-600 // ratio), 3)
        np.testing.assert_array_equal(ours, decode_image(data, size).numpy())
        np.testing.assert_array_equal(prepare_image(data, size)[0], resize_image(decode_image(data, size), size).numpy())
    # The trainer's eval pipeline does the same from files.
    from trainer.data.pipeline import make_dataset
    from trainer.data.dataset import GeoDataset
    path = tmp_path / "photo.jpg"
    path.write_bytes(data)
    ds = GeoDataset(paths=np.array([str(path)]), labels=np.zeros(1, np.int32), lat=np.array([np.nan]),
                    lon=np.array([np.nan]), has_location=np.zeros(1, bool), dates=np.array([""]),
                    supercategories=np.zeros(1, np.int32), label_names=["a"], supercategory_names=["s"])
    batch, _ = next(iter(make_dataset(ds, SIZE, 1, training=False)))
    np.testing.assert_array_equal(batch["image"].numpy()[0], prepare_image(str(path), SIZE)[0])


def test_pillow_prints_no_bomb_warning_before_the_typed_refusal(capfd):
    """200-400 MP headers make Pillow warn (it raises only above twice its limit); the SDK's own
    check refuses them, so the warning is silenced around the header read, there only."""
    filters = list(warnings.filters)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for data in (jpeg_claiming(15000, 15000), png_claiming(15000, 15000)):  # 225 MP
            with pytest.raises(InvalidImageError, match="over the limit"):
                load_image(data, SIZE)
        assert preprocess.image_orientation(jpeg_claiming(15000, 15000)) == 1
        warnings.warn("the app's own warning", UserWarning)
        with Image.open(io.BytesIO(jpeg_claiming(15000, 15000))):  # the app's own Pillow use still warns
            pass
    assert [w.category for w in caught] == [UserWarning, Image.DecompressionBombWarning]
    assert warnings.filters == filters  # nothing process-global left behind
    assert capfd.readouterr() == ("", "")


# -- EXIF orientation: applied to encoded images, identically on both sides ------------------

STORED = np.random.default_rng(5).integers(0, 256, (30, 50, 3), dtype=np.uint8)  # not square


def _oriented(pixels, fmt, orientation, **kwargs) -> bytes:
    """`pixels` encoded as `fmt` with an EXIF orientation tag (any int: the tag's raw value)."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, fmt, exif=exif.tobytes(), **kwargs)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_exif_orientation_is_applied_as_pil_exif_transpose_does(fmt, tmp_path):
    for orientation in range(1, 9):
        data = _oriented(STORED, fmt, orientation, quality=95)
        with Image.open(io.BytesIO(data)) as image:
            stored = np.asarray(image.convert("RGB"))
            upright = np.asarray(ImageOps.exif_transpose(image).convert("RGB"))
        assert preprocess.image_orientation(data) == orientation
        np.testing.assert_array_equal(load_image(data), upright)
        path = tmp_path / f"o{orientation}.{fmt.lower()}"
        path.write_bytes(data)
        assert preprocess.image_orientation(path) == orientation
        np.testing.assert_array_equal(load_image(path), upright)
        with Image.open(path) as image:  # decoded pixels an app holds are taken as they are
            np.testing.assert_array_equal(load_image(image), stored)
        assert upright.shape[:2] == (STORED.shape[:2] if orientation < 5 else STORED.shape[1::-1])


@pytest.mark.filterwarnings("error")  # Pillow's complaints about the corrupt EXIF are silenced
def test_missing_malformed_or_late_exif_orientation_leaves_pixels_as_stored():
    plain = _png(Image.fromarray(STORED))
    cases = {"none": plain, "0": _oriented(STORED, "PNG", 0), "9": _oriented(STORED, "PNG", 9),
             "garbage": _png_with_chunk(plain, b"eXIf", b"MM\x00*garbage", before=b"IDAT")}
    exif = Image.Exif()
    exif[0x0112] = 6
    cases["after the image data"] = _png_with_chunk(plain, b"eXIf", exif.tobytes(), before=b"IEND")
    for name, data in cases.items():
        assert preprocess.image_orientation(data) == 1, name
        np.testing.assert_array_equal(load_image(data), STORED, err_msg=name)


def _png_with_chunk(png: bytes, kind: bytes, body: bytes, before: bytes) -> bytes:
    at = png.index(before) - 4  # the length field of the first `before` chunk
    chunk = struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    return png[:at] + chunk + png[at:]


def test_mpo_phone_jpegs_are_read_as_their_first_picture():
    buf = io.BytesIO()
    Image.fromarray(STORED).save(buf, "MPO", save_all=True, append_images=[Image.fromarray(STORED[::-1])], quality=95)
    data = buf.getvalue()
    np.testing.assert_array_equal(load_image(data), load_image(_jpeg(STORED, quality=95)))


def test_exif_orientation_is_identical_in_the_trainer_and_the_sdk(tf_decode, tmp_path):
    """All 8 orientations, JPEG and PNG, plus large JPEGs decoded at reduced scale: the training
    pipeline (orientation read when the dataset is indexed, applied in tf.data) and the SDK give
    equal pixels. Draft and orientation commute: the scale depends on min(h, w) only."""
    from trainer.data.dataset import GeoDataset
    from trainer.data.pipeline import make_dataset, orient_image

    decode_image, resize_image = tf_decode
    base = np.random.default_rng(2).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    large = np.asarray(Image.fromarray(base).resize((600, 400), Image.BILINEAR))  # drafted at 1/8 for SIZE
    files = []
    for fmt, pixels in (("JPEG", STORED), ("PNG", STORED), ("JPEG", large)):
        for orientation in range(1, 9):
            data = _oriented(pixels, fmt, orientation, quality=90)
            files.append(tmp_path / f"{len(files)}.{fmt.lower()}")
            files[-1].write_bytes(data)
            eager = orient_image(decode_image(data, SIZE), preprocess.image_orientation(data)).numpy()
            np.testing.assert_array_equal(eager, load_image(data, SIZE))
            if pixels is large:  # drafted, then upright == upright of the drafted stored image
                stored = load_image(_oriented(large, fmt, 1, quality=90), SIZE)
                assert stored.shape == (50, 75, 3)
                np.testing.assert_array_equal(load_image(data, SIZE), preprocess.orient(stored, orientation))
    n = len(files)
    ds = GeoDataset(paths=np.array([str(f) for f in files]), labels=np.zeros(n, np.int32), lat=np.full(n, np.nan),
                    lon=np.full(n, np.nan), has_location=np.zeros(n, bool), dates=np.full(n, ""),
                    supercategories=np.zeros(n, np.int32), label_names=["a"], supercategory_names=["s"])
    assert ds.orientations.tolist() == list(range(1, 9)) * 3
    assert ds.subset([9, 2]).orientations.tolist() == [2, 3]  # read once, kept by subsets
    for outside in (0, 9, -1):  # what a corrupt record could hold: as stored
        np.testing.assert_array_equal(orient_image(STORED, outside).numpy(), STORED)
    batch, _ = next(iter(make_dataset(ds, SIZE, n, training=False)))
    expected = np.stack([prepare_image(str(f), SIZE)[0] for f in files])
    np.testing.assert_array_equal(batch["image"].numpy(), expected)
    assert len({e.tobytes() for e in expected[:8]}) == 8  # the orientations do differ
