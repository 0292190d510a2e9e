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
  (0-3), ``HER2-style research class`` (membranous; research only, never an ASCO/CAP result). Values rounded to
  :data:`~pipeline.outputs.geojson.MEASUREMENT_DECIMALS` places; a missing (NaN) one is left out.

Ids are UUID-5 of slide id and centroid, so reruns give the same bytes. A slide not read in a tumour region (or
failed) gets an empty FeatureCollection; ihc.json's ``cells_geojson`` says how many cells were written and why.

The text is made a whole cell table at a time (:func:`features_json`: arrays in, canonical JSON out, the bytes
``json.dumps(..., sort_keys=True, separators=(",", ":"), ensure_ascii=False)`` writes for the same features), so
quantify-ihc's worker processes make each tile's share (:func:`pipeline.ihc.grid.measure_grid`) and the
writer only joins them in tile order, streamed to disk (:func:`write_features`).

Public: :func:`features_json`, :func:`cell_ids`, :func:`write_cells_geojson`, :func:`write_slide_cells`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid

import numpy as np

from pipeline import atomic
from pipeline.outputs.geojson import COORD_DECIMALS, IHC_COLOURS, MEASUREMENT_DECIMALS, _number
from pipeline.outputs.json_columns import PAD, choice_block, fixed_block, int_block, join_rows, number_block, text_block

log = logging.getLogger(__name__)

CELL_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "slide-triage/cell")  # never change it (ids would change)
SET_ASIDE = "Set aside (not tumour-like)"
SET_ASIDE_COLOUR = (160, 160, 160)
VERTICES = 12

_T = np.linspace(0.0, 2 * np.pi, VERTICES, endpoint=False)
_COS_T, _SIN_T = np.cos(_T), np.sin(_T)
# classification by class index: set aside, tumour-like with DAB class 0, tumour-like with DAB class 1-3
_CLASSES = [(SET_ASIDE, SET_ASIDE_COLOUR), ("Negative", IHC_COLOURS["Negative"]), ("Positive", IHC_COLOURS["Positive"])]
# (measurement name, cell-table column) in the name order canonical JSON writes them; "DAB class" is always an
# integer, "HER2-style research class" only where it is >= 0 (membranous markers), the others as the column is
_MEASUREMENTS = sorted([("Nucleus: Area µm^2", "area_um2"), ("Nucleus: Width µm", "width_um"),
                        ("Nucleus: Length µm", "length_um"), ("Nucleus: DAB OD mean", "nucleus_dab"),
                        ("Cytoplasm: DAB OD mean", "ring_dab"), ("DAB class", "dab_class"),
                        ("HER2-style research class", "her2_class")])
_HEX = np.frombuffer("".join(f"{b:02x}" for b in range(256)).encode(), np.uint8).reshape(256, 2)  # byte -> hex


def _canonical(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _rings(table: dict, level0_mpp: float) -> np.ndarray:
    """(n, 2 * VERTICES) ellipse vertices, x, y interleaved, not rounded: each cell's ellipse of ``length_um`` x
    ``width_um`` (half-axes at least 0.5 px) at angle ``angle_rad`` about (``x0``, ``y0``)."""
    x0 = np.asarray(table["x0"], np.float64)[:, None]
    y0 = np.asarray(table["y0"], np.float64)[:, None]
    a = np.maximum(np.asarray(table["length_um"], np.float64) / level0_mpp / 2, 0.5)[:, None]
    b = np.maximum(np.asarray(table["width_um"], np.float64) / level0_mpp / 2, 0.5)[:, None]
    angle = np.asarray(table["angle_rad"], np.float64)
    cos, sin = np.cos(angle)[:, None], np.sin(angle)[:, None]
    ex, ey = a * _COS_T, b * _SIN_T
    ring = np.empty((len(angle), VERTICES, 2))
    ring[:, :, 0] = x0 + ex * cos - ey * sin
    ring[:, :, 1] = y0 + ex * sin + ey * cos
    return ring.reshape(len(angle), -1)


def cell_ids(slide_id: str, x0, y0) -> np.ndarray:
    """(n, 36) ASCII block (:mod:`pipeline.outputs.json_columns`) of ``str(uuid.uuid5(CELL_NAMESPACE,
    f"{slide_id}:{x0:.1f}:{y0:.1f}"))`` of every centroid: the SHA-1 of namespace and name with UUID version 5
    and the RFC 4122 variant set, written in hex, without a UUID object per cell."""
    x0, y0 = np.asarray(x0, np.float64), np.asarray(y0, np.float64)
    n = len(x0)
    xy, ok = fixed_block(np.concatenate([x0, y0]), 1)
    names = join_rows([xy[:n], text_block(":", n), xy[n:]], b"\n").split(b"\n")
    for i in np.flatnonzero(~(ok[:n] & ok[n:])).tolist():  # NaN, huge
        names[i] = f"{float(x0[i]):.1f}:{float(y0[i]):.1f}".encode()
    prefix, sha1 = CELL_NAMESPACE.bytes + f"{slide_id}:".encode(), hashlib.sha1
    digest = np.frombuffer(b"".join([sha1(prefix + name).digest() for name in names]), np.uint8)
    digest = digest.reshape(n, 20)[:, :16].copy()
    digest[:, 6] = (digest[:, 6] & 0x0F) | 0x50  # version 5
    digest[:, 8] = (digest[:, 8] & 0x3F) | 0x80  # variant RFC 4122
    hexed = _HEX[digest].reshape(n, 32)
    dash = np.full((n, 1), ord("-"), np.uint8)
    return np.concatenate([hexed[:, :8], dash, hexed[:, 8:12], dash, hexed[:, 12:16], dash, hexed[:, 16:20], dash,
                           hexed[:, 20:]], axis=1)


def _classes(table: dict) -> np.ndarray:
    """Index into _CLASSES of every cell."""
    positive = np.asarray(table["dab_class"]) > 0
    return np.where(np.asarray(table["tumour_like"], bool), np.where(positive, 2, 1), 0)


def _measurement_blocks(table: dict) -> tuple[list[np.ndarray], np.ndarray]:
    """(blocks, odd): the ``"name":value`` text of each measurement in name order, a comma before all but a cell's
    first, padding where a cell has none (NaN, infinite; HER2 class < 0); odd where a value is not written right."""
    n = len(table["x0"])
    columns = {c: np.asarray(table[c]) for _, c in _MEASUREMENTS}
    integer = [c for c, v in columns.items() if c in ("dab_class", "her2_class") or v.dtype.kind in "iu"]
    real = [c for c in columns if c not in integer]
    ints = int_block(np.stack([columns[c].astype(np.int64) for c in integer]).ravel())
    text = dict(zip(integer, ints.reshape(len(integer), n, -1), strict=True))
    floats = np.stack([columns[c].astype(np.float64) for c in real])
    numbers, ok = number_block(floats.ravel(), MEASUREMENT_DECIMALS)
    text.update(zip(real, numbers.reshape(len(real), n, -1), strict=True))
    present = {c: (columns[c] >= 0 if c == "her2_class" else np.ones(n, bool)) for c in integer}
    present.update(zip(real, np.isfinite(floats), strict=True))
    odd = (np.isfinite(floats) & ~ok.reshape(len(real), n)).any(axis=0)
    blocks, earlier = [], np.zeros(n, bool)  # earlier: a measurement before this one is present (a comma first)
    for name, column in _MEASUREMENTS:
        comma = np.where(present[column] & earlier, ord(","), PAD).astype(np.uint8)[:, None]
        block = np.concatenate([comma, text_block(_canonical(name) + ":", n), text[column]], axis=1)
        blocks.append(np.where(present[column][:, None], block, PAD).astype(np.uint8))
        earlier |= present[column]
    return blocks, odd


def _feature(table: dict, i: int, ring: np.ndarray, cell_id: str, klass: int) -> dict:
    """Cell ``i`` as a feature dict, one value at a time (what :func:`features_json` does for the rows its
    column arithmetic cannot write, e.g. a NaN vertex)."""
    coords = [[round(float(x), COORD_DECIMALS), round(float(y), COORD_DECIMALS)] for x, y in ring.reshape(-1, 2)]
    measurements = {}
    for name, column in _MEASUREMENTS:
        v = table[column][i]
        if column in ("dab_class", "her2_class"):
            if column == "dab_class" or v >= 0:
                measurements[name] = int(v)
        elif (n := _number(v)) is not None:
            measurements[name] = n
    name, colour = _CLASSES[klass]
    return {"type": "Feature", "id": cell_id,
            "geometry": {"type": "Polygon", "coordinates": [coords + [coords[0]]]},
            "properties": {"objectType": "detection", "classification": {"name": name, "color": list(colour)},
                           "measurements": measurements}}


def features_json(slide_id: str, table: dict, level0_mpp: float) -> bytes:
    """The detections of one cell table (level-0 centroids ``x0``, ``y0``; see the module docstring) as canonical
    JSON, UTF-8: the ``features`` array's items, comma-separated, without the brackets (b"" for no cells). Built
    column by column (:mod:`pipeline.outputs.json_columns`); the bytes ``json.dumps`` writes for the features."""
    n = len(table["x0"])
    if n == 0:
        return b""
    rings = _rings(table, level0_mpp)
    ids = cell_ids(slide_id, table["x0"], table["y0"])
    klass = _classes(table)
    # ring: 2 * VERTICES numbers, then the first vertex again; each number followed by its separator
    numbers, odd = number_block(np.concatenate([rings, rings[:, :2]], axis=1).ravel(), COORD_DECIMALS)
    odd = ~odd.reshape(n, -1).all(axis=1)
    separators = np.full((2 * VERTICES + 2, 3), PAD, np.uint8)
    separators[0::2, 0] = ord(",")
    separators[1::2] = np.frombuffer(b"],[", np.uint8)
    separators[-1] = np.frombuffer(b"]]]", np.uint8)
    ring_text = np.concatenate([numbers.reshape(n, 2 * VERTICES + 2, -1),
                                np.broadcast_to(separators, (n, *separators.shape))], axis=2).reshape(n, -1)
    blocks = [text_block('{"geometry":{"coordinates":[[[', n), ring_text, text_block(',"type":"Polygon"},"id":"', n),
              ids,
              text_block('","properties":{"classification":', n),
              choice_block([_canonical({"color": list(c), "name": name}) for name, c in _CLASSES], klass),
              text_block(',"measurements":{', n)]
    measurements, odd_measurement = _measurement_blocks(table)
    blocks += measurements
    odd |= odd_measurement
    blocks.append(text_block('},"objectType":"detection"},"type":"Feature"}', n))
    if not odd.any():
        return join_rows(blocks, b",")
    rows = join_rows(blocks, b"\n").split(b"\n")
    for i in np.flatnonzero(odd).tolist():
        rows[i] = _canonical(_feature(table, i, rings[i], ids[i].tobytes().decode(), int(klass[i]))).encode()
    return b",".join(rows)


def write_features(path, parts) -> None:
    """Write a FeatureCollection atomically, streamed: its features are the :func:`features_json` pieces ``parts``
    in order (empty ones skipped); the bytes of the canonical JSON of the whole document."""
    with atomic.atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(b'{"features":[')
        first = True
        for part in parts:
            if part:
                fh.write(part if first else b"," + part)
                first = False
        fh.write(b'],"type":"FeatureCollection"}')


def write_cells_geojson(path, slide_id: str, tables: list[dict], level0_mpp: float) -> int:
    """Write ``cells.geojson`` atomically (canonical JSON) of the cell tables in order; returns the number of
    detections."""
    write_features(path, (features_json(slide_id, t, level0_mpp) for t in tables))
    return sum(len(t["x0"]) for t in tables)


def write_slide_cells(path, slide_id: str, cell_tables: list, level0_mpp: float | None, record: dict) -> None:
    """quantify-ihc's ``cells.geojson``: the cells of ``cell_tables`` ((tile index, :func:`~pipeline.ihc.cells
    .cell_table`, its :func:`features_json` or None) triples, level-0 ``x0``, ``y0``) in tile order; a None one is
    made here. ``record`` (ihc.json) gets ``cells_geojson``, the count and why (no cells when the slide failed or
    was not read in a tumour region)."""
    region = record.get("region") or {}
    if record.get("status") == "failed":
        note = f"no cells: {record.get('reason')}"
    elif not region.get("restricted_to_tumour"):
        note = f"no cells: {region.get('reason', 'not read in a tumour region')}"
    else:
        note = f"cells of the {region.get('tiles')} tumour-region tiles; {region.get('reason')}"
    ordered = sorted(cell_tables, key=lambda it: it[0])
    mpp = level0_mpp or 1.0
    write_features(path, (js if js is not None else features_json(slide_id, t, mpp) for _, t, js in ordered))
    n = sum(len(t["x0"]) for _, t, _ in ordered)
    record["cells_geojson"] = {"detections": n, "note": note, "coordinates": "level-0 px"}
    log.info("%s: %d cells written to %s", slide_id, n, path)
