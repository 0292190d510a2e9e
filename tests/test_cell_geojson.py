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


def _reference_geojson(slide_id: str, tables: list[dict], level0_mpp: float) -> bytes:
    """cells.geojson built one cell at a time with Python's round and json.dumps (the writer before it was built
    column by column): what the fast writer must reproduce byte for byte."""
    import uuid

    from pipeline.outputs.cell_geojson import CELL_NAMESPACE, SET_ASIDE_COLOUR
    from pipeline.outputs.geojson import IHC_COLOURS, _number

    features = []
    for t in tables:
        for i in range(len(t["x0"])):
            x0, y0 = float(t["x0"][i]), float(t["y0"][i])
            a = max(float(t["length_um"][i]) / level0_mpp / 2, 0.5)
            b = max(float(t["width_um"][i]) / level0_mpp / 2, 0.5)
            angle = float(t["angle_rad"][i])
            s = np.linspace(0.0, 2 * np.pi, 12, endpoint=False)
            ex, ey = a * np.cos(s), b * np.sin(s)
            xs = x0 + ex * np.cos(angle) - ey * np.sin(angle)
            ys = y0 + ex * np.sin(angle) + ey * np.cos(angle)
            ring = [[round(float(x), 2), round(float(y), 2)] for x, y in zip(xs, ys, strict=True)]
            if not t["tumour_like"][i]:
                name, colour = SET_ASIDE, SET_ASIDE_COLOUR
            else:
                name = "Positive" if t["dab_class"][i] > 0 else "Negative"
                colour = IHC_COLOURS[name]
            m = {"Nucleus: Area µm^2": t["area_um2"][i], "Nucleus: Width µm": t["width_um"][i],
                 "Nucleus: Length µm": t["length_um"][i], "Nucleus: DAB OD mean": t["nucleus_dab"][i],
                 "Cytoplasm: DAB OD mean": t["ring_dab"][i], "DAB class": int(t["dab_class"][i])}
            if t["her2_class"][i] >= 0:
                m["HER2-style research class"] = int(t["her2_class"][i])
            features.append({
                "type": "Feature", "id": str(uuid.uuid5(CELL_NAMESPACE, f"{slide_id}:{x0:.1f}:{y0:.1f}")),
                "geometry": {"type": "Polygon", "coordinates": [ring + [ring[0]]]},
                "properties": {"objectType": "detection", "classification": {"name": name, "color": list(colour)},
                               "measurements": {k: n for k, v in m.items() if (n := _number(v)) is not None}}})
    doc = {"type": "FeatureCollection", "features": features}
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _odd_table(n: int = 40, seed: int = 1) -> dict:
    """A membranous-style cell table with what the writer must get right: set-aside cells, NaN and tiny
    (exponent-written) measurements, HER2 classes and none (-1), negative and rounding-edge coordinates."""
    rng = np.random.default_rng(seed)
    t = {"x0": rng.uniform(-50, 60000, n), "y0": rng.uniform(0, 40000, n), "area_um2": rng.uniform(5, 90, n),
         "width_um": rng.uniform(1, 9, n), "length_um": rng.uniform(3, 14, n), "angle_rad": rng.uniform(-1.6, 1.6, n),
         "tumour_like": rng.random(n) > 0.3, "nucleus_dab": rng.uniform(0, 0.9, n).astype(np.float32),
         "ring_dab": rng.uniform(0, 0.9, n), "dab_class": rng.integers(0, 4, n).astype(np.uint8),
         "her2_class": rng.integers(-1, 4, n).astype(np.int8)}
    t["ring_dab"][::5] = np.nan  # left out
    if n < 10:
        return t
    t["nucleus_dab"][3], t["ring_dab"][4], t["area_um2"][6] = 5e-05, 2.5e-05, 0.0  # repr: 5e-05, 2.5e-05, 0.0
    t["x0"][7], t["y0"][7] = 1000.125, 2000.375  # halves, at the id's one decimal
    t["x0"][8], t["length_um"][8], t["width_um"][8], t["angle_rad"][8] = 1000.005, 0.0, 0.0, 0.0  # 0.5 px ellipse
    t["width_um"][9] = np.nan  # the outline's own NaN (json writes NaN)
    return t


def test_fast_writer_is_byte_for_byte_json_dumps(tmp_path):
    tables = [_odd_table(), _table(), _odd_table(0), _odd_table(7, seed=2)]
    tables[1]["her2_class"] = np.array([2, -1, 0], np.int8)  # a HER2 class on a real cell table too
    out = tmp_path / "cells.geojson"
    assert write_cells_geojson(out, "S-HER2 µ", tables, LEVEL0_MPP) == 40 + 3 + 7
    assert out.read_bytes() == _reference_geojson("S-HER2 µ", tables, LEVEL0_MPP)
    doc = json.loads(out.read_text())
    assert {"Positive", "Negative", SET_ASIDE} <= {f["properties"]["classification"]["name"] for f in doc["features"]}
    assert any("HER2-style research class" in f["properties"]["measurements"] for f in doc["features"])
    assert any("Cytoplasm: DAB OD mean" not in f["properties"]["measurements"] for f in doc["features"])
