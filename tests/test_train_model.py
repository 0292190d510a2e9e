"""train-model end to end on a tiny labelled set: leave-one-source-out selection, calibration, OOD statistics,
a card that validates and weights that load (the real run is the train_model rule on ../shared/data)."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import ROOT
from pipeline.he.models import load_model


@pytest.fixture(scope="module")
def tiny_labels(tmp_path_factory):
    """Three sources, three classes, textures that differ by class (dots, stripes, flat pink)."""
    d = tmp_path_factory.mktemp("tiny")
    rng = np.random.default_rng(0)
    rows = ["path,label,source,case_id,mpp"]
    for s in range(3):
        for c, label in enumerate(["carcinoma", "sarcoma", "non_tumour"]):
            for i in range(2):
                img = np.full((260, 260, 3), (225, 170 + 10 * s, 200), np.uint8)
                if c == 0:
                    for y, x in rng.integers(0, 250, (60, 2)):
                        img[y:y + 10, x:x + 10] = (80, 40, 120)
                elif c == 1:
                    img[:, ::12] = (120, 60, 140)
                img = np.clip(img + rng.integers(-8, 8, img.shape), 0, 255).astype(np.uint8)
                name = f"s{s}_{label}_{i}.png"
                Image.fromarray(img).save(d / name)
                rows.append(f"{name},{label},src{s},case{s}{i},1.0")
    (d / "labels.csv").write_text("\n".join(rows) + "\n")
    return d / "labels.csv"


def test_train_model_writes_a_loadable_selected_and_calibrated_model(tiny_labels, tmp_path):
    out = tmp_path / "m"
    r = subprocess.run([sys.executable, "-m", "pipeline", "train-model", "--labels", str(tiny_labels),
                        "--out", str(out), "--model-id", "tiny-v0", "--train-crops", "2", "--eval-tiles", "1",
                        "--steps", "50", "--baseline", ""], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    model, card = load_model(out)
    sel = card["architecture_selection"]
    assert len(sel["candidates"]) >= 6 and sel["chosen"] == card["architecture"]
    best = max(c["loso_macro_auc"] for c in sel["candidates"])
    assert [c for c in sel["candidates"] if c["architecture"] == sel["chosen"]][0]["loso_macro_auc"] == best
    loso = card["metrics"]["loso"]
    assert set(loso["per_source"]) == {"src0", "src1", "src2"} and loso["pooled"]["images"] == 18
    assert card["calibration"]["temperature"] > 0 and float(model.ood_scale) > 0
    probs, ood = model.score(torch.zeros(2, 224, 224, 3, dtype=torch.uint8))
    assert torch.allclose(probs.sum(1), torch.ones(2)) and (ood >= 0).all()
    assert json.loads((out / "card.json").read_text())["weights"]["sha256"] == card["weights"]["sha256"]


def test_train_model_needs_three_sources(tiny_labels, tmp_path):
    lines = tiny_labels.read_text().splitlines()
    two = tmp_path / "two.csv"
    two.write_text("\n".join([lines[0]] + [f"{tiny_labels.parent}/{row}" for row in lines[1:] if ",src2," not in row])
                   + "\n")
    r = subprocess.run([sys.executable, "-m", "pipeline", "train-model", "--labels", str(two), "--out",
                        str(tmp_path / "m"), "--model-id", "tiny-v0", "--baseline", ""], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "at least 3 sources" in r.stderr
