"""The tumour region on an IHC slide (pipeline/ihc/tumour_region.py, pipeline/ihc/measured_region.py): H&E tumour
tiles carried through a registration onto the IHC grid, and the flagged fall-backs when there is no region."""

from __future__ import annotations

import json

import numpy as np

from pipeline.ihc.measured_region import measured_region
from pipeline.ihc.tumour_region import in_region, region_fraction, tumour_tiles
from pipeline.tables import write_table

TILE = 448.0  # level-0 px (224 um at 0.5 um/px)


def _grid(n: int) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = np.meshgrid(np.arange(n) * TILE, np.arange(n) * TILE)
    return xs.ravel(), ys.ravel()


def test_tumour_tiles_by_probability():
    assert tumour_tiles(np.array([0.3, 0.1, 0.6]), np.array([0.3, 0.1, 0.0]), 0.5).tolist() == [True, False, True]


def test_identity_maps_the_left_half_onto_the_left_half():
    he_x, he_y = _grid(6)
    tumour = he_x < 3 * TILE  # the left three columns
    frac = region_fraction(he_x, he_y, TILE, he_x, he_y, TILE, tumour, np.eye(3), he_mpp=0.5, margin_um=0.0)
    assert in_region(frac).tolist() == tumour.tolist()


def test_margin_widens_the_region_by_whole_tiles_only_when_it_reaches():
    he_x, he_y = _grid(6)
    tumour = he_x < 3 * TILE
    small = in_region(region_fraction(he_x, he_y, TILE, he_x, he_y, TILE, tumour, np.eye(3), 0.5, margin_um=50.0))
    wide = in_region(region_fraction(he_x, he_y, TILE, he_x, he_y, TILE, tumour, np.eye(3), 0.5, margin_um=250.0))
    assert small.sum() == tumour.sum()  # 50 um covers < half of the next column's 224 um
    assert wide.sum() == tumour.sum() + 6  # 250 um covers all of it


def test_a_rotated_ihc_slide_finds_the_tumour_where_the_registration_puts_it():
    he_x, he_y = _grid(6)
    tumour = he_y < 2 * TILE  # the top two rows of the H&E slide
    side = 6 * TILE
    # the IHC slide is the H&E turned 90 degrees: IHC (x, y) -> H&E (y, side - x)
    ihc_to_he = np.array([[0.0, 1.0, 0.0], [-1.0, 0.0, side], [0.0, 0.0, 1.0]])
    inside = in_region(region_fraction(he_x, he_y, TILE, he_x, he_y, TILE, tumour, ihc_to_he, 0.5, 0.0))
    assert inside.tolist() == (he_x >= 4 * TILE).tolist()  # the right two columns of the IHC slide


def _he_tables(tmp_path, tumour_prob: float):
    import pyarrow as pa

    he_x, he_y = _grid(4)
    meta = {"tile_size_level0": TILE, "mpp": 0.5, "status": "ok"}
    write_table(tmp_path / "tiles.parquet", {"x": pa.array(he_x, pa.int64()), "y": pa.array(he_y, pa.int64()),
                                             "tissue_fraction": pa.array(np.ones(16), pa.float32())}, meta)
    p = np.where(he_x < 2 * TILE, tumour_prob, 0.0)
    write_table(tmp_path / "scores.parquet", {"x": pa.array(he_x, pa.int64()), "y": pa.array(he_y, pa.int64()),
                                              "prob_carcinoma": pa.array(p, pa.float32()),
                                              "prob_sarcoma": pa.array(np.zeros(16), pa.float32()),
                                              "prob_non_tumour": pa.array(1 - p, pa.float32())}, {"status": "ok"})
    return he_x, he_y


def _registration(tmp_path, status="ok") -> str:
    rec = {"status": status, "reason": None if status == "ok" else "quality score 0.05 below 0.2",
           "he_slide_id": "X-HE", "quality": {"score": 0.9 if status == "ok" else 0.05, "residual_p95_um": 1.0},
           "transform": {"matrix_level0_px": np.eye(3).tolist(), "rotation_deg": 0.0, "flip": False}
           if status == "ok" else None}
    path = tmp_path / "registration.json"
    path.write_text(json.dumps(rec))
    return str(path)


def test_measured_region_restricts_to_the_registered_tumour(tmp_path):
    he_x, he_y = _he_tables(tmp_path, 0.9)
    region = measured_region(he_x, he_y, TILE, _registration(tmp_path), str(tmp_path / "tiles.parquet"),
                             str(tmp_path / "scores.parquet"), {"margin_um": 0.0}, 0.5)
    assert region["restricted_to_tumour"] and region["in_region"].tolist() == (he_x < 2 * TILE).tolist()
    assert region["registration"]["score"] == 0.9 and "8 H&E tiles" in region["reason"]


def test_every_fall_back_is_flagged_not_restricted(tmp_path):
    he_x, he_y = _he_tables(tmp_path, 0.9)
    tiles, scores = str(tmp_path / "tiles.parquet"), str(tmp_path / "scores.parquet")
    no_he = measured_region(he_x, he_y, TILE, None, None, None, {}, 0.5)
    failed = measured_region(he_x, he_y, TILE, _registration(tmp_path, "failed"), tiles, scores, {}, 0.5)
    few = measured_region(he_x, he_y, TILE, _registration(tmp_path), tiles, scores, {"min_tiles": 20}, 0.5)
    _he_tables(tmp_path, 0.2)
    no_tumour = measured_region(he_x, he_y, TILE, _registration(tmp_path), tiles, scores, {}, 0.5)
    for region, why in ((no_he, "no H&E slide"), (failed, "registration onto the H&E slide failed"),
                        (few, "only 8 IHC tiles"), (no_tumour, "no H&E tile reaches tumour probability")):
        assert region["restricted_to_tumour"] is False and region["in_region"] is None
        assert region["reason"].startswith("not restricted to tumour") and why in region["reason"], region


def test_unreadable_he_tables_fall_back_flagged_and_never_fail_the_slide(tmp_path):
    he_x, he_y = _grid(2)
    (tmp_path / "scores.parquet").write_bytes(b"not parquet")
    region = measured_region(he_x, he_y, TILE, _registration(tmp_path), str(tmp_path / "missing.parquet"),
                             str(tmp_path / "scores.parquet"), {}, 0.5)
    assert region["restricted_to_tumour"] is False and "cannot be read" in region["reason"]
