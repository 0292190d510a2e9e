"""Per-cell IHC scoring (pipeline/ihc/cells.py): cell geometry, per-cell % and H-score on drawn cells of known
class, stroma that dilutes the area figure but not the cell figure, nuclear cells = nuclei, HER2-style membrane
classes, and tumour tiles of the sample slides against the generator's drawn cells."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import ROOT, require_sample_cohort
from pipeline.ihc import stain
from pipeline.ihc.cells import (
    CELL_COUNT_COLUMNS,
    cell_classes,
    cell_counts,
    cells_from_nuclei,
    her2_style_research_score,
    measure_cells,
)
from pipeline.ihc.measure import COUNT_COLUMNS, derived_metrics, quantify_tile
from pipeline.ihc.params import IhcParams

PARAMS = IhcParams()
MPP = 0.5
LEVEL_OD = {0: 0.0, 1: 0.3, 2: 0.6, 3: 0.95}  # drawn DAB OD per class: the ring mean keeps each within its class


def cell_field(levels: np.ndarray, compartment: str, arcs=None, spacing_um: float = 13.0,
               nucleus_um: float = 3.5, cell_um: float = 6.0, stroma_um: float = 0.0) -> np.ndarray:
    """RGB of cells on a square grid (row-major, one per entry of ``levels``: the class 0-3 drawn), haematoxylin
    nuclei, pale cytoplasm, DAB of the class in ``compartment`` (membranous: a 1 um line at the cell edge over
    ``arcs[i]`` of the perimeter, default all); ``stroma_um`` of nucleus-free DAB-negative tissue to the right."""
    side = int(np.ceil(np.sqrt(len(levels))))
    size = int(round(spacing_um * side / MPP))
    width = size + int(round(stroma_um / MPP))
    yy, xx = np.mgrid[0:size, 0:width] * MPP + MPP / 2
    h = np.full((size, width), 0.05)
    dab = np.zeros((size, width))
    arcs = np.ones(len(levels)) if arcs is None else np.asarray(arcs)
    for k, lvl in enumerate(levels):
        cy, cx = spacing_um * (k // side + 0.5), spacing_um * (k % side + 0.5)
        d = np.hypot(yy - cy, xx - cx)
        ang = (np.arctan2(yy - cy, xx - cx) + np.pi) / (2 * np.pi)
        od = LEVEL_OD[int(lvl)]
        nucleus = d <= nucleus_um
        if compartment == "nuclear":
            h[nucleus], dab[nucleus] = (0.15, od) if lvl else (0.5, 0.0)
        else:
            h[nucleus] = 0.5
        if compartment == "cytoplasmic":
            dab[(d > nucleus_um) & (d <= cell_um)] = od
        if compartment == "membranous":
            dab[(d > cell_um - 1.0) & (d <= cell_um) & (ang < arcs[k])] = od
    return stain.compose(h, dab)


def class_levels(n: int, fractions: dict[int, float], seed: int = 0) -> np.ndarray:
    """``n`` classes in random order, each class ``c`` a ``fractions[c]`` share (the rest 0)."""
    levels = np.zeros(n, int)
    start = 0
    for cls, frac in fractions.items():
        k = int(round(frac * n))
        levels[start:start + k] = cls
        start += k
    return np.random.default_rng(seed).permutation(levels)


def score(rgb: np.ndarray, compartment: str) -> dict:
    """Counts of one drawn tile at the slide's calibrated nucleus threshold (0.2 OD: the drawn images are flat
    enough to fool a per-tile Otsu estimate)."""
    return quantify_tile(rgb, MPP, PARAMS, compartment == "nuclear", nucleus_od_min=0.2, compartment=compartment)


def truth(levels: np.ndarray) -> tuple[float, float]:
    per = np.bincount(levels, minlength=4) / len(levels) * 100
    return per[1:].sum(), per[1] + 2 * per[2] + 3 * per[3]


# ---- geometry ------------------------------------------------------------------------------------------
def test_cells_grow_from_nuclei_and_stop_at_neighbours():
    yy, xx = np.mgrid[0:100, 0:140]
    labels = np.zeros((100, 140), np.int32)
    for lab, (cy, cx) in zip((3, 7, 9), ((50, 30), (50, 90), (50, 104)), strict=True):  # ids with gaps
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 <= 7 ** 2] = lab
    comp = cells_from_nuclei(labels, MPP, cytoplasm_um=4.0, membrane_um=1.0)
    assert comp.n == 3 and sorted(np.unique(comp.cells)) == [0, 1, 2, 3]
    assert np.array_equal(comp.nucleus > 0, labels > 0)
    # the lone cell: nucleus radius 7 px + 8 px of cytoplasm
    assert np.pi * 15 ** 2 * 0.9 < (comp.cells == 1).sum() < np.pi * 15.5 ** 2
    assert np.array_equal(comp.ring > 0, (comp.cells > 0) & (labels == 0))
    # the touching pair (centres at x 90 and 104) splits the space at the midline x = 97
    assert (comp.cells[:, 98:] == 2).sum() == 0 and (comp.cells[:, :97] == 3).sum() == 0  # column 97: a tie
    # membrane band: 2 px (1 um) inside each outline, on the shared edge too
    band = (comp.membrane == 1).sum()
    assert 2 * np.pi * 14 * 2 * 0.85 < band < 2 * np.pi * 15 * 2 * 1.15
    assert (comp.membrane[50, 95:99] > 0).all()
    with pytest.raises(ValueError):
        cells_from_nuclei(labels, 0.0)
    assert cells_from_nuclei(np.zeros((10, 10), np.int32), MPP).n == 0


# ---- per-cell figures ----------------------------------------------------------------------------------
@pytest.mark.parametrize("fractions", [{}, {1: 0.1}, {1: 0.2, 2: 0.3, 3: 0.1}, {3: 0.9}, {1: 0.3, 2: 0.3, 3: 0.4}])
def test_cytoplasmic_cell_percent_and_h_score(fractions):
    levels = class_levels(100, fractions, seed=len(fractions))
    c = score(cell_field(levels, "cytoplasmic"), "cytoplasmic")
    m = derived_metrics(c)
    pct, h = truth(levels)
    assert c["cells"] == 100
    assert m["cells_positive_pct"] == pytest.approx(pct, abs=2.0)
    assert m["cell_h_score"] == pytest.approx(h, abs=6.0)
    assert m["nuclei_positive_pct"] is None and m["her2_style_research_score"] is None


def test_stroma_dilutes_area_but_not_cells():
    levels = class_levels(64, {2: 0.5, 3: 0.25})
    plain = derived_metrics(score(cell_field(levels, "cytoplasmic"), "cytoplasmic"))
    with_stroma = derived_metrics(score(cell_field(levels, "cytoplasmic", stroma_um=104.0), "cytoplasmic"))
    assert plain["cells_positive_pct"] == pytest.approx(75.0, abs=1.0)
    assert with_stroma["cells_positive_pct"] == plain["cells_positive_pct"]
    assert with_stroma["cell_h_score"] == plain["cell_h_score"]
    # the same cells over twice the tissue: the area figure halves
    assert with_stroma["area_positive_pct"] == pytest.approx(plain["area_positive_pct"] / 2, rel=0.05)
    assert with_stroma["area_positive_pct"] < plain["area_positive_pct"] - 10


def test_nuclear_marker_cells_are_its_nuclei():
    levels = class_levels(81, {1: 0.2, 2: 0.2, 3: 0.3}, seed=3)
    c = score(cell_field(levels, "nuclear"), "nuclear")
    m = derived_metrics(c)
    assert c["nuclei"] == c["cells"] == 81
    assert [c[f"cells_{k}plus"] for k in (1, 2, 3)] == [c[f"nuclei_{k}plus"] for k in (1, 2, 3)]
    assert m["cells_positive_pct"] == m["nuclei_positive_pct"] == pytest.approx(truth(levels)[0], abs=1.5)
    assert m["cell_h_score"] == m["nuclear_h_score"]


def test_nuclear_cytoplasmic_reads_the_stronger_compartment():
    comp = cells_from_nuclei(np.pad(np.ones((8, 8), np.int32), 20), MPP, cytoplasm_um=3.0)
    h = np.where(comp.nucleus > 0, 0.2, 0.05)
    ring_only = measure_cells(comp, h, np.where(comp.ring > 0, 0.5, 0.0), membrane=False)
    nucleus_only = measure_cells(comp, h, np.where(comp.nucleus > 0, 0.7, 0.0), membrane=False)
    assert cell_classes(ring_only, "nuclear_cytoplasmic").tolist() == [2]
    assert cell_classes(ring_only, "nuclear").tolist() == [0]
    assert cell_classes(nucleus_only, "nuclear_cytoplasmic").tolist() == [3]
    assert cell_classes(nucleus_only, "cytoplasmic").tolist() == [0]
    with pytest.raises(ValueError):
        cell_classes(ring_only, "golgi")


def test_pixel_and_nucleus_counts_do_not_depend_on_cells():
    levels = class_levels(49, {1: 0.3, 3: 0.3}, seed=5)
    rgb = cell_field(levels, "cytoplasmic")
    for nuclear in (False, True):
        off = quantify_tile(rgb, MPP, PARAMS, nuclear, nucleus_od_min=0.2)
        on = quantify_tile(rgb, MPP, PARAMS, nuclear, nucleus_od_min=0.2, compartment="cytoplasmic")
        old = [k for k in COUNT_COLUMNS if k not in CELL_COUNT_COLUMNS]
        assert {k: on[k] for k in old} == {k: off[k] for k in old}
        assert all(off[k] == 0 for k in CELL_COUNT_COLUMNS) and on["cells"] == 49
    assert derived_metrics(off)["cells_positive_pct"] is None


# ---- membranes ------------------------------------------------------------------------------------------
def test_membrane_classes_by_completeness_and_intensity():
    # (drawn level, arc of the perimeter) -> expected HER2-style class
    kinds = [((3, 1.0), 3), ((2, 1.0), 2), ((1, 1.0), 2), ((3, 0.6), 2), ((1, 0.6), 1), ((0, 1.0), 0), ((2, 0.1), 0)]
    per_kind = 9
    order = np.random.default_rng(7).permutation(np.repeat(np.arange(len(kinds)), per_kind))
    levels = np.array([kinds[k][0][0] for k in order])
    arcs = np.array([kinds[k][0][1] for k in order])
    c = score(cell_field(levels, "membranous", arcs), "membranous")
    expected = np.bincount([kinds[k][1] for k in order], minlength=4)
    assert c["cells"] == len(order)
    assert [c[f"membrane_{k}"] for k in range(4)] == pytest.approx(expected.tolist(), abs=2)
    m = derived_metrics(c)
    assert m["membrane_pct_3plus"] == pytest.approx(100 * expected[3] / len(order), abs=4)
    assert m["her2_style_research_score"] == 3
    # cells positive = membrane stained over >= 30 % of the perimeter (all but the unstained and the 10 % arcs)
    assert m["cells_positive_pct"] == pytest.approx(100 * 5 / 7, abs=4)


def test_membrane_negative_field_scores_zero():
    levels = np.zeros(49, int)
    c = score(cell_field(levels, "membranous"), "membranous")
    assert c["membrane_0"] == c["cells"] == 49
    m = derived_metrics(c)
    assert m["her2_style_research_score"] == 0 and m["cells_positive_pct"] == 0.0


def test_her2_style_research_score_rule():
    assert her2_style_research_score((0, 0, 0, 0)) is None
    assert her2_style_research_score((89, 0, 0, 11)) == 3
    assert her2_style_research_score((90, 0, 0, 10)) == 0  # 10 % is not "more than 10 %"
    assert her2_style_research_score((88, 0, 2, 10)) == 2  # 3+ cells count toward 2+
    assert her2_style_research_score((84, 5, 6, 5)) == 2
    assert her2_style_research_score((85, 5, 6, 4)) == 1  # 10 % at 2+ or more, 15 % at 1+ or more
    assert her2_style_research_score((95, 5, 0, 0)) == 0
    # counts summed over tiles give the slide score
    assert derived_metrics({**dict.fromkeys(COUNT_COLUMNS, 0), "dab_od_sum": 0.0, "h_od_sum": 0.0,
                            "cells": 20, "membrane_0": 5, "membrane_3": 15})["her2_style_research_score"] == 3


def test_cell_counts_of_an_empty_tile():
    c = cell_counts(np.zeros((32, 32), np.int32), np.zeros((32, 32)), np.zeros((32, 32)), MPP, "membranous")
    assert c == dict.fromkeys(CELL_COUNT_COLUMNS, 0)


# ---- sample slides: tumour tiles against the generator's drawn cells ------------------------------------
# Three 512 px tiles at 0.5 um/px inside adenocarcinoma of case A (level-0 x, y of the H&E slide's frame; each IHC
# slide lies rotated on its glass, so the tiles are read where the truth file's transform puts them). Truth
# from re-running the generator over these tiles (H&E frame): 762 tumour cells drawn, 650 ER-positive (85.3 %), 735
# CK-positive (96.5 %). The glands' nuclei overlap (7.5 um lattice, nuclei 8-11 um long): a DAB-negative nucleus
# under a positive neighbour's edge can read brown, so the per-cell figure reads a few points high (ER 88.2 %).
SAMPLE_TILES = ((3456, 3200), (3584, 3072), (4480, 2816))


CK_OPEN = ("cytoplasmic markers depend on the nucleus threshold: nuclei found on haematoxylin under strong DAB "
           "swallow the cytoplasm at a threshold estimated from these three tiles with white glass, and the ring read "
           "as cytoplasm falls in the stroma (0.5 % read positive); the workflow calibrates on the tumour region and "
           "reads A-CK 90 % against 96.9 % drawn")


@pytest.mark.parametrize("marker, compartment, drawn_pct", [
    ("ER", "nuclear", 85.3),
    pytest.param("CK_AE1AE3", "cytoplasmic", 96.5, marks=pytest.mark.xfail(strict=True, reason=CK_OPEN))])
def test_sample_tumour_tiles_per_cell(marker, compartment, drawn_pct):
    require_sample_cohort()
    import json

    from pipeline.ihc.nuclei import estimate_nucleus_threshold
    from pipeline.ihc.stain import Deconvolver
    from pipeline.slides.reader import open_slide

    path = ROOT / "slides_sample" / f"A-{marker}.svs"
    to_he = np.array(json.loads(path.with_name(path.name + ".truth.json").read_text())["registration"]
                     ["to_he_level0_px"])
    half = 512 * MPP / 0.5 / 2  # half a tile in level-0 px (the sample slides are 0.5 um/px)
    centres = [np.linalg.inv(to_he) @ [x + half, y + half, 1.0] for x, y in SAMPLE_TILES]
    with open_slide(path) as slide:
        tiles = [slide.read_tile(int(round(cx - half)), int(round(cy - half)), 512, MPP) for cx, cy, _ in centres]
    deconvolver = Deconvolver()
    h, dab, _ = deconvolver(np.concatenate(tiles))
    od_min = estimate_nucleus_threshold(h, dab, MPP, PARAMS.nucleus_sigma_um, PARAMS.dab_od_thresholds[0] / 2,
                                        PARAMS.nucleus_od_range)
    counts = [quantify_tile(t, MPP, PARAMS, compartment == "nuclear", deconvolver, od_min, compartment=compartment,
                            tumour_cells=PARAMS.tumour_cell_filter) for t in tiles]
    m = derived_metrics({k: sum(c[k] for c in counts) for k in counts[0]})
    print(f"{marker}: {m['cells_positive_pct']} % of tumour-like cells positive, drawn {drawn_pct}")
    assert m["cells_positive_pct"] == pytest.approx(drawn_pct, abs=5.0)
    # gland lumens and stroma between glands: the area figure is far below the per-cell one
    assert m["area_positive_pct"] < m["cells_positive_pct"] - 40
