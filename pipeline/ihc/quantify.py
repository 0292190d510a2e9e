"""DAB quantification of an IHC slide over its tile grid, and its CLI ``python -m pipeline quantify-ihc``
(rule ``quantify_ihc``).

* :func:`calibrate_slide` - per-slide constants (glass colour, stain vectors, nucleus threshold);
* :func:`quantify_ihc` - every grid tile measured (:mod:`pipeline.ihc.measure`, in worker processes:
  :mod:`pipeline.ihc.grid`), summed, and the marker read (:mod:`pipeline.ihc.reading`);
* :func:`run` / :func:`run_slide` - the verb: ihc.json, ihc.parquet (:mod:`pipeline.ihc.tiles_table`) and an
  optional contact sheet (:mod:`pipeline.ihc.contact_sheet`) of an image or of a slide's tiles.

Units: OD is log10 optical density along a unit stain vector (see :mod:`pipeline.ihc.stain`); x, y are level-0
pixels of a grid tile's top-left corner; percentages are 0-100; H-scores 0-300.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import fields
from functools import partial
from pathlib import Path

import numpy as np

from pipeline import DISCLAIMER, atomic
from pipeline.ihc import stain
from pipeline.ihc.contact_sheet import contact_sheet, png_bytes, slide_contact_sheet
from pipeline.ihc.grid import GridJob, measure_grid
from pipeline.ihc.measure import derived_metrics
from pipeline.ihc.measured_region import measured_region, per_tumour_cell_entry, summarise_rows
from pipeline.ihc.nuclei import estimate_nucleus_threshold
from pipeline.ihc.params import IhcParams
from pipeline.ihc.reading import internal_control
from pipeline.ihc.stain import Deconvolver
from pipeline.ihc.stain_check import stain_check
from pipeline.ihc.tiles_table import write_tiles

log = logging.getLogger(__name__)

IHC_VERSION = 1


# ---- one slide ----------------------------------------------------------------------------------------
def calibrate_slide(slide, grid_x, grid_y, grid_size_um: float, params: IhcParams, thumb=None):
    """Per-slide constants, estimated once: glass colour (thumbnail), stain vectors and the nucleus threshold
    (both from up to ``vector_sample_tiles`` tiles spread evenly over the grid).

    Returns ``(deconvolver, nucleus_od_min, method)`` where ``method`` records what was used, for ihc.json.
    """
    method: dict = {"stain_vectors": params.stain_vectors, "background": params.background}
    background = np.full(3, 255.0)
    if params.background == "estimated" and thumb is not None:
        background = stain.estimate_background(thumb)
    matrix = stain.HDAB_REFERENCE
    nucleus_od_min = params.nucleus_od_min
    needs_sample = params.stain_vectors == "estimated" or nucleus_od_min == "auto"
    sample = None
    if needs_sample and len(grid_x):
        tile_px = int(round(grid_size_um / params.quantify_mpp))
        picks = np.unique(np.linspace(0, len(grid_x) - 1, num=min(params.vector_sample_tiles, len(grid_x)))
                          .round().astype(int))
        sample = [slide.read_tile(int(grid_x[i]), int(grid_y[i]), tile_px, params.quantify_mpp) for i in picks]
    if params.stain_vectors == "estimated" and sample:
        matrix, est = stain.estimate_hdab_vectors(np.concatenate([t.reshape(-1, 3) for t in sample])[None],
                                                  background)
        method["estimate"] = est
    deconvolver = Deconvolver(matrix, background)
    if nucleus_od_min == "auto":
        if sample:
            maps = [deconvolver(t) for t in sample]  # (H OD, DAB OD, RGB OD) per tile, computed once
            h = np.concatenate([m[0] for m in maps], axis=0)
            dab = np.concatenate([m[1] for m in maps], axis=0)
            nucleus_od_min = estimate_nucleus_threshold(h, dab, params.quantify_mpp, params.nucleus_sigma_um,
                                                        params.dab_od_thresholds[0] / 2, params.nucleus_od_range)
        else:
            nucleus_od_min = params.nucleus_od_range[0]
    method["background_rgb"] = [round(float(v), 1) for v in background]
    method["h_vector"] = [round(float(v), 4) for v in matrix[0]]
    method["dab_vector"] = [round(float(v), 4) for v in matrix[1]]
    method["nucleus_od_min"] = round(float(nucleus_od_min), 4)
    return deconvolver, float(nucleus_od_min), method


def quantify_ihc(slide, grid_x: np.ndarray, grid_y: np.ndarray, grid_size_um: float, entry: dict,
                 params: IhcParams, threads: int = 1, thumb=None, cell_tiles: np.ndarray | None = None,
                 cells_out: list | None = None, cell_json: Callable[[dict], bytes] | None = None
                 ) -> tuple[list[dict], dict]:
    """Quantify every grid tile of an open slide; returns (per-tile rows, slide summary).

    Tiles flagged in ``cell_tiles`` (the tumour region) are also scored cell by cell in the marker's compartment
    (:mod:`pipeline.ihc.cells`); the others by pixels and nuclei only. A ``cells_out`` list receives (tile index,
    cell table, ``cell_json`` of it or None) for each such tile: its :func:`~pipeline.ihc.cells.cell_table` with the
    nucleus centroids in level-0 px (``x0``, ``y0``), and what ``cell_json`` (e.g. the tile's cells.geojson features,
    :func:`pipeline.outputs.cell_geojson.features_json`) made of it in the worker process that measured the tile.

    Each grid tile (top-left ``grid_x[i], grid_y[i]`` level-0 px, side ``grid_size_um``) is read once at
    ``params.quantify_mpp`` (same physical area, more pixels), on ``threads`` worker processes
    (:func:`measure_grid`).
    """
    from pipeline.ihc.markers import is_nuclear

    nuclear = is_nuclear(entry)
    tile_px = int(round(grid_size_um / params.quantify_mpp))
    # cells of the tumour region: only tumour-like ones where the marker is read per tumour cell
    tumour_cells = params.tumour_cell_filter if entry["reading"].get("per_tumour_cell") else None
    # The tissue being read sets the constants: the tumour region's tiles when there is a region (the slide's
    # stroma would set a lower nucleus threshold, whose masks swallow DAB-brown cytoplasm).
    calib = np.flatnonzero(cell_tiles) if cell_tiles is not None and np.any(cell_tiles) else np.arange(len(grid_x))
    deconvolver, nucleus_od_min, method = calibrate_slide(slide, np.asarray(grid_x)[calib], np.asarray(grid_y)[calib],
                                                          grid_size_um, params, thumb)
    method["calibrated_on"] = "tumour region" if cell_tiles is not None and np.any(cell_tiles) else "all tiles"
    job = GridJob(np.asarray(grid_x), np.asarray(grid_y), tile_px, params, nuclear, deconvolver, nucleus_od_min,
                  entry["compartment"], None if cell_tiles is None else np.asarray(cell_tiles, bool), tumour_cells,
                  grid_size_um / slide.mpp / tile_px, cells_out is not None, cell_json)
    start = time.perf_counter()
    results = measure_grid(slide, job, threads)
    elapsed = time.perf_counter() - start
    counts = [c for c, _, _ in results]
    if cells_out is not None:
        cells_out.extend((i, cells, js) for i, (_, cells, js) in enumerate(results) if cells is not None)
    rows = []
    for i, c in enumerate(counts):
        rows.append({"x": int(grid_x[i]), "y": int(grid_y[i]), **c, **derived_metrics(c)})
    summary = summarise_rows(rows, entry, params)
    summary.update(tiles={"quantified": len(rows), "tile_px": tile_px, "tile_um": round(grid_size_um, 3)},
                   internal_control=internal_control(counts, entry, params), method=method)
    log.info("quantified %d tiles of %d px at %g um/px in %.1f s (%.1f tiles/s, %d workers)", len(rows), tile_px,
             params.quantify_mpp, elapsed, len(rows) / elapsed if elapsed > 0 else math.inf, threads)
    return rows, summary


# ---- CLI -------------------------------------------------------------------------------------------
def configure_parser(parser) -> None:
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--slide", help="IHC slide file")
    src.add_argument("--image", help="a plain RGB image (PNG/JPEG) instead of a slide: contact sheet only")
    parser.add_argument("--slide-id", default=None, help="slide id (default: the tile grid's, else file stem)")
    parser.add_argument("--mpp", type=float, default=None,
                        help="level-0 um/px override for --slide (sample sheet `mpp`); required with --image: "
                             "the image's um/px (never assumed)")
    parser.add_argument("--marker", default=None,
                        help="marker name from the knowledge base (the slide's stain); --image defaults to Ki67")
    parser.add_argument("--tiles", help="tiles.parquet from tile-slide")
    parser.add_argument("--qc", help="qc.json from qc-slide")
    parser.add_argument("--config", default="configs/config.yaml", help="config file")
    parser.add_argument("--markers", default=None, help="marker knowledge base (default: the config's `markers`)")
    parser.add_argument("--out-tiles", help="ihc.parquet to write (per-tile metrics)")
    parser.add_argument("--out", help="ihc.json to write (slide totals and marker result)")
    parser.add_argument("--threads", type=int, default=1, help="worker processes")
    parser.add_argument("--contact-sheet", help="PNG contact sheet: RGB | H | DAB | classes | nuclei")
    parser.add_argument("--registration", default=None,
                        help="registration.json from register-ihc (this slide onto its case's H&E slide): the marker "
                             "is then read in the tumour region; without it, over the whole tissue (flagged)")
    parser.add_argument("--he-tiles", default=None, help="the H&E slide's tiles.parquet (with --registration)")
    parser.add_argument("--he-scores", default=None, help="the H&E slide's scores.parquet (with --registration)")
    parser.add_argument("--out-cells", default=None,
                        help="cells.geojson to write: the cells scored in the tumour region as QuPath detections")


def run(args) -> None:
    from PIL import Image

    from pipeline.config import load_config
    from pipeline.errors import ConfigError
    from pipeline.ihc.markers import is_nuclear, load_markers, marker_entry

    config = load_config(args.config)
    params = IhcParams.from_config(config.get("ihc"))
    kb = load_markers(args.markers or config["markers"])
    if args.marker is None and args.image:
        args.marker = "Ki67"
    if args.marker is None:
        raise ConfigError("--slide needs --marker (the slide's stain, a marker of the knowledge base)")
    entry = marker_entry(kb, args.marker)
    if args.image:
        mpp = image_mpp(args.image, args.mpp, params.quantify_mpp)
        rgb = np.asarray(Image.open(args.image).convert("RGB"))
        if abs(mpp - params.quantify_mpp) / params.quantify_mpp > 0.05:
            scale = mpp / params.quantify_mpp
            rgb = np.asarray(Image.fromarray(rgb).resize((round(rgb.shape[1] * scale), round(rgb.shape[0] * scale)),
                                                         Image.Resampling.LANCZOS))
        deconvolver = Deconvolver(stain.HDAB_REFERENCE, tuple(stain.estimate_background(rgb))
                                  if params.background == "estimated" else (255.0, 255.0, 255.0))
        sheet, m = contact_sheet(rgb, params.quantify_mpp, params, True, deconvolver,
                                 title=f"{Path(args.image).name} ({args.marker})", nuclear_marker=is_nuclear(entry))
        out = args.contact_sheet or "contact_sheet.png"
        atomic.write_bytes(out, png_bytes(sheet))
        log.info("%s: DAB+ area %s %%, H-score %s, %d nuclei (%s %% positive); contact sheet %s", args.image,
                 m["area_positive_pct"], m["h_score"], m["nuclei"], m["nuclei_positive_pct"], out)
        return
    if not (args.tiles and args.out and args.out_tiles):
        raise ConfigError("--slide needs --tiles (tiles.parquet), --out-tiles and --out")
    run_slide(args, config, params, kb, entry)


def image_mpp(path, mpp: float | None, quantify_mpp: float) -> float:
    """The um/px of a plain image given with ``--mpp``: required, plausible, and not coarser than
    ``quantify_mpp`` (an image is never enlarged); raises :class:`SlideError` naming the file and the fix."""
    from pipeline.errors import SlideError
    from pipeline.slides.resolution import check_mpp, resolution_problem

    if mpp is None:
        raise SlideError(f"{path}: --image needs --mpp, the image's um/px (a plain image carries none; it is "
                         "never assumed)")
    check_mpp(mpp, path, "--mpp")
    problem = resolution_problem(mpp, quantify_mpp, "IHC quantification (ihc.quantify_mpp)")
    if problem:
        raise SlideError(f"{path}: {problem}")
    return mpp


def restrict_to_tumour(record: dict, rows: list[dict], region: dict, inside: np.ndarray | None, params: IhcParams,
                       entry: dict) -> None:
    """Read the marker in the tumour region when there is one (:mod:`pipeline.ihc.measured_region`): the region's
    figures (per cell too) become the slide's, the whole tissue's stay under ``whole_tissue``; otherwise the
    whole-tissue figures stay, and ``region`` says why they are not restricted. Marks each row in or out."""
    record["region"] = region
    for i, row in enumerate(rows):
        row["in_tumour_region"] = bool(inside[i]) if inside is not None else None
    if inside is None:
        log.warning("%s: %s", record["slide_id"], region["reason"])
        return
    record["whole_tissue"] = {k: record[k] for k in ("tissue_mm2", "counts", "metrics", "distribution", "result")}
    in_region = [r for r, keep in zip(rows, inside, strict=True) if keep]
    reading = per_tumour_cell_entry(entry)
    tumour = summarise_rows(in_region, reading, params)
    region["per_tumour_cell"] = reading is not entry
    if reading is not entry and tumour["metrics"]["cells"] < params.min_nuclei:
        # too few tumour-like cells to read per cell (pale counterstain, a tumour of small cells): the region is
        # read as the whole tissue is, and says so
        region["per_tumour_cell"] = False
        region["per_cell_reason"] = (f"not read per tumour cell: only {tumour['metrics']['cells']} tumour-like "
                                     f"cells found (need {params.min_nuclei}); read by {entry['reading']['metric']} "
                                     "in the region")
        log.warning("%s: %s", record["slide_id"], region["per_cell_reason"])
        tumour = summarise_rows(in_region, entry, params)
    region["tiles"] = tumour.pop("tiles")
    record.update(tumour)
    log.info("%s: read in the tumour region (%d of %d tiles): %s", record["slide_id"], region["tiles"], len(rows),
             record["result"]["reason"])


def run_slide(args, config: dict, params: IhcParams, kb: dict, entry: dict) -> None:
    from pipeline.errors import SlideError
    from pipeline.outputs.cell_geojson import features_json, write_slide_cells
    from pipeline.slides.reader import open_slide
    from pipeline.slides.resolution import check_resolution
    from pipeline.slides.tiling import read_tile_grid

    grid = read_tile_grid(args.tiles)
    slide_id = args.slide_id or grid.meta.get("slide_id") or Path(args.slide).stem
    qc = (atomic.read_json(args.qc) if args.qc else None) or {"status": "unknown", "reasons": []}
    target_mpp = float(grid.meta.get("target_mpp", config["tiling"]["target_mpp"]))
    tile_px = int(grid.meta.get("tile_px", config["tiling"]["tile_px"]))
    grid_size_um = tile_px * target_mpp
    record = {
        "version": IHC_VERSION, "slide_id": slide_id, "marker": args.marker,
        "compartment": entry["compartment"], "lineage": entry["lineage"], "supports": entry["supports"],
        "qc": {"status": qc.get("status"), "reasons": qc.get("reasons", [])},
        "params": _params_record(params), "warnings": [], "disclaimer": DISCLAIMER,
    }
    rows: list[dict] = []
    cell_tables: list = []
    level0_mpp = None
    meta = {"slide_id": slide_id, "marker": args.marker, "quantify_mpp": params.quantify_mpp,
            "grid_target_mpp": target_mpp, "grid_tile_px": tile_px}
    failure = None
    if qc.get("status") == "failed":
        failure = "QC failed: " + "; ".join(qc.get("reasons", []))
    elif grid.meta.get("status") not in (None, "ok"):
        failure = f"tile grid {grid.meta.get('status')}: {grid.meta.get('reason', '')}".strip()
    if failure is None:
        try:
            with open_slide(args.slide, mpp=args.mpp) as slide:
                check_resolution(slide, params.quantify_mpp, "IHC quantification (ihc.quantify_mpp)")
                read_px = int(round(grid_size_um / params.quantify_mpp))  # as quantify_ihc reads each tile
                record["effective_mpp"] = round(slide.tile_geometry(read_px, params.quantify_mpp)[2], 6)
                thumb, _ = slide.read_downsampled(max(params.thumb_mpp, slide.mpp))
                check = stain_check(thumb, args.marker, he_dab_max=params.stain_check_he_dab_max,
                                    ihc_dab_min=params.stain_check_ihc_dab_min,
                                    ihc_eosin_min=params.stain_check_ihc_eosin_min)
                record["stain_check"] = check
                size0 = float(grid.meta.get("tile_size_level0") or tile_px * target_mpp / slide.mpp)
                region = measured_region(grid.x, grid.y, size0, args.registration,
                                         args.he_tiles, args.he_scores, (config.get("ihc") or {}).get("tumour_region"),
                                         config["slide_call"]["tumour_prob_min"])
                inside = region.pop("in_region")
                # each tile's cells.geojson features are made by the worker that measured it
                cell_json = partial(features_json, slide_id, level0_mpp=slide.mpp) if args.out_cells else None
                rows, summary = quantify_ihc(slide, grid.x, grid.y, grid_size_um, entry, params, args.threads, thumb,
                                             cell_tiles=inside, cells_out=cell_tables, cell_json=cell_json)
                level0_mpp = slide.mpp
                record.update(summary)
                restrict_to_tumour(record, rows, region, inside, params, entry)
                if args.contact_sheet and rows:
                    slide_contact_sheet(slide, rows, grid_size_um, params, entry, summary, args.contact_sheet)
        except SlideError as exc:
            from pipeline.redact import redact

            failure = redact(str(exc), args.slide)
    if failure is not None:
        log.error("%s: not quantified: %s", slide_id, failure)
        record.update(status="failed", reason=failure, result={"call": "not_evaluable", "reason": failure,
                                                                "metric": entry["reading"]["metric"], "value": None})
    else:
        record["status"], record["reason"] = "ok", ""
        _warn(record, qc, slide_id)
    meta["status"] = record["status"]
    if args.out_cells:
        write_slide_cells(args.out_cells, slide_id, cell_tables, level0_mpp, record)
    write_tiles(args.out_tiles, rows, meta)
    atomic.write_json(args.out, record)
    res = record["result"]
    log.info("%s %s: %s (%s = %s)", slide_id, args.marker, res["call"], res.get("metric"), res.get("value"))


def _warn(record: dict, qc: dict, slide_id: str) -> None:
    """A quantified slide's warnings: probable mislabel (then not scored), QC warnings, a negative result without
    its internal control."""
    check = record["stain_check"]
    if check["probable_mislabel"]:
        record["status"] = "warn"
        record["warnings"].append(f"probable mislabel: {check['reason']}")
        record["result"] = {**record["result"], "call": "not_evaluable", "measured_call": record["result"]["call"],
                            "reason": f"not scored: {check['reason']}"}
        log.warning("%s: %s", slide_id, check["reason"])
    if qc.get("status") == "warn":
        record["warnings"].append("QC warnings: " + "; ".join(qc.get("reasons", [])))
    ic = record.get("internal_control")
    if ic and not ic["seen"] and record["result"]["call"] == "negative":
        record["warnings"].append(f"negative without visible internal control ({ic['expected']}): "
                                  "a technical failure cannot be excluded")


def _params_record(params: IhcParams) -> dict:
    out = {}
    for f in fields(params):
        v = getattr(params, f.name)
        out[f.name] = list(v) if isinstance(v, tuple) else v
    return out


