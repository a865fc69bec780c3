"""python -m trainer.prepare: sharded TFRecords, written atomically, read back with the same elements."""
import csv
import io
import json

import numpy as np
import pytest
from PIL import Image

from trainer.data.pipeline import make_dataset, make_dataset_from_tfrecords, read_tfrecord_index
from trainer.data.readers import load_split
from trainer.data.splits import tuning_split
import trainer.prepare as prepare


@pytest.fixture
def manifest(tmp_path):
    rows = [["file", "label", "latitude", "longitude", "supercategory"]]
    for i in range(11):
        pixels = np.random.default_rng(i).integers(0, 256, (18 + i, 22, 3), dtype=np.uint8)
        buf = io.BytesIO()
        exif = Image.Exif()
        exif[0x0112] = i % 8 + 1  # every EXIF orientation: records carry it, or are upright with --image-size
        Image.fromarray(pixels).save(buf, format="PNG" if i % 2 else "JPEG", exif=exif.tobytes())
        (tmp_path / f"{i}.img").write_bytes(buf.getvalue())
        lat, lon = ("", "") if i == 5 else (i * 7.0 - 30, 170.0 + i)  # wraps past the antimeridian
        rows.append([f"{i}.img", ["owl", "fox", "bat"][i % 3], lat, lon, "Aves" if i % 3 == 0 else "Mammalia"])
    with open(tmp_path / "m.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)
    return f"csv:{tmp_path / 'm.csv'}"


def _collect(dataset):
    out = [(x["image"].numpy(), x["location"].numpy(), y.numpy()) for x, y in dataset]
    return [np.concatenate(parts) for parts in zip(*out)]


def _by_location_then_label(images, locations, labels):
    order = np.lexsort((labels, np.nan_to_num(locations[:, 1], nan=999), np.nan_to_num(locations[:, 0], nan=999)))
    return images[order], locations[order], labels[order]


@pytest.mark.parametrize("image_size", [None, 16])
def test_prepare_round_trip_matches_make_dataset(manifest, tmp_path, image_size, capsys):
    args = ["--data", manifest, "--split", "val", "--out", str(tmp_path / "rec"), "--shards", "3"]
    if image_size:
        args += ["--image-size", str(image_size)]
    prepare.main(args)
    split_dir = tmp_path / "rec" / "val"
    index = read_tfrecord_index(split_dir)
    ds = load_split(manifest, "train")
    assert index["num_examples"] == len(ds) == 11
    assert index["label_names"] == ds.label_names == ["bat", "fox", "owl"]
    assert index["supercategory_names"] == ["Aves", "Mammalia"]
    assert index["counts"] == ds.train_counts().tolist()
    assert len(index["shards"]) == 3 and all((split_dir / s).stat().st_size > 0 for s in index["shards"])
    from_records = _collect(make_dataset_from_tfrecords(split_dir, 16, batch_size=4, training=False))
    direct = _collect(make_dataset(ds, 16, batch_size=4, training=False))
    for a, b in zip(_by_location_then_label(*from_records), _by_location_then_label(*direct)):
        np.testing.assert_array_equal(a, b)
    assert np.isnan(from_records[1]).all(axis=1).sum() == 1  # the unknown location stays NaN
    assert "wrote 11 examples" in capsys.readouterr().out


def test_tfrecord_training_path_shuffles_and_repeats(manifest, tmp_path):
    prepare.main(["--data", manifest, "--split", "val", "--out", str(tmp_path / "rec"), "--shards", "2"])
    ds = make_dataset_from_tfrecords(tmp_path / "rec" / "val", 8, batch_size=5, training=True, repeat=True,
                                     shuffle_seed=1, drop_remainder=True)
    labels = np.concatenate([y.numpy() for _, y in ds.take(6)])
    assert len(labels) == 30
    x, _ = next(iter(ds))
    assert x["image"].shape == (5, 8, 8, 3) and x["image"].dtype.name == "uint8"


def test_train_split_holds_out_the_tuning_rows_of_trainer_splits(manifest, tmp_path):
    prepare.main(["--data", manifest, "--out", str(tmp_path / "rec"), "--shards", "2", "--tune-fraction", "0.3"])
    train, tune = (read_tfrecord_index(tmp_path / "rec" / part) for part in ("train", "tune"))
    expected_tune, expected_train = tuning_split(load_split(manifest, "train").labels, 0.3)
    assert (train["num_examples"], tune["num_examples"]) == (len(expected_train), len(expected_tune)) == (8, 3)
    assert tune["tune_fraction"] == 0.3 and train["tune_fraction"] is None
    # Two workers each read their own file of a split: together they read every row once.
    shards = [_collect(make_dataset_from_tfrecords(tmp_path / "rec" / "train", 8, 4, training=False, shard=(2, i)))
              for i in range(2)]
    assert sorted(len(s[2]) for s in shards) == [4, 4]
    with pytest.raises(ValueError, match="at least the worker count"):
        make_dataset_from_tfrecords(tmp_path / "rec" / "train", 8, 4, training=False, shard=(3, 2))


def test_existing_output_needs_force(manifest, tmp_path):
    prepare.main(["--data", manifest, "--out", str(tmp_path / "rec"), "--shards", "1", "--tune-fraction", "0.3"])
    before = (tmp_path / "rec" / "train" / "index.json").read_bytes()
    with pytest.raises(SystemExit) as exc:
        prepare.main(["--data", manifest, "--out", str(tmp_path / "rec"), "--shards", "2", "--tune-fraction", "0.3"])
    assert exc.value.code == 2
    assert (tmp_path / "rec" / "train" / "index.json").read_bytes() == before
    prepare.main(["--data", manifest, "--out", str(tmp_path / "rec"), "--shards", "2", "--tune-fraction", "0.3", "--force"])
    assert len(json.loads((tmp_path / "rec" / "train" / "index.json").read_text())["shards"]) == 2


def test_interrupted_write_leaves_no_split_folder(manifest, tmp_path, monkeypatch):
    real = prepare._example
    calls = {"n": 0}

    def failing(*args):
        calls["n"] += 1
        if calls["n"] == 6:
            raise OSError("disk full")
        return real(*args)

    monkeypatch.setattr(prepare, "_example", failing)
    with pytest.raises(OSError, match="disk full"):
        prepare.write_tfrecords(load_split(manifest, "train"), tmp_path / "rec", "train", shards=2, progress=False)
    assert list((tmp_path / "rec").iterdir()) == []


def test_reader_rejects_folders_without_an_index(tmp_path):
    with pytest.raises(ValueError, match="index.json not found"):
        make_dataset_from_tfrecords(tmp_path, 8, 2, training=False)


def test_bad_spec_is_a_clean_cli_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        prepare.main(["--data", "csv:/no/such.csv", "--out", str(tmp_path)])
    assert exc.value.code == 2 and "not found" in capsys.readouterr().err


def test_force_never_replaces_a_folder_prepare_did_not_write(manifest, tmp_path, capsys):
    split = tmp_path / "rec" / "val"
    split.mkdir(parents=True)
    (split / "thesis.txt").write_text("years of work")
    with pytest.raises(SystemExit) as exc:
        prepare.main(["--data", manifest, "--split", "val", "--out", str(tmp_path / "rec"), "--shards", "1", "--force"])
    assert exc.value.code == 2
    assert "has no index.json, so it was not written by trainer.prepare" in capsys.readouterr().err
    assert [p.name for p in split.iterdir()] == ["thesis.txt"]


def test_records_from_before_the_orientation_feature_are_read_as_stored_with_a_warning(manifest, tmp_path, caplog):
    """An older prepare (index version 1) wrote no `orientation`: its records parse (default 1,
    as stored), and reading the folder warns that it differs from the SDK's upright images."""
    import logging

    prepare.main(["--data", manifest, "--split", "val", "--out", str(tmp_path / "rec")])
    split_dir = tmp_path / "rec" / "val"
    index = json.loads((split_dir / "index.json").read_text())
    assert index["version"] == 2
    with caplog.at_level(logging.WARNING):
        read_tfrecord_index(split_dir)
    assert not caplog.records
    (split_dir / "index.json").write_text(json.dumps({**index, "version": 1}))
    with caplog.at_level(logging.WARNING):
        read_tfrecord_index(split_dir)
    assert "before records carried the EXIF orientation" in caplog.records[-1].getMessage()
