"""Per-slide summary: schema, the slide call, failed slides, redaction, provenance and byte-stability.

:func:`make_mini_cohort` (also used by the other output tests) runs the real stages on generated slides -- QC,
tiling, IHC quantification -- with stand-in CNN scores (no torch), then the output verbs through the CLI:
case C1 = H&E slide S1 + CK_AE1AE3 slide S2, case C2 = H&E slide S3 whose file is broken.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, blob_image, write_pyramid_tiff
from pipeline import DISCLAIMER
from pipeline.__main__ import main

CONFIG = str(ROOT / "configs" / "config.yaml")
MARKERS = str(ROOT / "configs" / "markers.yaml")
SLIDES = {"S1": ("C1", "HE"), "S2": ("C1", "CK_AE1AE3"), "S3": ("C2", "HE")}
CLASSES = ["carcinoma", "sarcoma", "non_tumour"]


def fake_scores(path: Path, tiles: Path, seed: int = 0, carcinoma: bool = True) -> None:
    """A scores.parquet as score-tiles writes it, with made-up probabilities (carcinoma-leaning by default)."""
    from pipeline.he import scoring
    from pipeline.slides.tiling import read_tile_grid

    grid = read_tile_grid(tiles)
    n = len(grid)
    meta = {"model_id": "test-model", "weights_sha256": "ab" * 32, "architecture": "small_cnn", "classes": CLASSES,
            "tile_px": 224, "target_mpp": 1.0, "status": grid.meta.get("status", "ok"), "reason": "",
            "seconds": 0.123}  # seconds: run-dependent, must not reach the summary
    if grid.meta.get("status") == "failed":
        meta.update(status="failed", reason=f"tile grid failed: {grid.meta.get('reason')}")
        scoring.write_scores(path, scoring.empty_columns(CLASSES), meta)
        return
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, 3))
    logits[:, 0 if carcinoma else 1] += 3.0
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    model, check = rng.uniform(0, 0.9, n), rng.uniform(0, 1.2, n)  # a few tiles fail the H&E tile check
    columns = {"x": grid.x, "y": grid.y, **{f"prob_{c}": p[:, i] for i, c in enumerate(CLASSES)},
               "ood_model": model, "ood_tile_check": check, "ood_score": np.maximum(model, check)}
    scoring.write_scores(path, columns, meta)


def run_stages(slide: Path, slide_id: str, stain: str, results: Path) -> Path:
    """qc-slide, tile-slide and score-tiles (stand-in) or quantify-ihc for one slide; returns its folder."""
    d = results / "slides" / slide_id
    assert main(["qc-slide", "--slide", str(slide), "--slide-id", slide_id, "--config", CONFIG, "--out",
                 str(d / "qc.json"), "--thumb", str(d / "thumb.png"), "--mask", str(d / "tissue.png")]) == 0
    assert main(["tile-slide", "--slide", str(slide), "--slide-id", slide_id, "--config", CONFIG, "--qc",
                 str(d / "qc.json"), "--mask", str(d / "tissue.png"), "--out", str(d / "tiles.parquet")]) == 0
    if stain == "HE":
        fake_scores(d / "scores.parquet", d / "tiles.parquet")
    else:
        assert main(["quantify-ihc", "--slide", str(slide), "--slide-id", slide_id, "--marker", stain, "--tiles",
                     str(d / "tiles.parquet"), "--qc", str(d / "qc.json"), "--config", CONFIG, "--markers", MARKERS,
                     "--out-tiles", str(d / "ihc.parquet"), "--out", str(d / "ihc.json"),
                     "--out-cells", str(d / "cells.geojson")]) == 0
    return d


def stage_args(d: Path, stain: str, ihc_json: bool = True) -> list[str]:
    if stain == "HE":
        return ["--scores", str(d / "scores.parquet")]
    return (["--ihc", str(d / "ihc.json")] if ihc_json else []) + ["--ihc-tiles", str(d / "ihc.parquet")]


def output_verbs(slide: Path, slide_id: str, case_id: str, stain: str, results: Path) -> None:
    """summarize-slide, draw-slide and export-geojson exactly as the rules call them."""
    d = results / "slides" / slide_id
    common = ["--tiles", str(d / "tiles.parquet")]
    assert main(["summarize-slide", "--slide-id", slide_id, "--case-id", case_id, "--stain", stain, "--slide",
                 str(slide), "--qc", str(d / "qc.json"), *common, *stage_args(d, stain), "--config", CONFIG,
                 "--out", str(d / "summary.json")]) == 0
    assert main(["draw-slide", "--summary", str(d / "summary.json"), "--slide", str(slide), "--thumb",
                 str(d / "thumb.png"), "--mask", str(d / "tissue.png"), *common, *stage_args(d, stain, False),
                 "--out-heatmap", str(d / "heatmap.png"), "--out-tissue", str(d / "tissue_overlay.png"),
                 "--out-top-tiles", str(d / "top_tiles.png")]) == 0
    assert main(["export-geojson", "--summary", str(d / "summary.json"), "--mask", str(d / "tissue.png"), *common,
                 *stage_args(d, stain, False), "--out", str(d / "tiles.geojson")]) == 0


def cohort_verbs(results: Path) -> None:
    """call-case per case and make-report, as the rules call them."""
    for case in sorted({c for c, _ in SLIDES.values()}):
        summaries = [str(results / "slides" / s / "summary.json") for s, (c, _) in SLIDES.items() if c == case]
        assert main(["call-case", "--case", case, "--summaries", *summaries, "--markers", MARKERS, "--config", CONFIG,
                     "--out", str(results / "cases" / case / "case.json")]) == 0
    assert main(["make-report", "--summaries", *[str(results / "slides" / s / "summary.json") for s in SLIDES],
                 "--cases", *[str(p) for p in sorted(results.glob("cases/*/case.json"))],
                 "--out-worklist", str(results / "worklist.tsv"), "--out-html", str(results / "report.html"),
                 "--out-metadata", str(results / "run_metadata.json")]) == 0


def make_slides(root: Path) -> dict[str, Path]:
    root.mkdir(parents=True, exist_ok=True)
    he = write_pyramid_tiff(root / "he_slide.svs", blob_image(3072, 2304, seed=1), mpp=0.5, levels=3, aperio=True)
    ihc = write_pyramid_tiff(root / "ihc_slide.svs", blob_image(1792, 1344, seed=2, tissue_rgb=(150, 100, 60)),
                             mpp=0.5, levels=3, aperio=True)
    broken = root / "broken_slide.svs"
    broken.write_bytes(b"II*\x00" + bytes(200))
    return {"S1": he, "S2": ihc, "S3": broken}


def make_mini_cohort(root: Path) -> Path:
    """Slides under ``root`` and every output under ``root/results``; returns the results folder."""
    slides = make_slides(root / "slides")
    results = root / "results"
    for slide_id, (case_id, stain) in SLIDES.items():
        run_stages(slides[slide_id], slide_id, stain, results)
        output_verbs(slides[slide_id], slide_id, case_id, stain, results)
    cohort_verbs(results)
    return results


@pytest.fixture(scope="module")
def cohort(tmp_path_factory, monkeypatch_module) -> Path:
    return make_mini_cohort(tmp_path_factory.mktemp("mini"))


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    mp.setenv("SLIDE_TRIAGE_GIT_COMMIT", "0" * 40)  # another person's commit mid-test must not change bytes
    yield mp
    mp.undo()


def _summary(results: Path, slide_id: str) -> dict:
    return json.loads((results / "slides" / slide_id / "summary.json").read_text())


# ---- tests ----------------------------------------------------------------------------------------------
def test_summaries_match_the_schema_and_are_canonical(cohort):
    from pipeline.outputs.results_check import check_summaries
    from pipeline.outputs.summary import summary_problems

    assert check_summaries(cohort) == {}
    for slide_id in SLIDES:
        s = _summary(cohort, slide_id)
        assert summary_problems(s) == []
        assert s["disclaimer"] == DISCLAIMER
        assert (s["slide_id"], s["case_id"]) == (slide_id, SLIDES[slide_id][0])


def test_he_slide_call_is_made_here_from_the_scores(cohort):
    from pipeline.config import load_config
    from pipeline.he.scoring import read_scores
    from pipeline.he.slide_call import call_slide

    s = _summary(cohort, "S1")
    columns, _ = read_scores(cohort / "slides" / "S1" / "scores.parquet")
    config = load_config(CONFIG)
    expected = call_slide({c: columns[f"prob_{c}"] for c in CLASSES}, columns["ood_score"], s["qc"]["status"],
                          s["qc"]["metrics"]["tissue_area_mm2"], s["tiles"]["tile_area_mm2"], config["slide_call"])
    assert s["status"] == "ok" and s["kind"] == "HE"
    for key in ("call", "confidence", "reason", "burden", "tumour_burden", "lineage_score"):
        assert s["slide_call"][key] == expected[key], key
    assert s["slide_call"]["call"] == "carcinoma"
    assert s["provenance"]["model"]["model_id"] == "test-model"
    # the OOD score's two components: which one made tiles unlike the training data
    assert s["scores"]["ood_over_1"] == {"model": 0.0,
                                         "tile_check": round(float((columns["ood_tile_check"] > 1).mean()), 4)}
    assert s["slide_call"]["ood_fraction"] == pytest.approx(s["scores"]["ood_over_1"]["tile_check"], abs=1e-4)
    # top tiles: level-0 coordinates of real tiles, best first
    top = s["top_tiles"]["carcinoma"]["tiles"]
    grid = {(int(x), int(y)) for x, y in zip(columns["x"], columns["y"], strict=True)}
    assert top and all((t["x"], t["y"]) in grid for t in top)
    assert [t["value"] for t in top] == sorted((t["value"] for t in top), reverse=True)
    assert top[0]["value"] == pytest.approx(float(np.max(columns["prob_carcinoma"])), abs=1e-4)
    assert "seconds" not in json.dumps(s)  # run-dependent score metadata stays out


def test_ihc_slide_carries_its_ihc_result(cohort):
    s = _summary(cohort, "S2")
    ihc = json.loads((cohort / "slides" / "S2" / "ihc.json").read_text())
    assert s["kind"] == "IHC" and s["slide_call"] is None
    assert s["ihc"]["result"] == ihc["result"] and s["ihc"]["metrics"] == ihc["metrics"]
    assert s["stain_check"] == ihc["stain_check"]
    metric = ihc["result"]["metric"]
    assert s["top_tiles"][metric]["measure"] == metric


def test_failed_slide_gets_a_summary_with_a_redacted_one_line_reason(cohort):
    s = _summary(cohort, "S3")
    assert s["status"] == "failed"
    assert s["reason"].startswith("QC failed:") and "\n" not in s["reason"]
    assert s["slide_call"]["call"] == "refer" and s["slide_call"]["reason"].startswith("not assessed:")
    text = (cohort / "slides" / "S3" / "summary.json").read_text()
    assert "broken_slide" not in text and str(cohort.parent) not in text
    assert "<slide file>" in s["reason"]


def test_summary_is_byte_identical_when_rerun_elsewhere(cohort, tmp_path):
    """The same slide under another name in another folder, every stage re-run: the same summary bytes."""
    for slide_id, name in (("S1", "he_slide.svs"), ("S3", "broken_slide.svs")):
        renamed = tmp_path / "other place" / f"renamed {slide_id}.svs"
        renamed.parent.mkdir(exist_ok=True)
        shutil.copy(cohort.parent / "slides" / name, renamed)
        results = tmp_path / "results"
        d = run_stages(renamed, slide_id, "HE", results)
        out = d / "summary.json"
        assert main(["summarize-slide", "--slide-id", slide_id, "--case-id", SLIDES[slide_id][0], "--stain", "HE",
                     "--slide", str(renamed), "--qc", str(d / "qc.json"), "--tiles", str(d / "tiles.parquet"),
                     "--scores", str(d / "scores.parquet"), "--ihc", "--ihc-tiles", "--config", CONFIG,
                     "--out", str(out)]) == 0
        assert out.read_bytes() == (cohort / "slides" / slide_id / "summary.json").read_bytes(), slide_id


def test_fast_hash_sees_size_head_and_tail_and_full_hash_is_sha256(tmp_path):
    from pipeline.atomic import file_sha256
    from pipeline.outputs.provenance import HEAD_TAIL_BYTES, fast_file_hash

    data = bytearray(np.random.default_rng(0).integers(0, 256, 3 * HEAD_TAIL_BYTES, dtype=np.uint8).tobytes())
    p = tmp_path / "f.bin"
    p.write_bytes(data)
    base = fast_file_hash(p)
    assert base["size_bytes"] == len(data) and not base["includes_openslide_quickhash"]
    assert file_sha256(p) == hashlib.sha256(data).hexdigest()
    for where in (0, len(data) - 1):  # head and tail bytes change the hash
        changed = bytearray(data)
        changed[where] ^= 0xFF
        p.write_bytes(changed)
        assert fast_file_hash(p)["fast_sha256"] != base["fast_sha256"]
    p.write_bytes(data + b"x")
    assert fast_file_hash(p)["fast_sha256"] != base["fast_sha256"]
    p.write_bytes(data)
    assert fast_file_hash(p) == base


def test_provenance_hashes_the_science_not_the_paths():
    from pipeline.config import load_config
    from pipeline.outputs.provenance import science_config_hash

    config = load_config(CONFIG)
    moved = {**config, "samples": "/elsewhere/samples.tsv", "results": "/tmp/r", "model": "/m"}
    assert science_config_hash(moved) == science_config_hash(config)
    changed = json.loads(json.dumps(config))
    changed["slide_call"]["min_confidence"] = 0.9
    assert science_config_hash(changed) != science_config_hash(config)


def test_redact_and_round_floats():
    from pipeline.outputs.summary import redact, round_floats

    text = "/data/scans/CMU-1.svs: TIFF structure is broken; see CMU-1.svs"
    assert redact(text, "/data/scans/CMU-1.svs") == "<slide file>: TIFF structure is broken; see <slide file>"
    assert round_floats({"a": np.float32(0.1), "b": [float("nan"), 2], "c": np.int64(3), "d": True}) == \
        {"a": 0.1, "b": [None, 2], "c": 3, "d": True}


def test_missing_scores_fail_the_slide_not_the_cohort(cohort, tmp_path):
    d = cohort / "slides" / "S1"
    out = tmp_path / "s.json"
    assert main(["summarize-slide", "--slide-id", "S1", "--case-id", "C1", "--stain", "HE", "--qc",
                 str(d / "qc.json"), "--tiles", str(d / "tiles.parquet"), "--scores", str(tmp_path / "none.parquet"),
                 "--config", CONFIG, "--out", str(out)]) == 0
    s = json.loads(out.read_text())
    assert s["status"] == "failed" and "no tile scores" in s["reason"] and s["provenance"]["slide_file"] is None


def test_every_schema_property_has_a_description():
    from pipeline.config import load_schema

    def walk(node, where):
        if isinstance(node, dict):
            for name, sub in (node.get("properties") or {}).items():
                assert "description" in sub or "$ref" in sub, f"{where}.{name}"
                walk(sub, f"{where}.{name}")
            for key in ("items", "additionalProperties", "$defs"):
                if isinstance(node.get(key), dict):
                    walk(node[key], f"{where}[{key}]")
            for name, sub in (node.get("$defs") or {}).items():
                walk(sub, f"{where}.$defs.{name}")

    for name in ("summary", "geojson"):
        walk(load_schema(name), name)
