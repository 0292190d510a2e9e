"""QuPath-readable GeoJSON of the cells an IHC slide was read on (``cells.geojson``, written by quantify-ihc).

One ``detection`` per nucleus scored in the tumour region (:func:`pipeline.ihc.cells.cell_table`), in **level-0
pixel coordinates** like ``tiles.geojson`` (:mod:`pipeline.outputs.geojson`; QuPath: File > Import objects):

* geometry: the nucleus as a 12-vertex polygon of the ellipse with the same second moments (centre, axes and
  orientation of the detected nucleus: an outline good to about a pixel at 0.5 um/px, not the traced mask);
* classification: ``Positive`` / ``Negative`` (QuPath's colours) for tumour-like cells by their DAB class in the
  marker's compartment, ``Set aside (not tumour-like)`` for nuclei too small or narrow to count
  (:mod:`pipeline.ihc.tumour_cells`), so a reviewer sees what the figure left out;
* measurements (QuPath's names where it has one): ``Nucleus: Area µm^2``, ``Nucleus: Width µm`` (minor axis),
  ``Nucleus: Length µm``, ``Nucleus: DAB OD mean``, ``Cytoplasm: DAB OD mean`` (grown cells), ``DAB class``
  (0-3), ``HER2-style research class`` (membranous markers; research only, never an ASCO/CAP result).

Ids are UUID-5 of slide id and centroid, so reruns give the same bytes. A slide not read in a tumour region (or
failed) gets an empty FeatureCollection; ihc.json's ``cells_geojson`` says how many cells were written and why.

Public: :func:`cell_features`, :func:`write_cells_geojson`, :func:`write_slide_cells`.
"""

from __future__ import annotations

import json
import logging
import uuid

import numpy as np

from pipeline import atomic
from pipeline.outputs.geojson import COORD_DECIMALS, IHC_COLOURS, _number

log = logging.getLogger(__name__)

CELL_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "slide-triage/cell")  # never change it (ids would change)
SET_ASIDE = "Set aside (not tumour-like)"
SET_ASIDE_COLOUR = (160, 160, 160)
VERTICES = 12


def _ellipse(x0: float, y0: float, length_px: float, width_px: float, angle: float) -> list[list[list[float]]]:
    t = np.linspace(0.0, 2 * np.pi, VERTICES, endpoint=False)
    a, b = max(length_px / 2, 0.5), max(width_px / 2, 0.5)
    ex, ey = a * np.cos(t), b * np.sin(t)
    xs = x0 + ex * np.cos(angle) - ey * np.sin(angle)
    ys = y0 + ex * np.sin(angle) + ey * np.cos(angle)
    ring = [[round(float(x), COORD_DECIMALS), round(float(y), COORD_DECIMALS)] for x, y in zip(xs, ys, strict=True)]
    return [ring + [ring[0]]]


def cell_features(slide_id: str, tables: list[dict], level0_mpp: float) -> list[dict]:
    """One detection per row of each cell table (with level-0 centroids ``x0``, ``y0``; see module docstring)."""
    features = []
    for t in tables:
        for i in range(len(t["x0"])):
            x0, y0 = float(t["x0"][i]), float(t["y0"][i])
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
                "type": "Feature",
                "id": str(uuid.uuid5(CELL_NAMESPACE, f"{slide_id}:{x0:.1f}:{y0:.1f}")),
                "geometry": {"type": "Polygon",
                             "coordinates": _ellipse(x0, y0, float(t["length_um"][i]) / level0_mpp,
                                                     float(t["width_um"][i]) / level0_mpp, float(t["angle_rad"][i]))},
                "properties": {"objectType": "detection",
                               "classification": {"name": name, "color": list(colour)},
                               "measurements": {k: n for k, v in m.items() if (n := _number(v)) is not None}}})
    return features


def write_cells_geojson(path, slide_id: str, tables: list[dict], level0_mpp: float) -> int:
    """Write ``cells.geojson`` atomically (canonical JSON); returns the number of detections."""
    features = cell_features(slide_id, tables, level0_mpp)
    doc = {"type": "FeatureCollection", "features": features}
    atomic.write_text(path, json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False))
    return len(features)


def write_slide_cells(path, slide_id: str, cell_tables: list, level0_mpp: float | None, record: dict) -> None:
    """quantify-ihc's ``cells.geojson``: the cells of ``cell_tables`` ((tile index, :func:`~pipeline.ihc.cells
    .cell_table`) pairs, level-0 ``x0``, ``y0``) in tile order; ``record`` (ihc.json) gets ``cells_geojson``, the
    count and why (no cells when the slide failed or was not read in a tumour region)."""
    region = record.get("region") or {}
    if record.get("status") == "failed":
        note = f"no cells: {record.get('reason')}"
    elif not region.get("restricted_to_tumour"):
        note = f"no cells: {region.get('reason', 'not read in a tumour region')}"
    else:
        note = f"cells of the {region.get('tiles')} tumour-region tiles; {region.get('reason')}"
    tables = [t for _, t in sorted(cell_tables, key=lambda it: it[0])]
    n = write_cells_geojson(path, slide_id, tables, level0_mpp or 1.0)
    record["cells_geojson"] = {"detections": n, "note": note, "coordinates": "level-0 px"}
    log.info("%s: %d cells written to %s", slide_id, n, path)
