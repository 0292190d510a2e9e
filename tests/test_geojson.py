"""QuPath GeoJSON: structure against the schema of QuPath's documented import format, ids, geometry, classes."""

from __future__ import annotations

import json
import uuid

import numpy as np
import pytest
from test_summary import make_mini_cohort

from pipeline.outputs.geojson import (
    TILE_NAMESPACE,
    geojson_problems,
    he_tile_features,
    ihc_tile_features,
    mask_polygons,
    tile_id,
)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("SLIDE_TRIAGE_GIT_COMMIT", "0" * 40)
    yield make_mini_cohort(tmp_path_factory.mktemp("mini_geojson"))
    mp.undo()


def _load(results, slide_id):
    return json.loads((results / "slides" / slide_id / "tiles.geojson").read_text())


def test_every_geojson_matches_the_schema(cohort):
    for slide_id in ("S1", "S2", "S3"):
        assert geojson_problems(_load(cohort, slide_id)) == [], slide_id


def test_he_tiles_are_classified_squares_at_level0_with_probabilities(cohort):
    from pipeline.he.scoring import read_scores
    from pipeline.slides.tiling import read_tile_grid

    collection = _load(cohort, "S1")
    grid = read_tile_grid(cohort / "slides" / "S1" / "tiles.parquet")
    columns, _ = read_scores(cohort / "slides" / "S1" / "scores.parquet")
    tiles = [f for f in collection["features"] if f["properties"]["objectType"] == "tile"]
    assert len(tiles) == len(grid)
    size = grid.meta["tile_size_level0"]
    for i, f in enumerate(tiles):
        x, y = int(columns["x"][i]), int(columns["y"][i])
        ring = f["geometry"]["coordinates"][0]
        assert ring == [[x, y], [x + size, y], [x + size, y + size], [x, y + size], [x, y]]
        m = f["properties"]["measurements"]
        probs = [columns[f"prob_{c}"][i] for c in ("carcinoma", "sarcoma", "non_tumour")]
        assert m["prob_carcinoma"] == pytest.approx(float(probs[0]), abs=1e-6)
        assert f["properties"]["classification"]["name"] == ("carcinoma", "sarcoma", "non_tumour")[np.argmax(probs)]
        assert f["id"] == str(uuid.uuid5(TILE_NAMESPACE, f"S1:{x}:{y}"))
    assert len({f["id"] for f in collection["features"]}) == len(collection["features"])


def test_tissue_outline_is_an_annotation_inside_the_slide(cohort):
    collection = _load(cohort, "S1")
    tissue = [f for f in collection["features"] if f["properties"]["objectType"] == "annotation"]
    assert len(tissue) == 1 and tissue[0]["properties"]["classification"]["name"] == "Tissue"
    ring = np.array(tissue[0]["geometry"]["coordinates"][0])
    # the generated slide is 3072 x 2304 with an ellipse centred in it, semi-axes 33 % and 30 % of the sides
    assert ring[:, 0].min() == pytest.approx(3072 * (0.5 - 0.33), abs=12)
    assert ring[:, 0].max() == pytest.approx(3072 * (0.5 + 0.33), abs=12)
    assert ring[:, 1].min() == pytest.approx(2304 * (0.5 - 0.30), abs=12)


def test_ihc_tiles_are_positive_or_negative_by_the_cutoff(cohort):
    summary = json.loads((cohort / "slides" / "S2" / "summary.json").read_text())
    result = summary["ihc"]["result"]
    tiles = [f for f in _load(cohort, "S2")["features"] if f["properties"]["objectType"] == "tile"]
    assert tiles
    for f in tiles:
        value = f["properties"]["measurements"].get(result["metric"])
        if value is not None:
            expected = "Positive" if value >= result["cutoff"] else "Negative"
            assert f["properties"]["classification"]["name"] == expected


def test_failed_slide_gives_an_empty_collection(cohort):
    assert _load(cohort, "S3") == {"type": "FeatureCollection", "features": []}


def test_geojson_is_byte_stable(cohort, tmp_path):
    from pipeline.__main__ import main

    d = cohort / "slides" / "S1"
    out = tmp_path / "again.geojson"
    assert main(["export-geojson", "--summary", str(d / "summary.json"), "--tiles", str(d / "tiles.parquet"),
                 "--mask", str(d / "tissue.png"), "--scores", str(d / "scores.parquet"), "--ihc-tiles",
                 "--out", str(out)]) == 0
    assert out.read_bytes() == (d / "tiles.geojson").read_bytes()


def test_mask_polygons_trace_pieces_and_holes_in_level0_units():
    mask = np.zeros((40, 60), bool)
    mask[5:25, 10:40] = True       # a 30 x 20 px rectangle ...
    mask[10:15, 20:25] = False     # ... with a 5 x 5 hole
    mask[30:35, 50:55] = True      # and a separate 5 x 5 piece
    polygons = mask_polygons(mask, level0_per_mask_px=8.0)
    assert len(polygons) == 2

    def area(ring):
        x, y = ring[:, 0], ring[:, 1]
        return abs(0.5 * (np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))

    big = max(polygons, key=lambda rings: area(rings[0]))
    assert len(big) == 2  # exterior + hole
    # marching squares cuts the corners (half a pixel each way): areas within a pixel's border of the truth
    assert area(big[0]) == pytest.approx(30 * 20 * 64, rel=0.06)
    assert area(big[1]) == pytest.approx(5 * 5 * 64, rel=0.35)
    assert all(np.allclose(r[0], r[-1]) for rings in polygons for r in rings)
    assert big[0][:, 0].min() == pytest.approx(10 * 8, abs=8) and big[0][:, 0].max() == pytest.approx(40 * 8, abs=8)


def test_schema_rejects_what_qupath_would_not_read():
    good = {"type": "FeatureCollection", "features": he_tile_features(
        "S", {"x": np.array([0]), "y": np.array([0]), "prob_carcinoma": np.array([0.7]),
              "prob_sarcoma": np.array([0.2]), "prob_non_tumour": np.array([0.1])}, 10.0)}
    assert geojson_problems(good) == []
    bad_measurements = json.loads(json.dumps(good))
    bad_measurements["features"][0]["properties"]["measurements"] = [{"name": "a", "value": 1}]  # pre-0.4 list
    assert geojson_problems(bad_measurements)
    no_type = json.loads(json.dumps(good))
    del no_type["features"][0]["properties"]["objectType"]
    assert geojson_problems(no_type)
    open_ring = json.loads(json.dumps(good))
    open_ring["features"][0]["geometry"]["coordinates"][0][-1] = [1, 1]
    assert geojson_problems(open_ring)
    bad_colour = json.loads(json.dumps(good))
    bad_colour["features"][0]["properties"]["classification"]["color"] = [300, 0, 0]
    assert geojson_problems(bad_colour)


def test_undefined_ihc_metrics_are_left_out_not_null():
    features = ihc_tile_features("S", {"x": np.array([0, 10]), "y": np.array([0, 0]),
                                       "area_positive_pct": np.array([12.0, np.nan]), "nuclei": np.array([3, 0])},
                                 10.0, "area_positive_pct", 5.0)
    assert features[0]["properties"]["classification"]["name"] == "Positive"
    assert "area_positive_pct" not in features[1]["properties"]["measurements"]
    assert "classification" not in features[1]["properties"]
    assert tile_id("S", 0, 0) == features[0]["id"]


def test_douglas_peucker_keeps_corners_and_drops_collinear_points():
    from pipeline.outputs.geojson import simplify_line

    square = np.array([[0, 0], [5, 0], [10, 0], [10, 5], [10, 10], [5, 10.2], [0, 10], [0, 5], [0, 0]], float)
    out = simplify_line(square, 0.5)
    assert out.tolist() == [[0, 0], [10, 0], [10, 10], [0, 10], [0, 0]]
    assert len(simplify_line(square, 0.1)) == 6  # the 0.2 bump is kept at a finer tolerance
