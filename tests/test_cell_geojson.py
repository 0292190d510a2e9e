"""cells.geojson (pipeline/outputs/cell_geojson.py): the cells an IHC slide was read on, as QuPath detections at
level 0: positive / negative / set aside, nucleus ellipses where the nuclei are, measurements, stable bytes."""

from __future__ import annotations

import json

import numpy as np
import pytest
from skimage.draw import ellipse

from pipeline.ihc.cells import cell_table
from pipeline.outputs.cell_geojson import SET_ASIDE, write_cells_geojson
from pipeline.outputs.geojson import geojson_problems

MPP = 0.5  # the tile's um/px
LEVEL0_MPP = 0.25  # the slide's level 0: one tile pixel = 2 level-0 px


def _table():
    lab = np.zeros((120, 120), np.int32)
    for i, (r, c, a, b) in enumerate([(30, 30, 5.5, 4.0), (30, 90, 5.0, 4.5), (90, 60, 6.0, 1.3)], start=1):
        rr, cc = ellipse(r, c, a / MPP, b / MPP, shape=lab.shape)
        lab[rr, cc] = i
    h = np.where(lab > 0, 0.5, 0.02)
    dab = np.where(lab == 1, 0.8, 0.0)
    t = cell_table(lab, h, dab, MPP, "nuclear", tumour_cells=(55.0, 5.5))
    x_tile, y_tile = 1000, 2000  # the tile's level-0 top-left
    t["x0"] = x_tile + (t["cx_px"] + 0.5) * MPP / LEVEL0_MPP
    t["y0"] = y_tile + (t["cy_px"] + 0.5) * MPP / LEVEL0_MPP
    return t


def test_cells_are_detections_at_level0_with_their_classes(tmp_path):
    t = _table()
    out = tmp_path / "cells.geojson"
    assert write_cells_geojson(out, "S-ER", [t], LEVEL0_MPP) == 3
    doc = json.loads(out.read_text())
    assert geojson_problems(doc) == []
    names = [f["properties"]["classification"]["name"] for f in doc["features"]]
    assert names == ["Positive", "Negative", SET_ASIDE]  # the narrow (fibroblast-like) nucleus is set aside
    for f, x0, y0 in zip(doc["features"], t["x0"], t["y0"], strict=True):
        ring = np.array(f["geometry"]["coordinates"][0])
        assert f["properties"]["objectType"] == "detection" and (ring[0] == ring[-1]).all()
        assert ring[:-1].mean(axis=0) == pytest.approx([x0, y0], abs=0.05)
        assert "Nucleus: Area µm^2" in f["properties"]["measurements"]
    # the first nucleus: 11 x 8 um drawn; in level-0 px (0.25 um/px) the ellipse spans about 44 x 32 px
    ring = np.array(doc["features"][0]["geometry"]["coordinates"][0])
    assert np.ptp(ring[:, 1]) == pytest.approx(44, abs=3) and np.ptp(ring[:, 0]) == pytest.approx(32, abs=3)
    first = out.read_bytes()
    write_cells_geojson(out, "S-ER", [t], LEVEL0_MPP)
    assert out.read_bytes() == first


def test_no_cells_is_an_empty_collection(tmp_path):
    out = tmp_path / "cells.geojson"
    assert write_cells_geojson(out, "S-ER", [], LEVEL0_MPP) == 0
    doc = json.loads(out.read_text())
    assert doc == {"type": "FeatureCollection", "features": []} and geojson_problems(doc) == []
