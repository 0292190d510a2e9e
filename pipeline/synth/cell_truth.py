"""Per-cell truth of an IHC slide: how many cells of each tissue were drawn and how many are positive (exact).

The cells come from the populations the drawing uses (:mod:`pipeline.synth.populations`), walked over the
layout in blocks whose lattices partition the slide's cells, so every drawn cell is counted once. A cell counts
when its centre lies on the slide (through the slide's placement) and in tissue. A cell is positive when it
carries DAB: positive for the marker (:func:`~pipeline.synth.populations.positivity`) and drawn with the
marker's compartment (nuclear markers on every nucleus; cytoplasmic and membranous markers only on cells drawn
with a cytoplasm). Where the marker is painted as an area rather than on cells (muscle fibres, vessel walls,
endothelium, fat membranes) the tissue is listed under ``dab_areas``.

Public: :func:`cell_truth` (the ``cells`` entry of the truth file).
"""

from __future__ import annotations

import numpy as np

from pipeline.synth.cells import lattice
from pipeline.synth.classes import CLASS_ID, COARSE, COMPARTMENT, expression
from pipeline.synth.layout import Layout, cells_in, lookup
from pipeline.synth.placement import Placement
from pipeline.synth.populations import POPULATIONS, positivity

BLOCK_UM = 1024.0  # the layout is walked in blocks of this side (memory bounded by one block's lattice)
TUMOUR = tuple(name for name, cid in CLASS_ID.items() if COARSE.get(cid) in ("carcinoma", "sarcoma"))
# where DAB is painted as an area (fibres, vessel walls, endothelium, fat membranes): tissue -> its host classes
AREA_DAB = {"skeletal_muscle": ("skeletal_muscle",), "vessel_wall": ("fibrous_stroma", "adipose"),
            "endothelium": ("fibrous_stroma", "adipose"), "adipose": ("adipose",)}


def _empty() -> dict:
    return {"n": 0, "positive": 0, "by_intensity": {"1": 0, "2": 0, "3": 0}}


def _add(acc: dict, pos: np.ndarray, lvl: np.ndarray) -> None:
    acc["n"] += int(len(pos))
    acc["positive"] += int(pos.sum())
    for k in (1, 2, 3):
        acc["by_intensity"][str(k)] += int((pos & (lvl == k)).sum())


def _finish(acc: dict) -> dict:
    n, by = acc["n"], acc["by_intensity"]
    acc["positive_pct"] = round(100.0 * acc["positive"] / n, 2) if n else None
    acc["h_score"] = round(100.0 * (by["1"] + 2 * by["2"] + 3 * by["3"]) / n, 1) if n else None
    return acc


def _blocks(lay: Layout, placement: Placement | None, width_um: float, height_um: float):
    """Layout-frame blocks (x0, y0, x1, y1) covering what lands on the slide."""
    if placement is None:
        x0, y0, x1, y1 = 0.0, 0.0, width_um, height_um
    else:
        cx, cy = placement.to_layout(np.array([0, width_um, 0, width_um]), np.array([0, 0, height_um, height_um]))
        x0, y0, x1, y1 = cx.min(), cy.min(), cx.max(), cy.max()
    x0, y0 = max(x0, 0.0), max(y0, 0.0)  # the layout has no tissue beyond its grid
    x1 = min(x1, lay.labels.shape[1] * lay.layout_um)
    y1 = min(y1, lay.labels.shape[0] * lay.layout_um)
    for by in np.arange(np.floor(y0 / BLOCK_UM), np.ceil(y1 / BLOCK_UM)):
        for bx in np.arange(np.floor(x0 / BLOCK_UM), np.ceil(x1 / BLOCK_UM)):
            yield bx * BLOCK_UM, by * BLOCK_UM, (bx + 1) * BLOCK_UM, (by + 1) * BLOCK_UM


def cell_truth(lay: Layout, marker: str, width_um: float, height_um: float, placement: Placement | None = None) -> dict:
    """Drawn cells per tissue class and for all tumour cells: n, positive, by intensity (1-3), %, H-score."""
    comp = COMPARTMENT.get(marker, "")
    s = lay.seed * 1000  # the drawing's salt (draw._Painter.s)
    by_class = {name: _empty() for name in POPULATIONS}
    present = set(np.unique(lay.labels).tolist())
    for x0, y0, x1, y1 in _blocks(lay, placement, width_um, height_um):
        def cells_for(spacing, salt, classes, jitter=0.45, _b=(x0, y0, x1, y1)):
            return cells_in(lay, lattice(*_b, spacing, s + salt, jitter), classes)

        for name, pops in POPULATIONS.items():
            for fn, has_cytoplasm in pops:
                for cells in fn(cells_for, lay, s):
                    sx, sy = (cells.x, cells.y) if placement is None else placement.to_slide(cells.x, cells.y)
                    on = (sx >= 0) & (sx < width_um) & (sy >= 0) & (sy < height_um)
                    on &= lookup(lay, lay.labels, cells.x, cells.y) > 0
                    cells = cells.take(on)
                    pos, lvl = positivity(cells, name, marker)
                    if not ("nuclear" in comp or has_cytoplasm):
                        pos = np.zeros_like(pos)  # the marker's compartment is not drawn on these cells
                    _add(by_class[name], pos, lvl)
    tumour = _empty()
    for name in TUMOUR:
        acc = by_class[name]
        tumour["n"] += acc["n"]
        tumour["positive"] += acc["positive"]
        for k in ("1", "2", "3"):
            tumour["by_intensity"][k] += acc["by_intensity"][k]
    return {"tumour": _finish(tumour),
            "by_class": {name: _finish(acc) for name, acc in by_class.items() if acc["n"]},
            "dab_areas": [name for name, hosts in AREA_DAB.items() if expression(name, marker)[0] > 0
                          and any(CLASS_ID[h] in present for h in hosts)],
            "counted": "cells drawn with their centre on the slide and in tissue; positive = drawn with DAB"}
