"""QuPath-readable GeoJSON of a slide's tiles and tissue outline (``tiles.geojson``).

A GeoJSON ``FeatureCollection`` in **level-0 pixel coordinates** (origin at the top-left of the full-resolution
image, x right, y down: QuPath's own frame, so File > Import objects places everything where it belongs).
Conventions of QuPath 0.4-0.6 (``qupath.lib.io.PathObjectTypeAdapters``):

* each feature has a top-level ``id`` (a UUID string, which QuPath keeps as the object's id), a ``geometry``
  and ``properties`` with ``objectType`` (``tile``, ``annotation``, ``detection`` ...), optional ``name``,
  ``classification`` ``{"name": ..., "color": [r, g, b]}`` and ``measurements`` as a JSON object mapping
  name -> number (the 0.4+ form; the older list of ``{name, value}`` is also read by QuPath but not written
  here). Measurements that are undefined for a tile are left out: JSON has no NaN.
* tiles: one ``Polygon`` square per scored tile (H&E) or quantified tile (IHC), classified by the arg-max class
  (H&E) or Positive / Negative by the marker's cut-off (IHC), with every probability / DAB metric as measurements.
  Their ids are UUID-5 of slide id + x + y, so the same tile keeps the same id across runs.
* tissue: one ``annotation`` per tissue piece of the QC mask, traced with marching squares
  (``skimage.measure.find_contours``), holes kept, simplified to within one mask pixel (Douglas-Peucker,
  :func:`simplify_line`) and scaled to level 0.
* tumour region (IHC slides whose marker was read in the registered tumour region): one ``annotation``, the
  exact union of the region's tile squares (``in_tumour_region`` of ihc.parquet; outlines merged by
  :mod:`pipeline.outputs.tile_outline`), a ``Polygon`` or, in several pieces, a ``MultiPolygon``, named
  :data:`REGION_NAME`, with its tile count and area as measurements and the region's reason and registration
  in ``metadata`` (string values; QuPath 0.4+ keeps them as the object's metadata).

Output is canonical JSON (sorted keys) and byte-stable. A failed slide gets an empty FeatureCollection.
"""

from __future__ import annotations

import json
import logging
import uuid
from pathlib import Path

import numpy as np

from pipeline import atomic
from pipeline.outputs.drawing import CLASS_COLOURS
from pipeline.tables import try_read_columns

log = logging.getLogger(__name__)

# Namespace of tile ids: uuid5(NAMESPACE_URL, "slide-triage/tile"); never change it (ids would change).
TILE_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "slide-triage/tile")
TISSUE_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "slide-triage/tissue")
REGION_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "slide-triage/tumour-region")
REGION_NAME = "Tumour region (registered from H&E)"
REGION_CLASS, REGION_COLOUR = "Tumor", (200, 0, 0)  # QuPath's built-in tumour class and its colour
COORD_DECIMALS = 2
MEASUREMENT_DECIMALS = 6
TISSUE_COLOUR = (46, 160, 67)
# QuPath's built-in Positive / Negative class colours.
IHC_COLOURS = {"Positive": (200, 50, 50), "Negative": (112, 112, 225)}


def tile_id(slide_id: str, x: int, y: int) -> str:
    """Stable UUID of a tile: uuid5 over ``"<slide_id>:<x>:<y>"`` (level-0 top-left)."""
    return str(uuid.uuid5(TILE_NAMESPACE, f"{slide_id}:{int(x)}:{int(y)}"))


def _square(x: float, y: float, size: float) -> list[list[list[float]]]:
    r = COORD_DECIMALS
    x0, y0, x1, y1 = round(float(x), r), round(float(y), r), round(float(x) + size, r), round(float(y) + size, r)
    return [[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]]


def _number(v) -> float | int | None:
    if v is None:
        return None
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        return int(v)
    f = float(v)
    return round(f, MEASUREMENT_DECIMALS) if np.isfinite(f) else None


def tile_feature(slide_id: str, x: int, y: int, size0: float, measurements: dict, class_name: str | None,
                 colour: tuple[int, int, int] | None) -> dict:
    props = {"objectType": "tile",
             "measurements": {k: n for k, v in measurements.items() if (n := _number(v)) is not None}}
    if class_name:
        props["classification"] = {"name": class_name, "color": list(colour or (128, 128, 128))}
    return {"type": "Feature", "id": tile_id(slide_id, x, y),
            "geometry": {"type": "Polygon", "coordinates": _square(x, y, size0)}, "properties": props}


def he_tile_features(slide_id: str, columns: dict, size0: float, tissue_fraction: dict | None = None) -> list[dict]:
    """One tile feature per scored tile: arg-max class, every ``prob_*``, ``ood_score`` and its two components
    (``ood_model``, ``ood_tile_check``, where present) as measurements."""
    prob_names = [c for c in columns if c.startswith("prob_")]
    classes = [c[len("prob_"):] for c in prob_names]
    probs = np.stack([np.asarray(columns[c], np.float64) for c in prob_names], axis=1) if prob_names else None
    extra = [c for c in ("ood_score", "ood_model", "ood_tile_check") if c in columns]
    features = []
    for i, (x, y) in enumerate(zip(columns["x"], columns["y"], strict=True)):
        m = {c: columns[c][i] for c in prob_names + extra}
        if tissue_fraction is not None and (int(x), int(y)) in tissue_fraction:
            m["tissue_fraction"] = tissue_fraction[(int(x), int(y))]
        name = None
        if probs is not None and np.all(np.isfinite(probs[i])):
            name = classes[int(np.argmax(probs[i]))]
        features.append(tile_feature(slide_id, int(x), int(y), size0, m, name, CLASS_COLOURS.get(name)))
    return features


def ihc_tile_features(slide_id: str, columns: dict, size0: float, metric: str | None,
                      cutoff: float | None) -> list[dict]:
    """One tile feature per quantified tile: Positive / Negative by the marker's cut-off, DAB metrics as
    measurements."""
    names = [c for c in columns if c not in ("x", "y")]
    features = []
    for i, (x, y) in enumerate(zip(columns["x"], columns["y"], strict=True)):
        m = {c: columns[c][i] for c in names}
        value = _number(m.get(metric)) if metric else None
        name = None if value is None or cutoff is None else ("Positive" if value >= cutoff else "Negative")
        features.append(tile_feature(slide_id, int(x), int(y), size0, m, name, IHC_COLOURS.get(name)))
    return features


# ---- tissue outline -------------------------------------------------------------------------------------
def _ring_area(ring: np.ndarray) -> float:
    x, y = ring[:, 0], ring[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))


def simplify_line(points: np.ndarray, tolerance: float) -> np.ndarray:
    """Douglas-Peucker: the fewest points of a polyline (n, 2) that stay within ``tolerance`` of it; the end
    points are kept, so a closed ring (first = last) stays closed."""
    n = len(points)
    if n <= 2:
        return points
    keep = np.zeros(n, bool)
    keep[[0, -1]] = True
    stack = [(0, n - 1)]
    while stack:
        a, b = stack.pop()
        if b <= a + 1:
            continue
        seg = points[b] - points[a]
        rel = points[a + 1:b] - points[a]
        length = float(np.hypot(*seg))
        dist = (np.abs(seg[0] * rel[:, 1] - seg[1] * rel[:, 0]) / length) if length > 0 else np.hypot(rel[:, 0],
                                                                                                      rel[:, 1])
        i = int(np.argmax(dist))
        if dist[i] > tolerance:
            keep[a + 1 + i] = True
            stack += [(a, a + 1 + i), (a + 1 + i, b)]
    return points[keep]


def mask_polygons(mask: np.ndarray, level0_per_mask_px: float, width_px: int | None = None,
                  height_px: int | None = None, tolerance_px: float = 1.0) -> list[list[np.ndarray]]:
    """Polygons (exterior ring, then holes; each (n, 2) x/y level-0 float, closed) of a boolean mask's pieces.

    Pieces are 4-connected, as marching squares with the background fully connected separates them. A mask pixel
    ``(r, c)`` covers level-0 ``[c, c + 1) x [r, r + 1)`` times ``level0_per_mask_px``; contours run through
    pixel-edge midpoints. Rings are simplified to within ``tolerance_px`` mask pixels.
    """
    from scipy import ndimage
    from skimage.measure import find_contours  # light import (the rest of skimage.measure pulls in scipy.signal)

    mask = np.asarray(mask) > 0
    labels, _ = ndimage.label(mask)  # 4-connected (the default structuring element)
    polygons = []
    for k, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        r0, c0 = box[0].start, box[1].start
        piece = np.pad(labels[box] == k, 1)
        rings = []
        for contour in find_contours(piece.astype(np.float32), 0.5):
            simple = simplify_line(contour, tolerance_px)
            if len(simple) < 4:
                continue
            # (row, col) in the padded crop -> mask pixel-centre coordinates -> level-0 (pixel centre = +0.5)
            xy = np.stack([simple[:, 1] - 1 + c0 + 0.5, simple[:, 0] - 1 + r0 + 0.5], axis=1) * level0_per_mask_px
            if width_px is not None:
                xy[:, 0] = np.clip(xy[:, 0], 0, width_px)
            if height_px is not None:
                xy[:, 1] = np.clip(xy[:, 1], 0, height_px)
            if not np.allclose(xy[0], xy[-1]):
                xy = np.vstack([xy, xy[:1]])
            if abs(_ring_area(xy)) > 0:
                rings.append(xy)
        if rings:
            rings.sort(key=lambda ring: -abs(_ring_area(ring)))  # the exterior encloses the most area
            polygons.append(rings)
    return polygons


def tissue_features(slide_id: str, mask: np.ndarray, level0_per_mask_px: float, width_px: int | None,
                    height_px: int | None) -> list[dict]:
    """One QuPath annotation per tissue piece, classified "Tissue"."""
    features = []
    for k, rings in enumerate(mask_polygons(mask, level0_per_mask_px, width_px, height_px), start=1):
        coords = [[[round(float(a), COORD_DECIMALS), round(float(b), COORD_DECIMALS)] for a, b in ring]
                  for ring in rings]
        features.append({
            "type": "Feature", "id": str(uuid.uuid5(TISSUE_NAMESPACE, f"{slide_id}:{k}")),
            "geometry": {"type": "Polygon", "coordinates": coords},
            "properties": {"objectType": "annotation", "name": f"Tissue {k}",
                           "classification": {"name": "Tissue", "color": list(TISSUE_COLOUR)}},
        })
    return features


def region_feature(slide_id: str, columns: dict, size0: float, mpp: float, region: dict | None) -> dict | None:
    """The measured tumour region of an IHC slide as one QuPath annotation (level-0 px), or None when the marker
    was not read in a tumour region (``region["restricted_to_tumour"]`` false) or no tile is in it."""
    from pipeline.outputs.tile_outline import tile_outline_level0

    if not (region or {}).get("restricted_to_tumour") or "in_tumour_region" not in columns:
        return None
    inside = np.array([bool(v) if v is not None else False for v in columns["in_tumour_region"]], bool)
    if not inside.any():
        return None
    polygons = tile_outline_level0(np.asarray(columns["x"])[inside], np.asarray(columns["y"])[inside], size0)
    coords = [[[[round(float(a), COORD_DECIMALS), round(float(b), COORD_DECIMALS)] for a, b in ring]
               for ring in polygon] for polygon in polygons]
    geometry = ({"type": "Polygon", "coordinates": coords[0]} if len(coords) == 1
                else {"type": "MultiPolygon", "coordinates": coords})
    reg = region.get("registration") or {}
    metadata = {"reason": str(region.get("reason", "")),
                "registration": (f"{reg.get('status')} onto H&E slide {reg.get('he_slide_id')}: score "
                                 f"{reg.get('score')}, residual median {reg.get('residual_median_um')} um, 95th "
                                 f"percentile {reg.get('residual_p95_um')} um"),
                "coordinates": "level-0 pixels of this IHC slide; the union of the region's tile squares"}
    tile_mm2 = (size0 * mpp / 1000.0) ** 2
    return {"type": "Feature", "id": str(uuid.uuid5(REGION_NAMESPACE, slide_id)), "geometry": geometry,
            "properties": {"objectType": "annotation", "name": REGION_NAME, "isLocked": True,
                           "classification": {"name": REGION_CLASS, "color": list(REGION_COLOUR)},
                           "measurements": {"tiles": int(inside.sum()),
                                            "area_mm2": round(float(inside.sum()) * tile_mm2, MEASUREMENT_DECIMALS)},
                           "metadata": metadata}}


def _rings(geometry: dict) -> list:
    """Every ring of a Polygon or MultiPolygon."""
    if geometry["type"] == "MultiPolygon":
        return [ring for polygon in geometry["coordinates"] for ring in polygon]
    return geometry["coordinates"]


def feature_collection(features: list[dict]) -> dict:
    return {"type": "FeatureCollection", "features": features}


# ---- validation -----------------------------------------------------------------------------------------
def geojson_problems(collection: dict) -> list[str]:
    """Violations of ``pipeline/schemas/geojson.schema.yaml`` plus checks a schema cannot state (closed rings,
    unique ids); empty when valid."""
    import jsonschema

    from pipeline.config import load_schema

    validator = jsonschema.Draft202012Validator(load_schema("geojson"))
    problems = [f"{'.'.join(str(p) for p in e.absolute_path) or '(top level)'}: {e.message}"
                for e in sorted(validator.iter_errors(collection), key=lambda e: [str(p) for p in e.absolute_path])]
    if problems:
        return problems[:20]
    ids = [f.get("id") for f in collection["features"]]
    if len(set(ids)) != len(ids):
        problems.append("feature ids are not unique")
    for i, f in enumerate(collection["features"]):
        for ring in _rings(f["geometry"]):
            if ring[0] != ring[-1]:
                problems.append(f"features.{i}: polygon ring not closed")
    return problems


# ---- CLI ------------------------------------------------------------------------------------------------


def build(args) -> dict:
    """The FeatureCollection of one slide from the CLI arguments."""
    from PIL import Image

    summary = atomic.read_json(args.summary)
    if summary["status"] == "failed":
        return feature_collection([])
    slide_id = summary["slide_id"]
    grid = try_read_columns(args.tiles, log) if args.tiles else None
    if grid is None or not grid[1].get("mpp"):
        return feature_collection([])
    grid_cols, meta = grid
    size0 = float(meta["tile_size_level0"])
    width, height = meta.get("width_px"), meta.get("height_px")
    features = []
    thumb_mpp = summary["qc"].get("thumb_mpp")
    if args.mask and thumb_mpp:
        with Image.open(args.mask) as im:
            mask = np.asarray(im) > 127
        features += tissue_features(slide_id, mask, float(thumb_mpp) / float(meta["mpp"]), width, height)
    if summary["kind"] == "HE" and args.scores:
        table = try_read_columns(args.scores, log)
        if table is not None and len(table[0].get("x", [])):
            fraction = {(int(x), int(y)): float(f) for x, y, f in
                        zip(grid_cols["x"], grid_cols["y"], grid_cols["tissue_fraction"], strict=True)}
            features += he_tile_features(slide_id, table[0], size0, fraction)
    elif summary["kind"] == "IHC" and args.ihc_tiles:
        table = try_read_columns(args.ihc_tiles, log)
        result = (summary.get("ihc") or {}).get("result") or {}
        if table is not None and len(table[0].get("x", [])):
            region = region_feature(slide_id, table[0], size0, float(meta["mpp"]),
                                    (summary.get("ihc") or {}).get("region"))
            features += [region] if region else []
            features += ihc_tile_features(slide_id, table[0], size0, result.get("metric"), result.get("cutoff"))
    return feature_collection(features)


def configure_parser(parser) -> None:
    parser.add_argument("--summary", required=True, help="summary.json from summarize-slide")
    parser.add_argument("--tiles", required=True, help="tiles.parquet from tile-slide (scale, slide size)")
    parser.add_argument("--mask", default=None, help="tissue.png from qc-slide (tissue outline)")
    parser.add_argument("--scores", nargs="?", default=None, help="scores.parquet (H&E tiles)")
    parser.add_argument("--ihc-tiles", nargs="?", default=None, help="ihc.parquet (IHC tiles)")
    parser.add_argument("--out", required=True, help="tiles.geojson to write")


def run(args) -> None:
    collection = build(args)
    atomic.write_text(args.out, json.dumps(collection, sort_keys=True, separators=(",", ":"),
                                           allow_nan=False) + "\n")
    kinds = {}
    for f in collection["features"]:
        kinds[f["properties"]["objectType"]] = kinds.get(f["properties"]["objectType"], 0) + 1
    log.info("%s: %s", Path(args.out).name, ", ".join(f"{n} {k}s" for k, n in sorted(kinds.items())) or "no features")
