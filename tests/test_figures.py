"""Pictures: deterministic PNGs, heat placed on the right tiles, scale bar length, contact sheet, placeholders."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from test_summary import make_mini_cohort

from pipeline.__main__ import main
from pipeline.outputs import drawing, pictures

PICTURES = ("heatmap.png", "tissue_overlay.png", "top_tiles.png")


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("SLIDE_TRIAGE_GIT_COMMIT", "0" * 40)
    yield make_mini_cohort(tmp_path_factory.mktemp("mini_figures"))
    mp.undo()


def test_every_slide_has_its_pictures_failed_ones_too(cohort):
    for slide_id in ("S1", "S2", "S3"):
        for name in PICTURES:
            with Image.open(cohort / "slides" / slide_id / name) as im:
                assert im.format == "PNG" and im.mode == "RGB" and im.width >= 480 and im.height >= 100
                assert not im.info, "PNG carries metadata chunks"  # no time stamps or text


def test_pictures_are_byte_identical_when_redrawn(cohort, tmp_path):
    d = cohort / "slides" / "S1"
    slide = next((cohort.parent / "slides").glob("he_slide.svs"))
    out = {name: tmp_path / name for name in PICTURES}
    assert main(["draw-slide", "--summary", str(d / "summary.json"), "--slide", str(slide), "--thumb",
                 str(d / "thumb.png"), "--mask", str(d / "tissue.png"), "--tiles", str(d / "tiles.parquet"),
                 "--scores", str(d / "scores.parquet"), "--ihc-tiles", "--out-heatmap", str(out["heatmap.png"]),
                 "--out-tissue", str(out["tissue_overlay.png"]), "--out-top-tiles", str(out["top_tiles.png"])]) == 0
    for name, path in out.items():
        assert path.read_bytes() == (d / name).read_bytes(), name


def test_top_tiles_sheet_shows_full_resolution_tiles(cohort):
    summary = json.loads((cohort / "slides" / "S1" / "summary.json").read_text())
    n = len(summary["top_tiles"]["carcinoma"]["tiles"]) + len(summary["top_tiles"]["sarcoma"]["tiles"])
    with Image.open(cohort / "slides" / "S1" / "top_tiles.png") as im:
        tile_px = summary["tiles"]["tile_px"]
        assert im.width >= min(8, n // 2) * tile_px  # a row of tiles at full size


def test_heat_overlay_colours_exactly_the_tile_boxes():
    base = np.full((50, 80, 3), 255, np.uint8)
    boxes = drawing.tile_boxes(np.array([0, 400]), np.array([0, 200]), 200.0, 10.0, base.shape)
    assert boxes.tolist() == [[0, 0, 20, 20], [40, 20, 60, 40]]
    out = drawing.heat_overlay(base, boxes, np.array([1.0, np.nan]), 0.0, 1.0, alpha=1.0)
    assert tuple(out[5, 5]) == tuple(drawing.COLORMAP[255])   # value 1 -> top of the colour map
    assert tuple(out[30, 50]) == (255, 255, 255)                # NaN: left clear
    assert tuple(out[45, 75]) == (255, 255, 255)                # outside every tile


def test_colour_map_is_ordered_dark_to_light():
    lum = drawing.COLORMAP.astype(float) @ np.array([0.299, 0.587, 0.114])
    assert np.all(np.diff(lum) > -1.0) and lum[-1] - lum[0] > 150
    assert tuple(drawing.colorize(np.array([-1.0]))[0]) == tuple(drawing.COLORMAP[0])


@pytest.mark.parametrize("um_per_px,expected_mm", [(2.0, 0.2), (8.0, 1.0), (40.0, 5.0)])
def test_scale_bar_has_the_stated_length(um_per_px, expected_mm):
    from PIL import ImageDraw

    im = Image.new("RGB", (800, 200), (255, 255, 255))
    drawing.scale_bar(ImageDraw.Draw(im), 800, 200, um_per_px)
    bar = np.asarray(im)[200 - 14 + 2]  # a row through the bar
    black = np.flatnonzero(bar.sum(axis=1) == 0)
    length_px = black.max() - black.min()
    assert length_px == pytest.approx(expected_mm * 1000 / um_per_px, abs=1)


def test_contact_sheet_places_each_tile_read_at_its_position():
    summary = {"slide_id": "S", "stain": "HE", "case_id": "C", "status": "ok", "kind": "HE", "reason": "",
               "slide_call": {"call": "carcinoma", "confidence": 0.9, "reason": "r"}, "tiles": {"target_mpp": 1.0},
               "top_tiles": {"carcinoma": {"measure": "prob_carcinoma",
                                           "tiles": [{"x": 0, "y": 0, "value": 0.9}, {"x": 1, "y": 0, "value": 0.8}]}}}
    colours = {0: (250, 0, 0), 1: (0, 250, 0)}
    sheet = np.asarray(pictures.contact_sheet(summary, lambda x, y: np.full((32, 32, 3), colours[x], np.uint8), 32))
    reds = np.all(sheet == (250, 0, 0), axis=-1)
    greens = np.all(sheet == (0, 250, 0), axis=-1)
    assert reds.sum() > 200 and greens.sum() > 200
    assert np.flatnonzero(reds.any(0)).max() < np.flatnonzero(greens.any(0)).min()  # best tile first (left)


def test_placeholder_says_why(tmp_path):
    im = drawing.placeholder("S9 - HE", "QC failed: no tissue")
    assert im.width >= 480
    gray = np.asarray(im.convert("L"))
    assert (gray < 128).sum() > 200  # there is text on it
