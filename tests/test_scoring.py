"""score-tiles on generated slides (probabilities, coordinates, failed/empty grids, scale refusal) and the
shipped model's slide calls on the real reference slides."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_models import write_model

from conftest import blob_image, write_pyramid_tiff
from pipeline.he.scoring import read_scores, score_tiles
from pipeline.slides.tiling import TileGrid, read_tile_grid, write_tile_grid

ROOT = Path(__file__).resolve().parents[1]


def _grid(slide_path, meta_overrides=None, tile_px=224, target_mpp=1.0):
    """Every whole tile of the slide (no tissue detection), as tile-slide would write it."""
    from pipeline.slides.reader import open_slide

    with open_slide(slide_path) as s:
        size0 = tile_px * target_mpp / s.mpp
        w, h = s.dimensions
        xs = np.round(np.arange(int(w // size0)) * size0).astype(np.int64)
        ys = np.round(np.arange(int(h // size0)) * size0).astype(np.int64)
        gx, gy = (a.ravel() for a in np.meshgrid(xs, ys))
        level, _, eff = s.tile_geometry(tile_px, target_mpp)
        meta = {"slide_id": "gen", "status": "ok", "reason": "", "target_mpp": target_mpp, "tile_px": tile_px,
                "mpp": s.mpp, "level": level, "effective_mpp": eff, "width_px": w, "height_px": h}
    meta.update(meta_overrides or {})
    return TileGrid(gx, gy, np.ones(len(gx), np.float32), meta)


@pytest.fixture(scope="module")
def gen_slide(tmp_path_factory):
    """A 1792 x 1344 px slide at 0.5 um/px (4 x 3 tiles of 224 px at 1 um/px), two levels."""
    path = tmp_path_factory.mktemp("slide") / "gen.svs"
    return write_pyramid_tiff(path, blob_image(1792, 1344, seed=3), mpp=0.5, levels=2, aperio=True)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return write_model(tmp_path_factory.mktemp("model"))


def _score_cli(*args):
    return subprocess.run([sys.executable, "-m", "pipeline", "score-tiles", *map(str, args)],
                          capture_output=True, text=True, timeout=120)


def _score(capsys, *args) -> tuple[int, str]:
    """The CLI in-process (no interpreter start-up): (exit status, stderr)."""
    from pipeline.__main__ import main

    capsys.readouterr()
    rc = main(["score-tiles", *map(str, args)])
    return rc, capsys.readouterr().err


def test_score_tiles_cli_on_generated_slide(gen_slide, model_dir, tmp_path):
    write_tile_grid(tmp_path / "tiles.parquet", _grid(gen_slide))
    out = tmp_path / "scores.parquet"
    proc = _score_cli("--slide", gen_slide, "--tiles", tmp_path / "tiles.parquet", "--model", model_dir,
                      "--out", out, "--threads", "2", "--batch-size", "16", "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    cols, meta = read_scores(out)
    assert list(cols) == ["x", "y", "prob_carcinoma", "prob_sarcoma", "prob_non_tumour", "ood_model",
                          "ood_tile_check", "ood_score"]
    assert cols["x"].dtype == np.int64 and cols["prob_sarcoma"].dtype == np.float32
    assert np.array_equal(cols["ood_score"], np.maximum(cols["ood_model"], cols["ood_tile_check"]))
    assert meta["tile_check"]["min_sharpness"] > 0  # the thresholds used travel with the scores
    assert len(cols["x"]) == 12
    total = cols["prob_carcinoma"] + cols["prob_sarcoma"] + cols["prob_non_tumour"]
    assert np.allclose(total, 1.0, atol=1e-5)
    assert (cols["x"] >= 0).all() and (cols["x"] + 448 <= 1792).all()
    assert (cols["y"] >= 0).all() and (cols["y"] + 448 <= 1344).all()
    assert meta["status"] == "ok" and meta["model_id"] == "test-model" and len(meta["weights_sha256"]) == 64
    assert meta["classes"] == ["carcinoma", "sarcoma", "non_tumour"] and meta["effective_mpp"] == 1.0
    assert not list(tmp_path.glob(".*.tmp"))


def test_tile_check_disabled_leaves_the_model_distance(gen_slide, model_dir, tmp_path, capsys):
    """config tile_check.enabled: false -> no ood_tile_check column, ood_score = ood_model; bad JSON is refused."""
    write_tile_grid(tmp_path / "tiles.parquet", _grid(gen_slide))
    args = ["--slide", gen_slide, "--tiles", tmp_path / "tiles.parquet", "--model", model_dir,
            "--out", tmp_path / "scores.parquet", "--device", "cpu"]
    rc, err = _score(capsys, *args, "--tile-check", '{"enabled": false}')
    assert rc == 0, err
    cols, meta = read_scores(tmp_path / "scores.parquet")
    assert "ood_tile_check" not in cols and meta["tile_check"] is False
    assert np.array_equal(cols["ood_score"], cols["ood_model"])
    rc, err = _score(capsys, *args, "--tile-check", '{"min_sharpnes": 0.2}')
    assert rc != 0 and "--tile-check" in err and "min_sharpness" in err


def test_readers_and_precisions_agree(gen_slide, model_dir):
    from pipeline.he.models import load_model

    model, card = load_model(model_dir)
    grid = _grid(gen_slide)
    a, meta = score_tiles(gen_slide, grid, model, card, batch_size=16, precision="fp32", reader="threads")
    b, _ = score_tiles(gen_slide, grid, model, card, batch_size=16, precision="fp32", reader="processes",
                       readers=1)
    c, meta_bf16 = score_tiles(gen_slide, grid, model, card, batch_size=16, precision="bf16")
    assert np.array_equal(a["prob_carcinoma"], b["prob_carcinoma"]) and np.array_equal(a["x"], b["x"])
    diff = max(np.abs(a[k] - c[k]).max() for k in ("prob_carcinoma", "prob_sarcoma", "prob_non_tumour"))
    assert meta["precision"] == "fp32" and meta_bf16["precision"] == "bf16"
    assert diff < 0.05, f"bf16 vs fp32 max probability difference {diff:.4f}"


def test_failed_grid_gives_empty_table_and_exit_0(gen_slide, model_dir, tmp_path, capsys):
    grid = TileGrid(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32),
                    {"slide_id": "bad", "status": "failed", "reason": "QC failed: no tissue", "target_mpp": 1.0,
                     "tile_px": 224})
    write_tile_grid(tmp_path / "tiles.parquet", grid)
    rc, err = _score(capsys, "--slide", tmp_path / "missing.svs", "--tiles", tmp_path / "tiles.parquet",
                     "--model", model_dir, "--out", tmp_path / "s.parquet")
    assert rc == 0, err
    cols, meta = read_scores(tmp_path / "s.parquet")
    assert len(cols["x"]) == 0 and "prob_carcinoma" in cols
    assert meta["status"] == "failed" and "no tissue" in meta["reason"]


def test_empty_grid_gives_empty_table(gen_slide, model_dir, tmp_path, capsys):
    grid = _grid(gen_slide, {"status": "empty", "reason": "no tile reaches the minimum tissue fraction"})
    grid = TileGrid(grid.x[:0], grid.y[:0], grid.tissue_fraction[:0], grid.meta)
    write_tile_grid(tmp_path / "tiles.parquet", grid)
    rc, err = _score(capsys, "--slide", gen_slide, "--tiles", tmp_path / "tiles.parquet", "--model", model_dir,
                     "--out", tmp_path / "s.parquet")
    assert rc == 0, err
    cols, meta = read_scores(tmp_path / "s.parquet")
    assert len(cols["x"]) == 0 and meta["status"] == "empty"


def test_grid_at_another_scale_is_refused(gen_slide, model_dir, tmp_path, capsys):
    write_tile_grid(tmp_path / "tiles.parquet", _grid(gen_slide, target_mpp=0.5))
    rc, err = _score(capsys, "--slide", gen_slide, "--tiles", tmp_path / "tiles.parquet", "--model", model_dir,
                     "--out", tmp_path / "s.parquet")
    assert rc == 2
    assert "0.5 um/px" in err and "expects 1 um/px" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "s.parquet").exists()


# ---- a model without OOD statistics ----------------------------------------------------------------------
@pytest.mark.parametrize("lacks", [{"ood_scale": 0.0}, {"ood": None}, {"ood_scale": 0.0, "ood": None}],
                         ids=["weights", "card", "both"])
def test_model_without_ood_statistics_is_refused(gen_slide, tmp_path, capsys, lacks):
    model = write_model(tmp_path, **lacks)
    write_tile_grid(tmp_path / "tiles.parquet", _grid(gen_slide))
    rc, err = _score(capsys, "--slide", gen_slide, "--tiles", tmp_path / "tiles.parquet", "--model", model,
                     "--out", tmp_path / "s.parquet", "--device", "cpu")
    assert rc == 2
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "s.parquet").exists()
    assert err.startswith(f"error: {model}: model test-model has no out-of-distribution statistics"), err
    assert "slide_call.require_ood: false" in err and "re-train" in err


def test_opt_out_scores_without_ood_and_every_output_says_so(gen_slide, tmp_path, capsys):
    """slide_call.require_ood: false (--allow-no-ood): scored, no ood_score column, and the summary, worklist
    and review page say "no out-of-distribution check"."""
    from pipeline.__main__ import main
    from pipeline.outputs import report_html, worklist

    model = write_model(tmp_path, ood_scale=0.0, ood=None)
    write_tile_grid(tmp_path / "tiles.parquet", _grid(gen_slide))
    rc, err = _score(capsys, "--slide", gen_slide, "--tiles", tmp_path / "tiles.parquet", "--model", model,
                     "--out", tmp_path / "scores.parquet", "--device", "cpu", "--allow-no-ood")
    assert rc == 0, err
    cols, meta = read_scores(tmp_path / "scores.parquet")
    # no ood_score column: zeros would read as "in distribution" (the tile check alone is kept, for reading)
    assert list(cols) == ["x", "y", "prob_carcinoma", "prob_sarcoma", "prob_non_tumour", "ood_tile_check"]
    assert len(cols["x"]) == 12 and meta["status"] == "ok" and meta["ood_check"] is False

    (tmp_path / "qc.json").write_text('{"status": "ok", "reasons": [], "metrics": {"tissue_area_mm2": 0.6}}')
    assert main(["summarize-slide", "--slide-id", "gen", "--case-id", "C1", "--stain", "HE", "--slide", str(gen_slide),
                 "--qc", str(tmp_path / "qc.json"), "--tiles", str(tmp_path / "tiles.parquet"), "--scores",
                 str(tmp_path / "scores.parquet"), "--config", str(ROOT / "configs" / "config.yaml"),
                 "--out", str(tmp_path / "summary.json")]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["scores"]["has_ood_score"] is False and "ood" not in summary["top_tiles"]
    assert summary["status"] == "warn" and summary["reason"].startswith("no out-of-distribution check: model "
                                                                        "test-model has no out-of-distribution")
    assert any(w.startswith("no out-of-distribution check") for w in summary["warnings"])

    rows = worklist.worklist_rows({}, [summary])
    assert "no out-of-distribution check" in worklist.worklist_tsv(rows)
    page = report_html.render_html(rows, {}, [summary], {})
    assert "No out-of-distribution check</strong> on 1 H&amp;E slide (gen)" in page
    assert "<dt>unlike training data</dt><dd>no out-of-distribution check</dd>" in page


def test_shipped_model_has_ood_statistics():
    """The sample cohort keeps its OOD check under the default slide_call.require_ood: true."""
    from pipeline.he.models import load_model, missing_ood_statistics

    assert missing_ood_statistics(*load_model(_shipped_model_dir())) is None


def test_unreadable_pixels_give_failed_table(model_dir, tmp_path, capsys):
    """A slide that opens but whose tiles cannot be decoded: failed status, exit 0 (the cohort goes on)."""
    data = Path(__file__).resolve().parents[2] / "shared" / "data" / "bad" / "unreadable.svs"
    if not data.is_file():
        pytest.skip(f"real reference data not found at {data.parent}")
    grid = TileGrid(np.array([0], np.int64), np.array([0], np.int64), np.ones(1, np.float32),
                    {"slide_id": "unreadable", "status": "ok", "target_mpp": 1.0, "tile_px": 224})
    write_tile_grid(tmp_path / "tiles.parquet", grid)
    rc, err = _score(capsys, "--slide", data, "--mpp", "0.5", "--tiles", tmp_path / "tiles.parquet",
                     "--model", model_dir, "--out", tmp_path / "s.parquet")
    assert rc == 0, err  # the slide opens (its header is sound); its first tile's JPEG is damaged
    meta = read_scores(tmp_path / "s.parquet")[1]
    assert meta["status"] == "failed" and "tile 0 of level 0 cannot be decoded" in meta["reason"]
    assert "unreadable.svs" not in meta["reason"]  # redacted: the file name never leaves


# ---- the shipped model on real slides -----------------------------------------------------------------------
def _shipped_model_dir() -> Path:
    from pipeline.config import load_schema

    path = ROOT / load_schema("config")["properties"]["model"]["default"]
    assert (path / "card.json").is_file(), f"no shipped model at {path}"
    return path


def _call_real_slide(path, mpp=None):
    """QC -> tile grid -> scores -> slide call, with the project's default config."""
    from pipeline.config import load_config
    from pipeline.he.models import load_model
    from pipeline.he.slide_call import call_slide
    from pipeline.slides.qc import qc_slide
    from pipeline.slides.reader import open_slide
    from pipeline.slides.tiling import grid_for_slide

    config = load_config(ROOT / "configs" / "config.yaml")
    model, card = load_model(_shipped_model_dir())
    with open_slide(path, mpp=mpp) as slide:
        record, _, mask = qc_slide(slide, config)
        grid = grid_for_slide(slide, mask, record["thumb_mpp"], config["tiling"], path.stem)
    cols, _ = score_tiles(path, grid, model, card, mpp=mpp)
    probs = {c: cols[f"prob_{c}"] for c in card["classes"]}
    tile_mm2 = (card["tile_px"] * card["mpp"] / 1000) ** 2
    return call_slide(probs, cols["ood_score"], record["status"], record["metrics"]["tissue_area_mm2"], tile_mm2,
                      config["slide_call"])


def test_real_squamous_carcinoma_is_never_called_sarcoma(shared_data):
    result = _call_real_slide(shared_data / "slides" / "tcga-cr-7395-01a-01-ts1.svs", mpp=1.0)
    assert result["call"] in {"carcinoma", "refer"}, result["reason"]
    assert result["call"] == "carcinoma" or result["leading_call"] != "sarcoma" or result["confidence"] > 0.5


def test_real_skin_without_tumour_is_never_a_confident_tumour_call(shared_data):
    result = _call_real_slide(shared_data / "slides" / "cmu_small_region.svs")
    assert result["call"] in {"no_tumour", "refer"}, result["reason"]


def test_tiles_parquet_from_tile_slide_is_scored(shared_data, model_dir, tmp_path, capsys):
    """The real interface between the stages: tile-slide's grid file goes straight into score-tiles."""
    slide = shared_data / "slides" / "cmu_small_region.svs"
    proc = subprocess.run([sys.executable, "-m", "pipeline", "tile-slide", "--slide", str(slide),
                           "--out", str(tmp_path / "tiles.parquet")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    rc, err = _score(capsys, "--slide", slide, "--tiles", tmp_path / "tiles.parquet", "--model", model_dir,
                     "--out", tmp_path / "s.parquet")
    assert rc == 0, err
    cols, meta = read_scores(tmp_path / "s.parquet")
    grid = read_tile_grid(tmp_path / "tiles.parquet")
    assert np.array_equal(cols["x"], grid.x) and meta["effective_mpp"] == grid.meta["effective_mpp"]
