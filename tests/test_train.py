"""Training: metrics and calibration, data splits and augmentation, and a tiny end-to-end training run."""

import csv
import json

import numpy as np
import pytest
import torch

from conftest import write_pyramid_tiff
from pipeline.he.models import load_model
from pipeline.training.train_data import (
    SHARED_PATCH_RULES,
    Patch,
    balanced_sampler_weights,
    colour_augment,
    crop_batch,
    load_patch_folder,
    pad_small_patches,
    resample,
    rule_split,
    tiles_from_annotations,
)
from pipeline.training.train_metrics import bootstrap_auc_ci, evaluate, fit_temperature, nll, roc_auc, softmax

CLASSES = ["carcinoma", "sarcoma", "non_tumour"]


# ---- metrics --------------------------------------------------------------------------------------------
def test_roc_auc_known_values():
    assert roc_auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.8, 0.9])) == 1.0
    assert roc_auc(np.array([0, 0, 1, 1]), np.array([0.9, 0.8, 0.2, 0.1])) == 0.0
    assert roc_auc(np.array([0, 1, 0, 1]), np.array([0.5, 0.5, 0.5, 0.5])) == 0.5  # ties count half
    assert roc_auc(np.array([1, 1]), np.array([0.1, 0.2])) is None


def test_bootstrap_ci_brackets_the_auc():
    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(50), np.ones(50)].astype(bool)
    s = rng.normal(size=100) + y * 1.5
    lo, hi = bootstrap_auc_ci(y, s, n_boot=200, seed=1)
    assert lo < roc_auc(y, s) < hi and lo > 0.5


def test_temperature_recovers_overconfidence():
    rng = np.random.default_rng(0)
    true_logits = rng.normal(size=(2000, 3)) * 2
    labels = np.array([rng.choice(3, p=p) for p in softmax(true_logits)])
    fitted = fit_temperature(true_logits * 3.0, labels)  # logits 3x too confident
    assert fitted == pytest.approx(3.0, rel=0.15)
    assert nll(true_logits * 3.0, labels, fitted) < nll(true_logits * 3.0, labels)


def test_evaluate_confusion_and_per_class():
    probs = np.array([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8], [0.6, 0.3, 0.1]])
    out = evaluate(probs, np.array([0, 1, 2, 1]), CLASSES, n_boot=10)
    assert out["confusion"]["matrix"] == [[1, 0, 0], [1, 1, 0], [0, 0, 1]]
    assert out["accuracy"] == 0.75 and out["per_class"]["sarcoma"]["recall"] == 0.5
    json.dumps(out)


# ---- data -----------------------------------------------------------------------------------------------
def test_resample_uses_each_patch_scale():
    img = np.zeros((224, 224, 3), np.uint8)
    assert resample(img, 0.5, 1.0).shape == (112, 112, 3)
    assert resample(img, 1.0, 1.0) is img
    assert resample(np.zeros((100, 60, 3), np.uint8), 2.0, 1.0).shape == (200, 120, 3)


def test_small_patches_become_same_class_mosaics():
    rng = np.random.default_rng(0)
    small = [Patch(rng.integers(0, 255, (50, 50, 3), dtype=np.uint8), 0, "s", f"g{i}", "train", "x") for i in range(3)]
    big = Patch(np.zeros((80, 80, 3), np.uint8), 1, "t", "h", "train", "y")
    out = pad_small_patches(small + [big], 64)
    assert all(p.image.shape == (64, 64, 3) for p in out[:3]) and out[3] is big
    assert np.array_equal(out[0].image[:50, :50], small[0].image)


def test_split_rules_never_put_one_case_in_two_splits(shared_data):
    with open(shared_data / "patches" / "labels.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    splits_of_group: dict[tuple, set] = {}
    for row in rows:
        source, group, split = rule_split(row["path"], row["dataset"], SHARED_PATCH_RULES)
        splits_of_group.setdefault((source, group), set()).add(split)
    assert all(len(s) == 1 for s in splits_of_group.values()), splits_of_group
    held_out = {src for (src, _), s in splits_of_group.items() if "test" in s}
    assert {"tcga-chol-komura", "tcga-coad-msi", "nct-crc-he-100k", "osteosarcoma-utsw"} <= held_out


def test_real_patches_load_at_the_model_scale(shared_data):
    patches = load_patch_folder(shared_data / "patches", shared_data / "patches" / "labels.csv", CLASSES, 1.0,
                                {"Osteosarcoma": 1.0})
    kather = [p for p in patches if p.source == "kather-crc-val-he-7k"]
    osteo = [p for p in patches if p.source == "osteosarcoma-utsw"]
    assert kather and all(p.image.shape[:2] == (112, 112) for p in kather)  # 224 px at 0.5 -> 112 px at 1.0
    assert osteo and all(p.image.shape[:2] == (1024, 1024) for p in osteo)
    assert {p.label for p in osteo} == {1, 2}  # viable tumour = sarcoma; necrosis and normal = non_tumour


def test_augmentation_shapes_ranges_and_identity():
    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 255, (80, 90, 3), dtype=np.uint8) for _ in range(4)]
    batch = crop_batch(imgs, 64, rng, train=True)
    assert batch.shape == (4, 64, 64, 3) and batch.dtype == np.uint8
    centre = crop_batch(imgs, 64, rng, train=False)
    assert np.array_equal(centre[0], imgs[0][8:72, 13:77])
    x = torch.from_numpy(batch).permute(0, 3, 1, 2).float()
    gen = torch.Generator().manual_seed(0)
    same = colour_augment(x, gen, hed_sigma=0, hed_bias=0, brightness=0, contrast=0, blur_fraction=0, grey_fraction=0)
    assert torch.allclose(same, x.clamp(0, 255), atol=0.05)  # HED round trip is exact
    jittered = colour_augment(x, gen)
    assert jittered.shape == x.shape and jittered.min() >= 0 and jittered.max() <= 255
    assert not torch.allclose(jittered, x, atol=1.0)


def test_balanced_sampling():
    patches = ([Patch(None, 0, "synthetic", "a", "train", "") for _ in range(90)]
               + [Patch(None, 0, "real", "b", "train", "") for _ in range(10)]
               + [Patch(None, 1, "synthetic", "c", "train", "") for _ in range(5)])
    w = balanced_sampler_weights(patches, 3)
    assert w[:100].sum() == pytest.approx(0.5) and w[100:].sum() == pytest.approx(0.5)
    assert w[90:100].sum() / w[:90].sum() == pytest.approx(np.sqrt(10) / np.sqrt(90))


def test_tiles_from_qupath_annotations(tmp_path):
    img = np.full((1024, 1024, 3), 240, np.uint8)
    img[:, 512:] = (200, 120, 170)
    slide = write_pyramid_tiff(tmp_path / "a.tif", img, mpp=0.5, levels=1)
    square = [[520, 0], [1024, 0], [1024, 1024], [520, 1024], [520, 0]]
    geo = {"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [square]},
         "properties": {"classification": {"name": "Sarcoma"}}},
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [10, 0], [10, 10], [0, 0]]]},
         "properties": {"classification": {"name": "Ignore*"}}}]}
    (tmp_path / "a.geojson").write_text(json.dumps(geo))
    patches = tiles_from_annotations(slide, tmp_path / "a.geojson", CLASSES, 64, 1.0, split="train")
    assert patches and all(p.label == 1 and p.image.shape == (64, 64, 3) for p in patches)
    assert all(int(p.origin.rsplit("@", 1)[1].split(",")[0]) >= 520 for p in patches)
    assert all(p.image.mean() < 200 for p in patches)  # tissue, not glass


# ---- a tiny training run --------------------------------------------------------------------------------
def _texture(cls: int, rng: np.random.Generator, size: int = 96) -> np.ndarray:
    """Simple stand-ins: round dark nests (carcinoma), oriented streaks (sarcoma), pale mesh (non-tumour)."""
    yy, xx = np.mgrid[0:size, 0:size]
    img = np.full((size, size, 3), (225, 170, 200), np.float64)
    if cls == 0:
        for _ in range(6):
            cy, cx, r = rng.uniform(0, size, 2).tolist() + [rng.uniform(6, 12)]
            img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = (120, 60, 150)
    elif cls == 1:
        angle = rng.uniform(0, np.pi)
        phase = np.cos(angle) * xx + np.sin(angle) * yy
        img[np.sin(phase / 2.5 + rng.uniform(0, 6)) > 0.6] = (140, 70, 150)
    else:
        img[:] = (245, 235, 240)
        img[(xx % int(rng.integers(14, 22)) < 2) | (yy % int(rng.integers(14, 22)) < 2)] = (220, 140, 190)
    img += rng.normal(0, 8, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.fixture
def toy_patches(tmp_path):
    """A labelled patch folder like ../shared/data/patches: 3 classes x 24 patches from 12 'cases' each."""
    from PIL import Image

    rng = np.random.default_rng(0)
    root = tmp_path / "patches"
    rows = []
    for cls, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True)
        for i in range(24):
            rel = f"{name}/case{i // 2:02d}_{i}.png"
            Image.fromarray(_texture(cls, rng)).save(root / rel)
            rows.append({"path": rel, "dataset": "toy", "original_label": name, "coarse_label": name,
                         "mpp_um": "1.0"})
    with open(root / "labels.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return root


def test_tiny_training_run_learns_and_writes_a_loadable_model(toy_patches, tmp_path, capsys):
    from pipeline.__main__ import main

    out = tmp_path / "models" / "toy-v1"
    args = ["train", "--out", str(out), "--patches", str(toy_patches), "--tile-px", "64", "--steps", "60",
            "--batch-size", "24", "--eval-every", "20", "--lr", "3e-3", "--bootstrap", "50", "--seed", "1",
            "--min-tiles-per-s", "0", "--speed-seconds", "0.2"]
    assert main(args) == 0, capsys.readouterr().err
    model, card = load_model(out)
    assert card["model_id"] == "toy-v1" and card["architecture"] == "small_cnn" and card["tile_px"] == 64
    toy = card["metrics"]["per_source"]["toy"]
    assert toy["n"] > 0 and toy["balanced_accuracy"] > 0.6, toy  # chance is 0.33
    assert card["calibration"]["temperature"] > 0 and 0 <= card["precision"]["bf16_max_prob_diff"] < 0.1
    assert card["performance"]["tiles_per_s"] > 0 and float(model.ood_scale) > 0
    counts = card["training_data"]["counts"]["toy"]
    assert set(counts) <= {"train", "val"} and sum(counts["train"].values()) > 0
    # splits by case: no case in two splits
    assert card["test_data"]["counts"]["toy"]["test"]
    # deterministic: the same seed gives the same weights
    out2 = tmp_path / "models" / "toy-v1-again"
    assert main([*args[:2], str(out2), *args[3:]]) == 0
    assert json.loads((out2 / "card.json").read_text())["weights"]["sha256"] == card["weights"]["sha256"]
