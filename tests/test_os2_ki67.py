"""One Ki-67 section from two scanners, read inside the registered region (pipeline/ihc/scan_pair.py).

OS-2-vsi is registered onto OS-2-ndpi, the NDPI scan's tissue tiles are carried onto the VSI scan, and the Ki-67
labelling index (% positive nuclei) of each scan over those same tiles must agree within 5 points.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from pipeline.ihc.params import IhcParams
from pipeline.ihc.scan_pair import compare_scans, registered_tiles

ROOT = Path(__file__).resolve().parents[1]
MAX_DIFFERENCE_POINTS = 5.0


@pytest.fixture(scope="module")
def ki67_and_params() -> tuple[dict, IhcParams]:
    """The Ki-67 entry of the marker knowledge base and the configured IHC parameters, as quantify-ihc reads them."""
    from pipeline.config import load_config
    from pipeline.ihc.markers import load_markers

    config = load_config(ROOT / "configs" / "config.yaml")
    kb = load_markers(ROOT / config["markers"])
    return kb["markers"]["Ki67"], IhcParams.from_config(config.get("ihc"))


def test_registered_tiles_follow_the_transform_and_both_tissues():
    """A reference scan at 0.25 um/px and another at 0.5 um/px shifted by (100, 40) um: the other scan's tiles
    sit where the matrix says, and only tiles with tissue on both scans (and wholly on the other scan) stay."""
    ref_mask = np.ones((100, 100), bool)  # 1000 x 1000 um at 10 um/px
    ref_mask[:, :20] = False  # no tissue in the left 200 um of the reference
    other_mask = np.ones((80, 80), bool)  # 800 x 800 um
    other_mask[59:, :] = False  # no tissue below 590 um on the other scan
    # other level-0 px (0.5 um/px) -> reference level-0 px (0.25 um/px): p_ref_um = p_other_um + (100, 40)
    other_to_ref = np.array([[2.0, 0.0, 400.0], [0.0, 2.0, 160.0], [0.0, 0.0, 1.0]])
    tiles = registered_tiles((4000, 4000), 0.25, ref_mask, 10.0, (1600, 1600), 0.5, other_mask, 10.0,
                             other_to_ref, tile_um=100.0)
    assert tiles["candidates"] == 100 and tiles["ref_tile_level0"] == 400 and tiles["other_tile_level0"] == 200
    ref_um = np.stack([tiles["ref_x"], tiles["ref_y"]], axis=1) * 0.25
    other_um = np.stack([tiles["other_x"], tiles["other_y"]], axis=1) * 0.5
    assert np.allclose(other_um, ref_um - (100.0, 40.0))
    assert ref_um[:, 0].min() == 200.0  # reference tissue starts at 200 um
    assert ref_um[:, 1].min() == 100.0  # the other scan starts at 40 um on the reference: first whole tile at 100
    assert (other_um[:, 1] + 100.0).max() <= 590.0  # the other scan's tissue ends at 590 um
    assert (other_um[:, 0] + 100.0).max() <= 800.0  # and its picture at 800 um
    assert len(ref_um) == 7 * 5  # columns from 200 um to 800 um, rows from 100 um to 500 um


def test_os2_ki67_index_agrees_inside_the_registered_region(shared_data, ki67_and_params):
    """Measured (2 shared cores, 100 um tiles, all 16 tiles of the registered region): NDPI 27.7 %, VSI 28.0 %
    over 606 and 615 nuclei (16 of 25 tiles laid); residual median 0.35 um, 95th percentile 0.79 um; about 5 s."""
    ndpi, vsi = shared_data / "slides" / "OS-2-ndpi.ome.tif", shared_data / "slides" / "OS-2-vsi.ome.tif"
    started = time.perf_counter()
    result = compare_scans(ndpi, vsi, *ki67_and_params, tile_um=100.0, threads=2)
    seconds = time.perf_counter() - started
    reg, tiles = result["registration"], result["tiles"]
    index = {k: result[k]["metrics"]["nuclei_positive_pct"] for k in ("ref", "other")}
    nuclei = {k: result[k]["metrics"]["nuclei"] for k in ("ref", "other")}
    print(f"OS-2 Ki-67 in the registered region: NDPI {index['ref']} % ({nuclei['ref']} nuclei), VSI "
          f"{index['other']} % ({nuclei['other']} nuclei), difference {result['difference']} points; "
          f"{tiles['quantified']} of {tiles['in_registered_region']} tiles of {result['tile_um']:g} um in the "
          f"registered region ({tiles['laid']} laid); registration residual median {reg['residual_median_um']} "
          f"um, p95 {reg['residual_p95_um']} um, score {reg['score']}; nucleus thresholds NDPI "
          f"{result['ref']['method']['nucleus_od_min']}, VSI {result['other']['method']['nucleus_od_min']} OD; "
          f"{seconds:.1f} s")
    assert reg["residual_p95_um"] <= 5.0
    assert tiles["quantified"] >= 10 and min(nuclei.values()) >= 400
    assert abs(nuclei["ref"] - nuclei["other"]) <= 0.1 * nuclei["ref"]  # the same tissue: the same nuclei
    assert abs(index["ref"] - index["other"]) <= MAX_DIFFERENCE_POINTS


def test_compare_scans_verb_writes_both_readings_without_paths_or_torch(shared_data, tmp_path):
    import json
    import sys

    from pipeline.__main__ import main

    slides = shared_data / "slides"
    out = tmp_path / "compare.json"
    torch_before = "torch" in sys.modules
    assert main(["compare-scans", "--ref", str(slides / "OS-2-ndpi.ome.tif"), "--other",
                 str(slides / "OS-2-vsi.ome.tif"), "--config", str(ROOT / "configs" / "config.yaml"),
                 "--max-tiles", "4", "--out", str(out)]) == 0
    assert torch_before or "torch" not in sys.modules
    text = out.read_text()
    record = json.loads(text)
    assert record["marker"] == "Ki67" and record["tiles"]["quantified"] == 4
    assert record["ref"]["metrics"]["nuclei"] > 0 and record["other"]["metrics"]["nuclei"] > 0
    assert "OS-2" not in text and ".ome.tif" not in text
