"""Per-slide summary: everything known about one slide in one byte-stable file, ``summary.json``.

This is where an H&E slide's call is made: :func:`pipeline.he.slide_call.call_slide` on the tile probabilities of
``scores.parquet`` with the QC verdict. IHC slides carry their ``ihc.json`` (slide totals, marker result,
stain check) instead. Both get QC status and reasons, the tile grid's scale (effective um/px), the top tiles
(level-0 pixel coordinates of their top-left corners), provenance and the disclaimer. The layout is
``pipeline/schemas/summary.schema.yaml``, which describes every key.

Never a crash for one bad slide: QC failure, no MPP, an unreadable file or a failed stage gives a summary with
``status: failed`` and a one-line ``reason``, so the worklist shows it. Reasons are *redacted*: the slide's file
path and file name (which may be the scanner's identifying file name) are replaced by ``<slide file>``.

Byte-stable: no times, no host, no absolute paths; floats rounded; canonical sorted JSON (pipeline.atomic).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np

from pipeline import DISCLAIMER, atomic
from pipeline.config import HE_STAIN
from pipeline.he.slide_call import CLASSES
from pipeline.redact import REDACTED, redact  # noqa: F401 (REDACTED re-exported)
from pipeline.tables import try_read_columns

log = logging.getLogger(__name__)

SUMMARY_VERSION = 1
FLOAT_DECIMALS = 6
NO_OOD_CHECK = "no out-of-distribution check"


# ---- helpers ------------------------------------------------------------------------------------------
def round_floats(obj, decimals: int = FLOAT_DECIMALS):
    """A copy of a JSON-like object with every float rounded (NaN/inf become None: JSON has no NaN)."""
    if isinstance(obj, bool) or obj is None or isinstance(obj, (int, str)):
        return obj
    if isinstance(obj, (float, np.floating)):
        value = float(obj)
        return round(value, decimals) if math.isfinite(value) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, dict):
        return {str(k): round_floats(v, decimals) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, np.ndarray)):
        return [round_floats(v, decimals) for v in obj]
    raise TypeError(f"cannot put {type(obj).__name__} into a summary")


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def tile_area_mm2(tile_px: int, target_mpp: float) -> float:
    return (tile_px * target_mpp / 1000.0) ** 2


def _top(values: np.ndarray, x: np.ndarray, y: np.ndarray, n: int) -> list[dict]:
    """The ``n`` tiles with the largest finite values, largest first (ties: grid order)."""
    values = np.asarray(values, np.float64)
    finite = np.flatnonzero(np.isfinite(values))
    if len(finite) == 0 or n <= 0:
        return []
    order = finite[np.lexsort((finite, -values[finite]))][:n]
    return [{"x": int(x[i]), "y": int(y[i]), "value": round(float(values[i]), 4)} for i in order]


def no_ood_warning(scores_meta: dict) -> str:
    """The warning every H&E summary scored without an out-of-distribution check carries."""
    if scores_meta.get("ood_check") is False:
        why = (f"model {scores_meta.get('model_id')} has no out-of-distribution statistics "
               "(slide_call.require_ood: false)")
    else:
        why = "scores.parquet has no ood_score column"
    return f"{NO_OOD_CHECK}: {why}; tissue unlike the training data is not flagged"


# ---- the summary --------------------------------------------------------------------------------------
def slide_call_not_assessed(reason: str, tile_area: float, params: dict | None) -> dict:
    """A ``refer`` slide call, shaped like :func:`call_slide`'s, for a slide that could not be assessed."""
    from pipeline.he.slide_call import call_slide

    empty = np.zeros(0)
    record = call_slide({c: empty for c in CLASSES}, None, "failed", 0.0, tile_area if tile_area > 0 else 1.0,
                        params)
    record.update(reason=f"not assessed: {reason}")
    return record


def he_section(scores: tuple[dict, dict] | None, qc: dict, tiles: dict, params: dict | None,
               failure: str | None) -> tuple[dict | None, dict, dict, str | None]:
    """(scores record, slide_call, top_tiles, failure) for an H&E slide from ``read_scores`` output."""
    from pipeline.he.slide_call import call_slide

    area = tiles["tile_area_mm2"] or 0.0
    if scores is None:
        failure = failure or "no tile scores (scores.parquet missing or unreadable)"
        return None, slide_call_not_assessed(failure, area, params), {}, failure
    columns, meta = scores
    status = meta.get("status", "ok")
    record = {"status": status, "reason": _one_line(meta.get("reason", "")), "n_tiles": int(len(columns.get("x", []))),
              "has_ood_score": "ood_score" in columns and meta.get("ood_check", True) is not False}
    parts = {name: col for name, col in (("model", "ood_model"), ("tile_check", "ood_tile_check")) if col in columns}
    if parts and record["n_tiles"]:  # which component made tiles unlike the training data (ood_score = their max)
        record["ood_over_1"] = {name: round(float((np.asarray(columns[col]) > 1.0).mean()), 4)
                                for name, col in parts.items()}
    if failure is None and status == "failed":
        failure = f"scoring failed: {record['reason']}"
    if failure is not None:
        return record, slide_call_not_assessed(failure, area, params), {}, failure
    missing = [c for c in CLASSES if f"prob_{c}" not in columns]
    if missing:
        failure = f"scores.parquet lacks prob_{', prob_'.join(missing)} (model classes {meta.get('classes')})"
        return record, slide_call_not_assessed(failure, area, params), {}, failure
    probs = {c: np.asarray(columns[f"prob_{c}"], np.float64) for c in CLASSES}
    ood = np.asarray(columns["ood_score"], np.float64) if record["has_ood_score"] else None
    call = call_slide(probs, ood, qc.get("status", "failed"), float(qc.get("metrics", {}).get("tissue_area_mm2", 0.0)),
                      area if area > 0 else 1.0, params)
    x, y = np.asarray(columns["x"], np.int64), np.asarray(columns["y"], np.int64)
    n_top = int((params or {}).get("top_tiles", 8))
    top = {c: {"measure": f"prob_{c}", "tiles": _top(probs[c], x, y, n_top)} for c in CLASSES}
    if ood is not None:
        top["ood"] = {"measure": "ood_score", "tiles": _top(ood, x, y, n_top)}
    call.pop("top_tiles", None)  # indices into the table; the summary lists coordinates instead (top_tiles)
    return record, call, top, None


def ihc_section(ihc: dict | None, ihc_tiles: dict | None, n_top: int,
                failure: str | None) -> tuple[dict, str | None, list[str]]:
    """(top_tiles, failure, warnings) for an IHC slide from ihc.json and the ihc.parquet columns."""
    if ihc is None:
        return {}, failure or "no IHC result (ihc.json missing or unreadable)", []
    warnings = [_one_line(w) for w in ihc.get("warnings", [])]
    if failure is None and ihc.get("status") == "failed":
        failure = f"IHC quantification failed: {_one_line(ihc.get('reason', ''))}"
    top = {}
    metric = (ihc.get("result") or {}).get("metric")
    if ihc_tiles is not None and metric and metric in ihc_tiles and len(ihc_tiles["x"]):
        values = np.array([np.nan if v is None else v for v in ihc_tiles[metric]], np.float64)
        top[metric] = {"measure": metric, "tiles": _top(values, ihc_tiles["x"], ihc_tiles["y"], n_top)}
    return top, failure, warnings


def build_summary(*, slide_id: str, case_id: str, stain: str, qc: dict, grid_meta: dict, n_grid_tiles: int,
                  config: dict, provenance: dict, scores: tuple[dict, dict] | None = None,
                  ihc: dict | None = None, ihc_tiles: dict | None = None, slide_path=None) -> dict:
    """The summary record (JSON-ready, rounded, redacted) from already-read inputs; pure apart from logging."""
    kind = "HE" if stain == HE_STAIN else "IHC"
    params = config.get("slide_call") or {}
    tiling = config.get("tiling") or {}
    tile_px = int(grid_meta.get("tile_px", tiling.get("tile_px", 224)))
    target_mpp = float(grid_meta.get("target_mpp", tiling.get("target_mpp", 1.0)))
    grid_status = grid_meta.get("status", "ok")
    tiles = {
        "status": grid_status, "reason": _one_line(grid_meta.get("reason", "")), "count": int(n_grid_tiles),
        "tile_px": tile_px, "target_mpp": target_mpp, "effective_mpp": grid_meta.get("effective_mpp"),
        "tile_size_level0_px": grid_meta.get("tile_size_level0"), "level": grid_meta.get("level"),
        "tile_area_mm2": round(tile_area_mm2(tile_px, target_mpp), 6),
        "min_tissue_fraction": grid_meta.get("min_tissue_fraction"),
    }
    qc_status = qc.get("status", "failed")
    failure = None
    if qc_status == "failed":
        failure = "QC failed: " + "; ".join(_one_line(r) for r in qc.get("reasons", []) or ["no reason given"])
    elif grid_status == "failed":
        failure = f"tiling failed: {tiles['reason']}"
    warnings = [f"QC: {_one_line(r)}" for r in qc.get("reasons", [])] if qc_status == "warn" else []
    if grid_status == "empty" and failure is None:
        warnings.append(f"no tiles: {tiles['reason'] or 'no tile reaches the minimum tissue fraction'}")

    scores_record = slide_call = None
    if kind == "HE":
        scores_record, slide_call, top_tiles, failure = he_section(scores, qc, tiles, params, failure)
        if scores_record is not None and not scores_record["has_ood_score"]:
            warnings.append(no_ood_warning(scores[1]))
    else:
        top_tiles, failure, ihc_warnings = ihc_section(ihc, ihc_tiles, int(params.get("top_tiles", 8)), failure)
        warnings += [w for w in ihc_warnings if not w.startswith("QC warnings:")]  # QC reasons are listed above

    status = "failed" if failure else ("warn" if warnings else "ok")
    reason = failure if failure else "; ".join(warnings)
    summary = {
        "summary_version": SUMMARY_VERSION,
        "slide_id": slide_id,
        "case_id": case_id,
        "stain": stain,
        "kind": kind,
        "status": status,
        "reason": redact(_one_line(reason), slide_path),
        "warnings": [redact(w, slide_path) for w in warnings],
        "qc": {"status": qc_status, "reasons": [redact(_one_line(r), slide_path) for r in qc.get("reasons", [])],
               "metrics": qc.get("metrics") or {}, "thumb_mpp": qc.get("thumb_mpp")},
        "slide": qc.get("slide"),
        "effective_mpp": tiles["effective_mpp"],
        "tiles": {**tiles, "reason": redact(tiles["reason"], slide_path)},
        "scores": scores_record,
        "slide_call": slide_call,
        "top_tiles": top_tiles,
        "ihc": ihc if kind == "IHC" else None,
        "stain_check": (ihc or {}).get("stain_check") if kind == "IHC" else qc.get("stain_check"),
        "provenance": provenance,
        "disclaimer": DISCLAIMER,
    }
    if summary["scores"]:
        summary["scores"]["reason"] = redact(summary["scores"]["reason"], slide_path)
    if slide_call:
        slide_call["reason"] = redact(slide_call["reason"], slide_path)
    if summary["ihc"]:
        summary["ihc"] = json.loads(redact(json.dumps(summary["ihc"], sort_keys=True), slide_path))
    return round_floats(summary)


# ---- reading inputs -----------------------------------------------------------------------------------


def model_provenance(scores_meta: dict | None) -> dict | None:
    if not scores_meta or not scores_meta.get("model_id"):
        return None
    return {"model_id": scores_meta.get("model_id"), "weights_sha256": scores_meta.get("weights_sha256"),
            "architecture": scores_meta.get("architecture"), "classes": scores_meta.get("classes"),
            "target_mpp": scores_meta.get("target_mpp"), "tile_px": scores_meta.get("tile_px")}


def provenance_record(slide_path, config: dict, scores_meta: dict | None, ihc: dict | None,
                      full_hash: bool = False) -> dict:
    from pipeline.outputs import provenance

    slide_file = None
    if slide_path and Path(slide_path).is_file():
        slide_file = provenance.fast_file_hash(slide_path)
        if full_hash:
            slide_file["sha256"] = atomic.file_sha256(slide_path)
    markers = config.get("markers")
    markers_sha = atomic.file_sha256(markers) if markers and Path(markers).is_file() else None
    return {
        "slide_file": slide_file,
        "model": model_provenance(scores_meta),
        "ihc_version": (ihc or {}).get("version"),
        "config_sha256": provenance.science_config_hash(config),
        "markers_sha256": markers_sha,
        **provenance.pipeline_provenance(),
    }


def summarize(args) -> dict:
    """Read a slide's stage outputs named by the CLI arguments and return its summary."""
    from pipeline.config import load_config

    config = load_config(args.config)
    qc = atomic.try_read_json(args.qc, log) or {"status": "failed",
                                               "reasons": [f"qc.json unreadable ({Path(args.qc).name})"]}
    grid_meta, n_tiles = {"status": "failed", "reason": "tiles.parquet missing or unreadable"}, 0
    if args.tiles:
        grid = try_read_columns(args.tiles, log)
        if grid is not None:
            grid_meta, n_tiles = grid[1], len(grid[0].get("x", []))
    scores = ihc = ihc_tiles = None
    if args.stain == HE_STAIN:
        scores = try_read_columns(args.scores, log) if args.scores else None
    else:
        ihc = atomic.try_read_json(args.ihc, log) if args.ihc else None
        if args.ihc_tiles:
            table = try_read_columns(args.ihc_tiles, log)
            ihc_tiles = table[0] if table else None
    prov = provenance_record(args.slide, config, scores[1] if scores else None, ihc, args.full_hash)
    return build_summary(slide_id=args.slide_id, case_id=args.case_id, stain=args.stain, qc=qc, grid_meta=grid_meta,
                         n_grid_tiles=n_tiles, config=config, provenance=prov, scores=scores, ihc=ihc,
                         ihc_tiles=ihc_tiles, slide_path=args.slide)


# ---- validation (tests, end-to-end checks) --------------------------------------------------------------
def summary_problems(summary: dict) -> list[str]:
    """Schema violations of a summary (``pipeline/schemas/summary.schema.yaml``); empty when valid."""
    import jsonschema

    from pipeline.config import load_schema

    validator = jsonschema.Draft202012Validator(load_schema("summary"))
    return [f"{'.'.join(str(p) for p in e.absolute_path) or '(top level)'}: {e.message}"
            for e in sorted(validator.iter_errors(summary), key=lambda e: [str(p) for p in e.absolute_path])]


# ---- CLI ----------------------------------------------------------------------------------------------
def configure_parser(parser) -> None:
    parser.add_argument("--slide-id", required=True, help="slide id (sample sheet)")
    parser.add_argument("--case-id", required=True, help="case id (sample sheet)")
    parser.add_argument("--stain", required=True, help="HE or the IHC marker (sample sheet)")
    parser.add_argument("--slide", default=None, help="slide file (hashed for provenance; its name never leaves)")
    parser.add_argument("--qc", required=True, help="qc.json from qc-slide")
    parser.add_argument("--tiles", default=None, help="tiles.parquet from tile-slide")
    parser.add_argument("--scores", nargs="?", default=None, help="scores.parquet from score-tiles (H&E slides)")
    parser.add_argument("--ihc", nargs="?", default=None, help="ihc.json from quantify-ihc (IHC slides)")
    parser.add_argument("--ihc-tiles", nargs="?", default=None, help="ihc.parquet from quantify-ihc (IHC slides)")
    parser.add_argument("--config", default="configs/config.yaml", help="config file")
    parser.add_argument("--full-hash", action="store_true",
                        help="also record a full SHA-256 of the slide file (about 1 s per GiB)")
    parser.add_argument("--out", required=True, help="summary.json to write")


def run(args) -> None:
    summary = summarize(args)
    problems = summary_problems(summary)
    if problems:  # a bug, not a bad slide: refuse to write an invalid summary
        raise RuntimeError(f"summary of {args.slide_id} violates its schema: {problems[0]}")
    atomic.write_json(args.out, summary)
    call = (summary.get("slide_call") or {}).get("call") or ((summary.get("ihc") or {}).get("result") or {}).get("call")
    level = logging.WARNING if summary["status"] != "ok" else logging.INFO
    log.log(level, "%s (%s): %s, call %s %s", args.slide_id, args.stain, summary["status"], call, summary["reason"])
