"""Readers and the columnar GeoDataset, on small fixtures of each format written here (bad rows included)."""
import csv
import io
import json
import logging

import numpy as np
import pytest
from PIL import Image

from trainer.data.csv_tables import read_csv_manifest, read_yfcc
from trainer.data.dataset import DatasetError, GeoDataset
from trainer.data.inat import read_inat2017, read_inat2021
from trainer.data.readers import load_split


def write_image(path, fmt="JPEG", size=(12, 10)):
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (*size, 3), dtype=np.uint8)).save(buf, format=fmt)
    path.write_bytes(buf.getvalue())
    return path


CATEGORIES = [{"id": 7, "name": "Picus viridis", "supercategory": "Aves"},
              {"id": 3, "name": "Picus canus", "supercategory": "Aves"},
              {"id": 9, "name": "Bombus terrestris", "supercategory": "Insecta"}]


@pytest.fixture
def inat2021(tmp_path):
    for name in ("a.jpg", "b.png", "c.jpg", "d.jpg", "f.jpg", "g.jpg"):
        write_image(tmp_path / "train" / name, "PNG" if name.endswith("png") else "JPEG")
    (tmp_path / "train" / "bad.jpg").write_bytes(b"not an image at all")
    images = [
        {"id": 1, "file_name": "train/a.jpg", "latitude": 51.5, "longitude": -0.1, "date": "2019-05-01"},
        {"id": 2, "file_name": "train/b.png", "latitude": None, "longitude": None},  # unknown: kept, NaN
        {"id": 3, "file_name": "train/c.jpg", "latitude": 10.0, "longitude": 190.0},  # wraps to -170
        {"id": 4, "file_name": "train/d.jpg", "latitude": 95.0, "longitude": 0.0},  # invalid latitude
        {"id": 5, "file_name": "train/missing.jpg", "latitude": 1.0, "longitude": 1.0},  # missing file
        {"id": 6, "file_name": "train/bad.jpg", "latitude": 1.0, "longitude": 1.0},  # unreadable
        {"id": 7, "file_name": "train/f.jpg", "latitude": 1.0, "longitude": 1.0},  # unknown category
        {"id": 8, "file_name": "train/g.jpg", "latitude": 0.0, "longitude": 0.0},  # (0, 0) is a real place
    ]
    annotations = [{"image_id": i, "category_id": c} for i, c in [(1, 7), (2, 3), (3, 9), (4, 7), (5, 7), (6, 7),
                                                                   (7, 42), (8, 3)]]
    (tmp_path / "train.json").write_text(json.dumps({"images": images, "annotations": annotations,
                                                     "categories": CATEGORIES}))
    return tmp_path


def test_inat2021_reader_keeps_good_rows_and_counts_bad_ones(inat2021, caplog):
    with caplog.at_level(logging.INFO, logger="trainer.data.rows"):
        ds = read_inat2021(inat2021 / "train.json")
    # Categories sorted by id: 3 canus, 7 viridis, 9 terrestris.
    assert ds.label_names == ["Picus canus", "Picus viridis", "Bombus terrestris"]
    assert ds.supercategory_names == ["Aves", "Insecta"]
    assert [p.rsplit("/", 1)[1] for p in ds.paths] == ["a.jpg", "b.png", "c.jpg", "g.jpg"]
    assert ds.labels.tolist() == [1, 0, 2, 0]
    assert ds.supercategories.tolist() == [0, 0, 1, 0]
    assert ds.has_location.tolist() == [True, False, True, True]
    np.testing.assert_allclose(ds.locations[[0, 2, 3]], [[51.5, -0.1], [10.0, -170.0], [0.0, 0.0]], atol=1e-12)
    assert np.isnan(ds.locations[1]).all()
    assert ds.dates.tolist() == ["2019-05-01", "", "", ""]
    assert ds.skipped == {"invalid_location": 1, "missing_file": 1, "unknown_label": 1, "unreadable_file": 1}
    summary = [r.getMessage() for r in caplog.records if r.name == "trainer.data.rows"]
    assert len(summary) == 1
    assert "kept 4 of 8 rows (1 without location); skipped 4" in summary[0]
    assert "invalid_location=1, missing_file=1, unknown_label=1, unreadable_file=1" in summary[0]


def test_label_names_align_rows_to_a_training_label_list(inat2021):
    ds = load_split(f"inat2021:{inat2021}", "train", label_names=["Picus viridis", "Picus canus"])
    assert ds.label_names == ["Picus viridis", "Picus canus"]
    assert ds.labels.tolist() == [0, 1, 1]  # a (viridis), b (canus), g (canus); terrestris is unknown now
    assert ds.skipped["unknown_label"] == 2


def test_bare_folder_spec_equals_inat2021_spec(inat2021):
    a, b = load_split(str(inat2021), "train"), load_split(f"inat2021:{inat2021 / 'train.json'}", "train")
    assert a.paths.tolist() == b.paths.tolist() and a.labels.tolist() == b.labels.tolist()


def test_inat2017_reader_joins_locations_by_image_id(tmp_path, caplog):
    for name in ("a.jpg", "b.jpg", "c.jpg", "d.jpg"):
        write_image(tmp_path / "img" / name)
    doc = {"images": [{"id": i, "file_name": f"{n}.jpg"} for i, n in [(10, "a"), (11, "b"), (12, "c"), (13, "d")]],
           "annotations": [{"image_id": i, "category_id": 3} for i in (10, 11, 12, 13)],
           "categories": CATEGORIES}
    (tmp_path / "val2017.json").write_text(json.dumps(doc))
    locations = [{"id": 10, "lat": -33.9, "lon": 151.2, "date": "2016-01-02", "user_id": 5},
                 {"id": 11, "lat": None, "lon": None, "date": None, "user_id": 6},
                 {"id": 12, "lat": "north", "lon": 3.0, "date": "", "user_id": 7}]  # non-numeric: skipped
    (tmp_path / "val2017_locations.json").write_text(json.dumps(locations))
    spec = f"inat2017:{tmp_path}/{{split}}2017.json,{tmp_path}/{{split}}2017_locations.json,{tmp_path / 'img'}"
    with caplog.at_level(logging.INFO, logger="trainer.data.rows"):
        ds = load_split(spec, "val")
    assert [p.rsplit("/", 1)[1] for p in ds.paths] == ["a.jpg", "b.jpg", "d.jpg"]
    np.testing.assert_array_equal(ds.locations[0], [-33.9, 151.2])
    assert ds.has_location.tolist() == [True, False, False]  # 13 is absent from the list: unknown
    assert ds.dates.tolist() == ["2016-01-02", "", ""]
    assert ds.skipped == {"invalid_location": 1}
    assert ds is not None and read_inat2017(tmp_path / "val2017.json", tmp_path / "val2017_locations.json",
                                            tmp_path / "img").paths.tolist() == ds.paths.tolist()


def test_csv_manifest_reader(tmp_path, caplog):
    write_image(tmp_path / "x.jpg")
    write_image(tmp_path / "y.png", "PNG")
    rows = [["file", "label", "latitude", "longitude", "date"],
            ["x.jpg", "fox", "45", "-73.5", "2020-01-01"],
            ["y.png", "owl", "", "", ""],  # unknown location
            ["x.jpg", "owl", "45", "", ""],  # only one coordinate
            ["x.jpg", "fox", "inf", "3", ""],  # not finite
            ["x.jpg", "bat", "1", "2", ""],  # not in label_names
            ["nope.jpg", "fox", "1", "2", ""]]
    with open(tmp_path / "m.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)
    with caplog.at_level(logging.INFO, logger="trainer.data.rows"):
        ds = load_split(f"csv:{tmp_path / 'm.csv'}", "train", label_names=["owl", "fox"])
    assert ds.labels.tolist() == [1, 0]
    assert ds.has_location.tolist() == [True, False]
    assert ds.supercategory_names == ["unknown"]
    assert ds.skipped == {"invalid_location": 2, "missing_file": 1, "unknown_label": 1}
    assert sum("kept 2 of 6 rows" in r.getMessage() for r in caplog.records) == 1
    # Without label_names the labels are the sorted distinct names.
    assert read_csv_manifest(tmp_path / "m.csv").label_names == ["bat", "fox", "owl"]


def test_csv_missing_columns_is_a_clear_error(tmp_path):
    (tmp_path / "m.csv").write_text("file,label\nx.jpg,fox\n")
    with pytest.raises(DatasetError, match="missing column"):
        read_csv_manifest(tmp_path / "m.csv")


def test_yfcc_reader_caps_ten_per_label_deterministically(tmp_path):
    header = ["yfcc100m ID", "yfcc100m line number", "label", "latitude", "longitude", "Flickr URL", "mmcommons URL"]
    rows = []
    # 13 rows of 'Picus viridis' (IDs listed in scrambled order), one image missing on disk.
    ids = [905, 101, 377, 12, 640, 88, 999, 450, 3, 710, 56, 1200, 333]
    for k, i in enumerate(ids):
        rows.append([i, k, "Picus viridis", 48.0, 2.0, "u", "u"])
        if i != 88:
            write_image(tmp_path / "imgs" / str(i % 3) / f"{i}.jpg")
    rows.append([7, 99, "Picus canus", 95.0, 2.0, "u", "u"])  # invalid latitude
    write_image(tmp_path / "imgs" / "7.jpg")
    rows.append([8, 98, "Homo sapiens", 1.0, 2.0, "u", "u"])  # not a training label
    write_image(tmp_path / "imgs" / "8.jpg")
    rows.append([9, 97, "Picus canus", 1.0, 2.0, "u", "u"])
    write_image(tmp_path / "imgs" / "9.png", "PNG")
    with open(tmp_path / "yfcc.csv", "w", newline="") as f:
        csv.writer(f).writerows([header] + rows)
    labels = ["Picus canus", "Picus viridis"]
    ds = load_split(f"yfcc:{tmp_path / 'yfcc.csv'},{tmp_path / 'imgs'}", "test", label_names=labels)
    viridis = sorted(int(p.rsplit("/", 1)[1].split(".")[0]) for p, lab in zip(ds.paths, ds.labels) if lab == 1)
    # The 10 smallest usable IDs (88 has no image), independent of row order.
    assert viridis == sorted(i for i in ids if i != 88)[:10]
    assert ds.labels.tolist().count(0) == 1
    assert ds.skipped == {"invalid_location": 1, "missing_file": 1, "over_cap": 2, "unknown_label": 1}
    again = read_yfcc(tmp_path / "yfcc.csv", tmp_path / "imgs", labels)
    assert again.paths.tolist() == ds.paths.tolist()


def test_geodataset_columns_subset_and_counts():
    ds = GeoDataset(paths=["a", "b", "c"], labels=[1, 1, 0], lat=[1.0, np.nan, 3.0], lon=[2.0, np.nan, 4.0],
                    has_location=[True, False, True], dates=["", "", "d"], supercategories=[0, 0, 0],
                    label_names=["x", "y", "z"], supercategory_names=["s"])
    assert len(ds) == 3
    assert ds.train_counts().tolist() == [1, 2, 0]
    assert ds.labels.dtype == np.int32 and ds.lat.dtype == np.float64
    sub = ds.subset([2, 0])
    assert sub.paths.tolist() == ["c", "a"] and sub.label_names == ds.label_names
    np.testing.assert_array_equal(sub.locations, [[3.0, 4.0], [1.0, 2.0]])
    assert len(ds.subset(ds.has_location)) == 2


@pytest.mark.parametrize("change, message", [
    ({"has_location": [True, True, True]}, "has_location"),
    ({"labels": [0, 5, 0]}, "labels must lie"),
    ({"lat": [1.0, 2.0]}, "shape"),
])
def test_geodataset_rejects_inconsistent_columns(change, message):
    cols = dict(paths=["a", "b", "c"], labels=[1, 1, 0], lat=[1.0, np.nan, 3.0], lon=[2.0, np.nan, 4.0],
                has_location=[True, False, True], dates=["", "", ""], supercategories=[0, 0, 0],
                label_names=["x", "y"], supercategory_names=["s"])
    cols.update(change)
    with pytest.raises(DatasetError, match=message):
        GeoDataset(**cols)


@pytest.mark.parametrize("spec, message", [
    ("", "non-empty"),
    ("/no/such/folder", "neither a dataset folder"),
    ("yfcc:only_one_part.csv", "takes 2 to 2"),
    ("csv:a.csv,", "empty part"),
    ("inat2021:/no/such/file.json", "not found"),
])
def test_bad_specs_raise_clear_errors(spec, message):
    with pytest.raises(DatasetError, match=message):
        load_split(spec, "train")


def test_malformed_json_is_a_clear_error(tmp_path):
    (tmp_path / "train.json").write_text("{not json")
    with pytest.raises(DatasetError, match="cannot read JSON"):
        load_split(str(tmp_path), "train")


def test_malformed_rows_are_counted_not_crashes(inat2021, caplog):
    """Rows of the wrong JSON types are skipped and counted by reason; duplicate image ids keep the
    first row; (0, 0) is kept (it is a real place) but flagged, since iNat uses it for 'unknown'."""
    doc = json.loads((inat2021 / "train.json").read_text())
    doc["images"] += [
        {"id": [1, 2], "file_name": "train/a.jpg"},  # an id that is a list
        {"id": 20, "file_name": 5},  # a file name that is an int
        {"id": 21, "file_name": None},
        {"id": True, "file_name": "train/a.jpg"},
        "not an object",
        {"id": 1, "file_name": "train/c.jpg", "latitude": 1.0, "longitude": 1.0},  # duplicate of id 1
        {"id": 22, "file_name": "train/a.jpg", "latitude": [1.0], "longitude": 2.0},
        {"id": 23, "file_name": "train/a.jpg", "latitude": 10**400, "longitude": 2.0},
    ]
    doc["annotations"] += [{"image_id": [1, 2], "category_id": 7}, {"image_id": 22, "category_id": 7},
                           {"image_id": 23, "category_id": 7}, "junk", {"image_id": 20, "category_id": {"x": 1}}]
    (inat2021 / "train.json").write_text(json.dumps(doc))
    with caplog.at_level(logging.INFO, logger="trainer.data.rows"):
        ds = read_inat2021(inat2021 / "train.json")
    assert len(ds) == 4
    assert ds.skipped == {"duplicate_id": 1, "invalid_location": 3, "malformed_row": 5, "missing_file": 1,
                          "unknown_label": 1, "unreadable_file": 1}
    assert ds.flagged == {"zero_location": 1}
    assert "kept but flagged: zero_location=1" in caplog.records[-1].getMessage()


@pytest.mark.parametrize("content,match", [
    (b"\xff\xfe{\x00}", "cannot read JSON"),  # not UTF-8
    (b"[" * 100_000 + b"]" * 100_000, "cannot read JSON"),  # nested beyond the parser's recursion
    (json.dumps({"images": [], "categories": [1, 2]}).encode(), "malformed 'categories'"),
    (json.dumps({"images": 5, "categories": []}).encode(), "malformed 'images'"),
])
def test_malformed_files_are_dataset_errors_naming_them(tmp_path, content, match):
    (tmp_path / "train.json").write_bytes(content)
    with pytest.raises(DatasetError, match=match) as exc:
        read_inat2021(tmp_path / "train.json")
    assert "train.json" in str(exc.value)


def test_csv_and_json_with_a_utf8_bom_are_read(tmp_path):
    write_image(tmp_path / "a.jpg")
    (tmp_path / "m.csv").write_bytes("\ufefffile,label,latitude,longitude\na.jpg,x,1.0,2.0\n".encode("utf-8"))
    ds = read_csv_manifest(tmp_path / "m.csv")
    assert len(ds) == 1 and ds.label_names == ["x"]
    doc = {"images": [{"id": 1, "file_name": "a.jpg", "latitude": 1.0, "longitude": 2.0}],
           "annotations": [{"image_id": 1, "category_id": 1}], "categories": [{"id": 1, "name": "x"}]}
    (tmp_path / "train.json").write_bytes(b"\xef\xbb\xbf" + json.dumps(doc).encode())
    assert len(read_inat2021(tmp_path / "train.json")) == 1
