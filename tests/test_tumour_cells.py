"""Tumour-like cells (pipeline/ihc/tumour_cells.py) and the marker read per tumour cell in the region: nucleus shape
from moments, stromal and lymphocyte nuclei set aside, the per-tumour-cell cut-off of markers.yaml, too few cells
equivocal, and touching gland nuclei split one to one by the LoG-seeded watershed."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.draw import ellipse

from pipeline.ihc import stain
from pipeline.ihc.cells import cell_counts, cell_table
from pipeline.ihc.measure import COUNT_COLUMNS, SUM_COLUMNS, derived_metrics, quantify_tile
from pipeline.ihc.measured_region import per_tumour_cell_entry, summarise_rows
from pipeline.ihc.nuclei import detect_nuclei, label_pixels, nucleus_means
from pipeline.ihc.params import IhcParams
from pipeline.ihc.reading import marker_result
from pipeline.ihc.tumour_cells import nucleus_geometry, nucleus_shapes, tumour_like

MPP = 0.5
PARAMS = IhcParams()


@pytest.fixture(scope="module")
def kb():
    from conftest import ROOT
    from pipeline.ihc.markers import load_markers

    return load_markers(ROOT / "configs" / "markers.yaml")


def draw(shapes, size=200):
    """Label image of ellipses (centre row, col, semi-axes in um, rotation) at MPP."""
    lab = np.zeros((size, size), np.int32)
    for i, (r, c, a_um, b_um, rot) in enumerate(shapes, start=1):
        rr, cc = ellipse(r, c, a_um / MPP, b_um / MPP, shape=lab.shape, rotation=rot)
        lab[rr, cc] = i
    return lab


def test_nucleus_shapes_measure_area_and_width():
    lab = draw([(50, 50, 5.0, 4.0, 0.3), (120, 120, 6.0, 1.5, 1.0), (50, 150, 3.0, 3.0, 0.0)])
    area, width = nucleus_shapes(lab, MPP)
    assert area == pytest.approx(np.pi * np.array([20.0, 9.0, 9.0]), rel=0.05)
    assert width == pytest.approx([8.0, 3.0, 6.0], abs=0.4)
    assert nucleus_shapes(np.zeros((8, 8), np.int32), MPP)[0].size == 0


def test_label_pixels_found_once_give_the_same_measures():
    """quantify_tile finds a tile's labelled pixels once for the means, the geometry and the cell table; a label
    without pixels (dropped by size) stays in the count with 0."""
    lab = draw([(50, 50, 5.0, 4.0, 0.3), (120, 120, 6.0, 1.5, 1.0), (50, 150, 3.0, 3.0, 0.0)])
    lab[lab == 2] = 0  # a gap in the ids, as detect_nuclei leaves
    rng = np.random.default_rng(0)
    h, dab = rng.random(lab.shape).astype(np.float32), rng.random(lab.shape).astype(np.float32)
    pixels = label_pixels(lab)
    assert pixels.count.tolist() == [0, int((lab == 1).sum()), 0, int((lab == 3).sum())]
    for got, want in zip(nucleus_means(lab, h, dab, pixels), nucleus_means(lab, h, dab), strict=True):
        assert np.array_equal(got, want) and got.size == 2
    shared, alone = vars(nucleus_geometry(lab, MPP, pixels)), vars(nucleus_geometry(lab, MPP))
    assert all(np.array_equal(shared[k], alone[k]) for k in alone) and alone["area_um2"][1] == 0
    expected = cell_table(lab, h, dab, MPP, "nuclear")
    for key, value in cell_table(lab, h, dab, MPP, "nuclear", pixels=pixels).items():
        assert np.array_equal(value, expected[key], equal_nan=True), key


def test_detect_nuclei_returns_the_pixels_of_the_labels_it_keeps():
    """detect_nuclei's pixels (found before the size filter, then filtered) equal label_pixels of its labels."""
    lab = draw([(50, 50, 5.0, 4.0, 0.3), (120, 120, 6.0, 3.5, 1.0), (50, 150, 1.0, 1.0, 0.0), (150, 60, 1.2, 0.8, 0)])
    h = np.where(lab > 0, 0.6, 0.02).astype(np.float32)
    labels, pixels = detect_nuclei(h, np.zeros_like(h), MPP, return_pixels=True)
    assert np.array_equal(labels, detect_nuclei(h, np.zeros_like(h), MPP))
    again = label_pixels(labels)
    assert (again.count[1:] > 0).sum() >= 2 and 0 in again.count[1:]  # a label dropped by size, the others kept
    for got, want in zip(pixels, again, strict=True):
        assert np.array_equal(got, want)


def test_tumour_like_sets_aside_fibroblasts_and_lymphocytes():
    # a carcinoma nucleus, a fibroblast seen side on, a lymphocyte, a large spindle sarcoma nucleus
    lab = draw([(50, 50, 5.5, 4.5, 0.0), (50, 150, 6.0, 1.4, 0.5), (150, 50, 3.2, 3.0, 0.0),
                (150, 150, 9.0, 3.2, 1.2)])
    keep = tumour_like(*nucleus_shapes(lab, MPP))
    assert keep.tolist() == [True, False, False, True]


def test_cell_counts_count_tumour_like_cells_only():
    lab = draw([(40, 40, 5.5, 4.5, 0.0), (40, 120, 5.0, 5.0, 0.0), (140, 40, 6.0, 1.4, 0.5), (140, 140, 3.2, 3.0, 0.0)])
    h = np.where(lab > 0, 0.5, 0.02)
    dab = np.zeros_like(h)
    dab[lab == 1] = 0.8  # one of the two tumour nuclei positive; the stromal ones negative
    every = cell_counts(lab, h, dab, MPP, "nuclear")
    tumour = cell_counts(lab, h, dab, MPP, "nuclear", tumour_cells=PARAMS.tumour_cell_filter)
    assert (every["cells"], every["cells_set_aside"]) == (4, 0)
    assert (tumour["cells"], tumour["cells_set_aside"], tumour["cells_3plus"]) == (2, 2, 1)
    cyto = cell_counts(lab, h, dab, MPP, "cytoplasmic", tumour_cells=PARAMS.tumour_cell_filter)
    assert (cyto["cells"], cyto["cells_set_aside"]) == (2, 2)


def test_config_null_counts_every_cell():
    assert IhcParams.from_config({"tumour_cells": None}).tumour_cell_filter is None
    assert IhcParams.from_config({"tumour_cells": {"min_area_um2": 30}}).tumour_cell_filter == (30.0, 5.5)


def gland_tile(positive_every=4, seed=0):
    """Rings of touching gland nuclei (8-10 um ovals 7.5 um apart, as the sample glands), every n-th DAB-positive."""
    rng = np.random.default_rng(seed)
    h = np.full((400, 400), 0.03)
    dab = np.zeros_like(h)
    n = pos = 0
    for cy, cx in ((100, 100), (100, 300), (300, 100), (300, 300)):
        k = 17
        for i in range(k):
            t = 2 * np.pi * i / k
            r, c = cy + 40 / MPP / 2 * np.sin(t), cx + 40 / MPP / 2 * np.cos(t)
            rr, cc = ellipse(r, c, rng.uniform(4.0, 5.0) / MPP, rng.uniform(3.0, 3.6) / MPP, shape=h.shape,
                             rotation=t)
            h[rr, cc] = np.maximum(h[rr, cc], rng.uniform(0.5, 0.8))
            if n % positive_every == 0:
                dab[rr, cc] = 0.9
                pos += 1
            n += 1
    return stain.compose(h, dab), n, pos


def test_touching_gland_nuclei_are_found_one_to_one():
    rgb, n, pos = gland_tile()
    h, dab, _ = stain.Deconvolver()(rgb)
    labels = detect_nuclei(h, dab, MPP, od_min=0.3)
    assert abs(int(len(np.unique(labels)) - 1) - n) <= 2  # distance-transform seeds: 62 of 68
    m = derived_metrics(quantify_tile(rgb, MPP, PARAMS, nuclear=True, nucleus_od_min=0.3))
    assert m["nuclei_positive_pct"] == pytest.approx(100.0 * pos / n, abs=8.0)


def test_region_reads_er_per_tumour_cell(kb):
    entry = per_tumour_cell_entry(kb["markers"]["ER"])
    assert entry["reading"]["metric"] == "cells_positive_pct" and entry["reading"]["positive_at"] == 1
    assert "asco_cap_er" in entry["reading"]["how"]
    assert per_tumour_cell_entry(kb["markers"]["CD45"]) is kb["markers"]["CD45"]  # lymphoma: no filter, unchanged
    row = {**dict.fromkeys(COUNT_COLUMNS + SUM_COLUMNS, 0), "pixels": 1000, "tissue_px": 800000, "nuclei": 900,
           "cells": 300, "cells_1plus": 3, "cells_set_aside": 600}
    row.update(derived_metrics(row))
    summary = summarise_rows([row], entry, PARAMS)
    assert summary["result"]["call"] == "positive" and summary["metrics"]["cells_set_aside"] == 600
    few = marker_result({"cells_positive_pct": 50.0, "cells": 20}, entry, PARAMS, 1.0)
    assert few["call"] == "equivocal" and "20 tumour cells" in few["reason"]


def test_every_per_tumour_cell_cut_off_names_a_known_source(kb):
    for name, entry in kb["markers"].items():
        per_cell = entry["reading"].get("per_tumour_cell")
        if per_cell:
            assert per_cell["source"] in kb["sources"], name
            assert 0 < per_cell["positive_at"] <= 100, name


def _row(cells: int, positive: int, area_pct: float) -> dict:
    tissue = 200000
    row = {**dict.fromkeys(COUNT_COLUMNS + SUM_COLUMNS, 0), "pixels": tissue, "tissue_px": tissue,
           "px_2plus": int(tissue * area_pct / 100), "cells": cells, "cells_2plus": positive}
    row.update(derived_metrics(row))
    return row


@pytest.mark.parametrize("cells, metric", [(600, "cells_positive_pct"), (40, "area_positive_pct")])
def test_region_falls_back_to_its_area_reading_with_too_few_tumour_cells(kb, cells, metric):
    from pipeline.ihc.quantify import restrict_to_tumour

    entry = kb["markers"]["CK_AE1AE3"]
    rows = [_row(cells // 2, cells // 2, 60.0), _row(cells // 2, cells // 2, 60.0), _row(0, 0, 1.0)]
    record = {"slide_id": "S", **summarise_rows(rows, entry, PARAMS)}
    region = {"restricted_to_tumour": True, "reason": "tumour region"}
    restrict_to_tumour(record, rows, region, np.array([True, True, False]), PARAMS, entry)
    assert record["result"]["metric"] == metric and record["result"]["call"] == "positive"
    assert region["per_tumour_cell"] == (metric == "cells_positive_pct")
    assert ("per_cell_reason" in region) == (metric != "cells_positive_pct")
    assert record["whole_tissue"]["result"]["metric"] == "area_positive_pct"
