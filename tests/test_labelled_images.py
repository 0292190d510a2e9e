"""Labelled real images: CSV dialects, label mapping, refusal of unstated scales, tiles at the model's um/px."""

import numpy as np
import pytest
from PIL import Image

from pipeline.errors import TriageError
from pipeline.training.labelled_images import image_tiles, model_label, parse_assume_mpp, read_labels


def _write(tmp_path, rows, header="path,label,source,mpp"):
    Image.fromarray(np.full((300, 400, 3), 200, np.uint8)).save(tmp_path / "a.png")
    (tmp_path / "labels.csv").write_text(header + "\n" + "\n".join(rows) + "\n")
    return tmp_path / "labels.csv"


def test_labels_outside_the_classes_map_to_non_tumour_or_are_refused():
    assert model_label("Carcinoma") == "carcinoma"
    assert model_label("necrosis") == model_label("benign tumour") == "non_tumour"
    with pytest.raises(ValueError, match="not a model class"):
        model_label("lymphoma")


def test_rows_without_um_per_px_are_refused_unless_assumed(tmp_path):
    csv = _write(tmp_path, ["a.png,carcinoma,mine,"])
    with pytest.raises(TriageError, match=r"labels.csv:2: a.png states no um/px.*--assume-mpp"):
        read_labels(csv)
    (rec,) = read_labels(csv, parse_assume_mpp(["mine=0.5"]))
    assert rec.mpp == 0.5 and not rec.mpp_stated and rec.source == "mine" and rec.path == tmp_path / "a.png"


def test_unknown_label_names_the_row(tmp_path):
    with pytest.raises(TriageError, match=r"labels.csv:3: label 'tumourish'"):
        read_labels(_write(tmp_path, ["a.png,sarcoma,s,1.0", "a.png,tumourish,s,1.0"]))


def test_shared_csv_dialects(shared_data):
    train = read_labels(shared_data / "train" / "labels.csv", parse_assume_mpp(["monuseg=0.25", "ucsb=0.33",
                                                                                 "oral=0.5"]))
    patches = read_labels(shared_data / "patches" / "labels.csv", parse_assume_mpp(["Osteo=1.0", "TCGA=0.5",
                                                                                     "Komura=0.5"]))
    assert {r.label for r in train} == {r.label for r in patches} == {"carcinoma", "sarcoma", "non_tumour"}
    assert all(r.path.is_file() for r in train + patches)
    # GlaS adenomas are benign tumours: not malignant, so non_tumour
    assert {r.label for r in train if r.original_label == "benign_tumour"} == {"non_tumour"}


def test_tiles_are_at_the_target_scale_and_never_enlarged():
    img = np.zeros((400, 600, 3), np.uint8)
    img[:, 300:] = 255
    grid = image_tiles(img, 0.5, 1.0, 100, 4)  # 200 x 300 px at 1 um/px: 2 x 3 grid capped at 4
    assert grid.shape == (4, 100, 100, 3)
    small = image_tiles(np.full((50, 50, 3), 7, np.uint8), 1.0, 1.0, 100, 4)  # padded, not enlarged
    assert small.shape == (1, 100, 100, 3) and (small == 7).all()
    crops = image_tiles(img, 0.5, 1.0, 100, 5, np.random.default_rng(0), 0.2)
    assert crops.shape == (5, 100, 100, 3)
