"""QC: statuses and reasons on generated slides (blank, black, pen ink) and bad files."""

import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, blob_image, write_pyramid_tiff
from pipeline.config import load_config
from pipeline.qc import judge, qc_slide, sharpness
from pipeline.slide import open_slide

CONFIG = load_config(ROOT / "configs" / "config.yaml")


def _qc(path):
    with open_slide(path) as s:
        return qc_slide(s, CONFIG)


def test_tissue_slide_passes(small_slide):
    record, thumb, mask = _qc(small_slide)
    assert record["status"] == "ok", record["reasons"]
    assert 0.2 < record["metrics"]["tissue_fraction"] < 0.45  # the blob covers ~31 %
    assert record["metrics"]["tissue_area_mm2"] == pytest.approx(0.31 * 0.768 * 0.512, rel=0.2)
    assert mask.shape == thumb.shape[:2]
    assert record["slide"]["mpp"] == 0.5 and "properties" in record["slide"]


def test_all_white_fails_no_tissue(tmp_path):
    path = write_pyramid_tiff(tmp_path / "white.tif", np.full((1024, 1024, 3), 243, np.uint8), 0.5)
    record, _, _ = _qc(path)
    assert record["status"] == "failed" and record["reasons"][0].startswith("no tissue")


def test_all_black_fails_not_brightfield(tmp_path):
    path = write_pyramid_tiff(tmp_path / "black.tif", np.zeros((1024, 1024, 3), np.uint8), 0.5)
    record, _, _ = _qc(path)
    assert record["status"] == "failed" and "not a brightfield" in record["reasons"][0]


def test_pen_ink_warns(tmp_path):
    img = blob_image(1536, 1024)
    img[150:260, 100:1400] = (40, 150, 70)  # a green marker stroke across glass and the tissue edge
    record, _, mask = _qc(write_pyramid_tiff(tmp_path / "pen.tif", img, 0.5))
    assert record["status"] == "warn"
    assert any(r.startswith("pen ink") for r in record["reasons"])


def test_judge_blur_warning():
    metrics = {"is_brightfield": True, "tissue_area_mm2": 5.0, "pen_ink_fraction": 0.0, "sharpness_median": 1e-4}
    status, reasons = judge(metrics, CONFIG["qc"])
    assert status == "warn" and reasons[0].startswith("blurred")


def test_sharpness_drops_with_blur():
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(0)
    sharp = rng.random((128, 128))
    assert sharpness(gaussian_filter(sharp, 3)) < sharpness(sharp) / 20


def test_qc_verb_records_failure_and_exits_zero(tmp_path):
    bad = tmp_path / "bad.svs"
    bad.write_text("not a slide")
    out = tmp_path / "qc.json"
    proc = subprocess.run([sys.executable, "-m", "pipeline", "qc-slide", "--slide", str(bad), "--slide-id", "bad",
                           "--config", str(ROOT / "configs" / "config.yaml"), "--out", str(out),
                           "--thumb", str(tmp_path / "t.png"), "--mask", str(tmp_path / "m.png")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    record = json.loads(out.read_text())
    assert record["status"] == "failed" and "not a whole-slide image" in record["reasons"][0]
    assert record["slide_id"] == "bad"
