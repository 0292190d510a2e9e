"""QC: statuses and reasons on generated slides (blank, black, pen ink, too coarse, mislabelled) and bad files."""

import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, SHARED_DATA, blob_image, require_sample_cohort, write_pyramid_tiff
from pipeline.config import load_config
from pipeline.ihc.stain_check import stain_check
from pipeline.slides.qc import he_check_params, judge, qc_slide, sharpness, thumbnail_mpp
from pipeline.slides.reader import open_slide

CONFIG = load_config(ROOT / "configs" / "config.yaml")


def _qc(path, stain=None):
    with open_slide(path) as s:
        return qc_slide(s, CONFIG, stain)


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


# ---- resolution: a slide coarser than its analysis needs is refused, never enlarged -------------------------
def test_slide_coarser_than_the_model_fails_with_the_reason(tmp_path):
    coarse = write_pyramid_tiff(tmp_path / "coarse.tif", blob_image(1024, 768), mpp=2.0, levels=1)
    record, _, _ = _qc(coarse, "HE")
    assert record["status"] == "failed"
    assert record["reasons"] == ["scanned at 2 um/px, coarser than the 1 um/px the tile classifier "
                                 "(tiling.target_mpp) needs (tolerance 10%); slides are never enlarged: rescan at a "
                                 "higher magnification, or correct the sample sheet's `mpp` if the slide's metadata "
                                 "is wrong"]
    assert "sharpness_median" not in record["metrics"]  # no enlarged tile was read


def test_ihc_needs_its_own_finer_resolution(tmp_path):
    slide = write_pyramid_tiff(tmp_path / "s07.tif", blob_image(1536, 1024), mpp=0.7, levels=1)
    assert _qc(slide, "HE")[0]["status"] == "ok"  # fine for 1 um/px tiles
    record, _, _ = _qc(slide, "desmin")  # IHC quantification reads 0.5 um/px
    assert record["status"] == "failed" and "IHC quantification (ihc.quantify_mpp)" in record["reasons"][0]


# ---- stain check on slides labelled HE ---------------------------------------------------------------------
def _sample_slides(stain_is_he: bool) -> list[str]:
    import csv

    with open(ROOT / "configs" / "samples.tsv", newline="") as fh:
        return [r["path"] for r in csv.DictReader(fh, delimiter="\t") if (r["stain"] == "HE") == stain_is_he]


def _he_check(path, mpp=None) -> dict:
    """The stain check QC runs on an HE-labelled slide, on the QC thumbnail."""
    with open_slide(path, mpp=mpp) as s:
        thumb, _ = s.read_downsampled(thumbnail_mpp(s, CONFIG["qc"]["thumb_max_px"], CONFIG["qc"]["thumb_min_mpp"]))
    return stain_check(thumb, "HE", **he_check_params(CONFIG))


@pytest.mark.parametrize("path", _sample_slides(stain_is_he=False))
def test_sample_ihc_slides_relabelled_he_are_flagged(path):
    require_sample_cohort()
    check = _he_check(ROOT / path)
    assert check["probable_mislabel"], check
    assert "H&E" in check["reason"] and "check the sample sheet's stain column" in check["reason"]


@pytest.mark.parametrize("path", _sample_slides(stain_is_he=True) + ["shared:cmu_small_region.svs"])
def test_real_he_slides_are_not_flagged(path):
    if path.startswith("shared:"):
        path = SHARED_DATA / "slides" / path.split(":", 1)[1]
        if not path.is_file():
            pytest.skip(f"{path} absent (../shared/data is not in a fresh clone)")
    else:
        require_sample_cohort()
    check = _he_check(ROOT / path)
    assert check["status"] == "ok" and not check["probable_mislabel"], check


def test_ihc_slide_labelled_he_fails_qc_with_one_line(tmp_path):
    require_sample_cohort()
    out = tmp_path / "qc.json"
    proc = subprocess.run([sys.executable, "-m", "pipeline", "qc-slide", "--slide", "slides_sample/A-ER.svs",
                           "--slide-id", "A-ER", "--stain", "HE", "--config", str(ROOT / "configs" / "config.yaml"),
                           "--out", str(out), "--thumb", str(tmp_path / "t.png"), "--mask", str(tmp_path / "m.png")],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    record = json.loads(out.read_text())
    assert record["status"] == "failed" and record["stain_check"]["probable_mislabel"]
    assert record["reasons"] == [record["stain_check"]["reason"]]
    assert record["reasons"][0].startswith("colour does not look like H&E") and "\n" not in record["reasons"][0]
    assert _qc(ROOT / "slides_sample" / "A-HE.svs", "HE")[0]["status"] == "ok"
