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


# ---- the IHC slide's measured tumour region ---------------------------------------------------------------

def _area(ring) -> float:
    x, y = np.asarray(ring, float).T
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))


def test_squares_outline_is_the_exact_union_with_holes_and_corner_contacts():
    from pipeline.outputs.tile_outline import squares_outline

    ring_of_8 = [(c, r) for c in range(3) for r in range(3) if (c, r) != (1, 1)]  # a 3 x 3 block with a hole
    polygons = squares_outline(*zip(*(ring_of_8 + [(3, 3), (5, 0), (6, 0)]), strict=True))
    assert len(polygons) == 3  # (3, 3) touches the block only at a corner: its own piece
    block, bar, single = polygons  # largest first
    assert block[0] == [(0, 0), (3, 0), (3, 3), (0, 3), (0, 0)]  # collinear points dropped: four corners
    assert len(block) == 2 and _area(block[1]) == -1.0  # the hole turns the other way
    assert bar == [[(5, 0), (7, 0), (7, 1), (5, 1), (5, 0)]] and _area(single[0]) == 1.0
    assert sum(_area(r) for p in polygons for r in p) == len(ring_of_8) + 3


def _region_columns(size0: float):
    """A 4 x 3 grid of IHC tiles (level-0 top-left corners) with the region: the left 2 x 3 block and (3, 2)."""
    cells = [(c, r) for r in range(3) for c in range(4)]
    inside = [c < 2 or (c, r) == (3, 2) for c, r in cells]
    return {"x": np.array([round(c * size0) for c, _ in cells]), "y": np.array([round(r * size0) for _, r in cells]),
            "in_tumour_region": inside}


REGION = {"restricted_to_tumour": True, "reason": "tumour region: the 5 H&E tiles with tumour probability >= 0.5",
          "registration": {"status": "ok", "he_slide_id": "A-HE", "score": 0.8, "residual_median_um": 1.2,
                           "residual_p95_um": 3.4}}


def test_region_feature_is_one_annotation_in_level0_px():
    from pipeline.outputs.geojson import REGION_NAME, feature_collection, region_feature

    size0 = 448.4  # 224 um tiles at 0.5 um/px... on a 0.4996 um/px slide: not a whole number of pixels
    feature = region_feature("S", _region_columns(size0), size0, 0.4996, REGION)
    props = feature["properties"]
    assert props["objectType"] == "annotation" and props["name"] == REGION_NAME
    assert props["classification"] == {"name": "Tumor", "color": [200, 0, 0]}
    assert props["metadata"]["reason"] == REGION["reason"] and "residual median 1.2 um" in props["metadata"][
        "registration"]
    assert props["measurements"]["tiles"] == 7
    assert props["measurements"]["area_mm2"] == pytest.approx(7 * (size0 * 0.4996 / 1000) ** 2, rel=1e-5)
    geometry = feature["geometry"]
    assert geometry["type"] == "MultiPolygon" and len(geometry["coordinates"]) == 2
    block, corner = geometry["coordinates"]
    # the block's corners are tile corners as the grid lays them (x = round(column * size0)), level-0 px
    assert block == [[[0, 0], [round(2 * size0), 0], [round(2 * size0), round(3 * size0)], [0, round(3 * size0)],
                      [0, 0]]]
    assert corner[0][0] == [round(3 * size0), round(2 * size0)]
    assert geojson_problems(feature_collection([feature])) == []
    assert region_feature("S", _region_columns(size0), size0, 0.5, {**REGION, "restricted_to_tumour": False}) is None
    nowhere = {**_region_columns(size0), "in_tumour_region": [None] * 12}
    assert region_feature("S", nowhere, size0, 0.5, REGION) is None


def test_ihc_geojson_carries_the_region_read_by_quantify_ihc(cohort, tmp_path):
    """S2's ihc.parquet and summary as quantify-ihc writes them when the marker is read in a tumour region."""
    from pipeline.__main__ import main
    from pipeline.ihc.tiles_table import write_tiles
    from pipeline.tables import read_columns

    d = cohort / "slides" / "S2"
    columns, meta = read_columns(d / "ihc.parquet")
    n = len(columns["x"])
    rows = [{k: (v[i].item() if hasattr(v[i], "item") else v[i]) for k, v in columns.items()} for i in range(n)]
    for i, row in enumerate(rows):
        row["in_tumour_region"] = i < n // 2
    write_tiles(tmp_path / "ihc.parquet", rows, meta)
    summary = json.loads((d / "summary.json").read_text())
    summary["ihc"]["region"] = REGION
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    out = tmp_path / "tiles.geojson"
    assert main(["export-geojson", "--summary", str(tmp_path / "summary.json"), "--tiles", str(d / "tiles.parquet"),
                 "--mask", str(d / "tissue.png"), "--scores", "--ihc-tiles", str(tmp_path / "ihc.parquet"),
                 "--out", str(out)]) == 0
    collection = json.loads(out.read_text())
    assert geojson_problems(collection) == []
    (region,) = [f for f in collection["features"] if f["properties"].get("name") == "Tumour region (registered "
                                                                                    "from H&E)"]
    assert region["properties"]["measurements"]["tiles"] == n // 2
    tiles = [f for f in collection["features"] if f["properties"]["objectType"] == "tile"]
    assert len(tiles) == n and sum(t["properties"]["measurements"]["in_tumour_region"] for t in tiles) == n // 2
    assert not [f for f in _load(cohort, "S2")["features"] if f["properties"].get("name", "").startswith("Tumour")]


def test_viewer_draws_the_region_annotation_not_as_tissue():
    from pipeline.outputs.geojson import feature_collection, region_feature, tissue_features
    from pipeline.viewer.data import overlays

    mask = np.zeros((8, 8), bool)
    mask[2:6, 2:6] = True
    features = tissue_features("S", mask, 100.0, 800, 800) + [region_feature("S", _region_columns(100.0), 100.0,
                                                                             0.5, REGION)]
    drawn = overlays({"kind": "IHC", "ihc": {"region": REGION}}, feature_collection(features))
    assert len(drawn["tissue"]) == 1  # the tissue outline only; the region is drawn from the tiles' in_region
