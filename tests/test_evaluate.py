"""The evaluate verb: a model on labelled real patches, per source and pooled, from the command line."""

import json
import os
import subprocess
import sys

import numpy as np
from PIL import Image

from conftest import MODEL_DIR_NAME, ROOT
from pipeline.training.real_metrics import real_metrics

V1 = ROOT / "models" / "triage-smallcnn-v1"


def _evaluate(*args):
    return subprocess.run([sys.executable, "-m", "pipeline", "evaluate", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)


def test_real_metrics_per_source_and_pooled():
    probs = np.array([[0.8, 0.1, 0.1], [0.2, 0.2, 0.6], [0.1, 0.7, 0.2], [0.6, 0.1, 0.3]])
    labels, sources, owners = np.array([0, 2, 1, 2]), np.array(["a", "a", "b", "b"]), np.arange(4)
    m = real_metrics(probs, labels, sources, owners, ["carcinoma", "sarcoma", "non_tumour"], np.array([0, 2, 0, 0]),
                     n_boot=0)
    assert m["pooled"]["accuracy"] == 0.75 and m["pooled"]["ood_over_threshold"] == 0.25
    assert m["per_source"]["a"]["tumour_vs_non_tumour_auc"] == 1.0
    assert m["per_source"]["b"]["per_class"]["carcinoma"]["auc"] is None  # no carcinoma in b
    assert m["pooled"]["confusion"]["matrix"] == [[1, 0, 0], [0, 1, 0], [1, 0, 1]]


def test_evaluate_defaults_to_the_configs_model_from_any_directory(tmp_path):
    Image.fromarray(np.full((240, 240, 3), 180, np.uint8)).save(tmp_path / "x.png")
    (tmp_path / "l.csv").write_text("path,label,source,mpp\nx.png,carcinoma,mine,1.0\nx.png,normal,mine,1.0\n")
    r = subprocess.run([sys.executable, "-m", "pipeline", "evaluate", "l.csv"], cwd=tmp_path, capture_output=True,
                       text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr
    assert f"model {MODEL_DIR_NAME} " in r.stdout and "mine" in r.stdout


def test_evaluate_refuses_images_without_a_scale(tmp_path):
    Image.fromarray(np.full((240, 240, 3), 180, np.uint8)).save(tmp_path / "x.png")
    (tmp_path / "l.csv").write_text("path,label,source,mpp\nx.png,carcinoma,mine,\n")
    r = _evaluate(tmp_path / "l.csv", "--model", V1)
    assert r.returncode == 2 and "states no um/px" in r.stderr and "--assume-mpp" in r.stderr


def test_evaluate_on_the_shared_patches(shared_data, tmp_path):
    out = tmp_path / "m.json"
    r = _evaluate(shared_data / "patches" / "labels.csv", "--model", V1, "--assume-mpp", "Osteosarcoma=1.0",
                  "--assume-mpp", "Komura=0.5", "--assume-mpp", "TCGA-COAD=0.5", "--json", out)
    assert r.returncode == 0, r.stderr
    assert "ALL (pooled)" in r.stdout and "tcia-osteosarcoma-tumor-assessment" in r.stdout
    assert "note: the model's training data include images of" in r.stdout  # v1 was trained on this folder
    m = json.loads(out.read_text())["metrics"]
    assert m["pooled"]["images"] == 127 and m["pooled"]["tiles"] >= 127
    assert 0.0 <= m["pooled"]["macro_auc"] <= 1.0 and 0.0 <= m["pooled"]["tumour_vs_non_tumour_auc"] <= 1.0
    assert sum(map(sum, m["pooled"]["confusion"]["matrix"])) == m["pooled"]["tiles"]
