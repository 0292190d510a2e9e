"""Score a slide's tile grid with the CNN: calibrated class probabilities and an OOD score per tile.

Tiles are read at the model card's um/px by :mod:`pipeline.he.tile_readers` (reader threads or worker
processes, reading ahead of inference where a core is free). The main thread runs batched inference under
``torch.inference_mode`` (channels_last; bfloat16 autocast on CPU where the card allows it; CUDA with AMP
when present). Public: :func:`score_tiles`, :func:`write_scores` / :func:`read_scores`, and the verb.
Output: ``scores.parquet`` with level-0 ``x``, ``y`` (int64), ``prob_<class>``, ``ood_model``, ``ood_tile_check``
and ``ood_score`` = the larger of the two (float32), in grid order, and the run's metadata in the schema metadata
(key ``slide_triage``; ``tile_check`` holds the check's thresholds, or false when config ``tile_check.enabled``
is false: then there is no ``ood_tile_check`` and ``ood_score`` is ``ood_model``).

A failed or empty grid, or a slide whose pixels cannot be decoded, gives an empty table with status and
reason (exit 0): one bad slide never stops the cohort. A grid at another scale than the model's is refused.
So is a model without out-of-distribution statistics, unless ``--allow-no-ood`` (config
``slide_call.require_ood: false``): then the table has no ``ood_score`` (nor ``ood_model``) column and its metadata says
``ood_check: false``, so no later stage can mistake "never checked" for "in distribution".
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import numpy as np

from pipeline.errors import ModelError, SlideError
from pipeline.he.tile_check import tile_check_scores
from pipeline.he.tile_readers import ThreadTileReader, iter_batches_processes, reader_plan
from pipeline.tables import read_columns, write_table

log = logging.getLogger(__name__)
SCORES_VERSION = 1
MPP_TOLERANCE = 1e-3  # relative difference between the grid's target_mpp and the card's mpp



# ---- inference ------------------------------------------------------------------------------------------
def pick_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelError("--device cuda: no CUDA device is visible to torch; use --device auto or cpu")
    return device


def _cpu_has_bf16() -> bool:
    """Native bf16 on this CPU (AVX512-BF16 / AMX), as oneDNN sees it."""
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def pick_precision(precision: str, card: dict, device: str) -> str:
    """``bf16`` when allowed by the card (and asked for or ``auto`` on a CPU with bf16 support), else fp32.

    On CUDA ``auto`` gives fp16 autocast (AMP) when the card allows reduced precision.
    """

    allowed = bool(card["precision"]["bf16_allowed"])
    if precision == "fp32" or not allowed:
        if precision in {"bf16", "fp16"} and not allowed:
            log.warning("the model card does not allow reduced precision; scoring in fp32")
        return "fp32"
    if device == "cuda":
        return "bf16" if precision == "bf16" else "fp16"
    if precision == "auto" and not _cpu_has_bf16():
        return "fp32"  # emulated bf16 is slower than fp32
    return "bf16"


def check_grid_scale(grid_meta: dict, card: dict, tiles_path) -> None:
    """Refuse a grid laid at another scale or tile size than the model was trained on."""
    target, mpp = float(grid_meta.get("target_mpp", card["mpp"])), float(card["mpp"])
    if abs(target - mpp) > MPP_TOLERANCE * mpp:
        raise ModelError(f"{tiles_path}: tiles are at {target:g} um/px but model {card['model_id']} expects "
                         f"{mpp:g} um/px; set tiling.target_mpp: {mpp:g} in the config (or use a model for "
                         f"{target:g} um/px)")
    tile_px = int(grid_meta.get("tile_px", card["tile_px"]))
    if tile_px != int(card["tile_px"]):
        raise ModelError(f"{tiles_path}: tiles are {tile_px} px but model {card['model_id']} expects "
                         f"{card['tile_px']} px; set tiling.tile_px: {card['tile_px']} in the config")


def score_tiles(slide_path, grid, model, card: dict, *, mpp: float | None = None, batch_size: int = 64,
                threads: int = 2, device: str = "cpu", precision: str = "auto", reader: str = "threads",
                readers: int | None = None, prefetch: int | None = None, tile_check: dict | None = None,
                progress: bool = False) -> tuple[dict[str, np.ndarray], dict]:
    """Score every tile of ``grid`` (a :class:`pipeline.slides.tiling.TileGrid`) on the slide at ``slide_path``.

    ``model`` is a :class:`pipeline.he.models.TileClassifier` already on ``device``. Returns ``(columns, meta)``:
    columns ``x``, ``y`` (int64 level-0), ``prob_<class>``, ``ood_model`` (the model's feature distance) and
    ``ood_score`` (float32) in grid order; meta has the model, scale, precision and speed. With ``tile_check``
    (the config's ``tile_check`` section, enabled) each tile also gets ``ood_tile_check``
    (:func:`pipeline.he.tile_check.tile_check_scores`) and ``ood_score`` is the larger of the two; otherwise
    ``ood_score`` is ``ood_model``. Raises :class:`SlideError` if pixels cannot be read.

    ``readers`` and ``prefetch`` default to :func:`reader_plan` (overlap reading with inference when a core
    is free for it or inference runs on a GPU; otherwise read each batch on all cores, then infer).
    """
    import torch
    from tqdm import tqdm

    n = len(grid.x)
    tile_px, target_mpp = int(card["tile_px"]), float(card["mpp"])
    precision = pick_precision(precision, card, device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    readers, prefetch = reader_plan(device, threads, readers, prefetch)
    probs = np.empty((n, len(card["classes"])), np.float32)
    ood = np.empty(n, np.float32)
    checked = np.empty(n, np.float32) if tile_check else None
    x, y = np.asarray(grid.x, np.int64), np.asarray(grid.y, np.int64)
    if reader == "threads":
        alloc = None
        if device != "cpu":  # tiles decoded straight into pinned memory: asynchronous copies to the GPU
            def alloc(shape):
                return torch.empty(shape, dtype=torch.uint8).pin_memory().numpy()
        tile_reader = ThreadTileReader(slide_path, mpp, tile_px, target_mpp, readers, prefetch, alloc)
        batches = tile_reader.iter_batches(x, y, batch_size)
    elif reader == "processes":
        tile_reader, batches = None, iter_batches_processes(slide_path, mpp, tile_px, target_mpp, x, y, batch_size,
                                                            readers)
    else:
        raise ValueError(f"reader must be threads or processes, got {reader!r}")
    start, done = time.perf_counter(), 0
    bar = tqdm(total=n, unit="tile", disable=not progress, file=sys.stderr, desc=grid.meta.get("slide_id", "tiles"))
    try:
        with torch.inference_mode(), torch.autocast(device, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            for batch in batches:
                t = torch.from_numpy(np.ascontiguousarray(batch)).permute(0, 3, 1, 2)  # NHWC memory = channels_last
                if device != "cpu":
                    t = (t if t.is_pinned() else t.pin_memory()).to(device, non_blocking=True)
                p, o = model.score(t)
                if checked is not None:  # numpy on the uint8 tiles while the device works
                    checked[done:done + len(batch)] = tile_check_scores(np.asarray(batch), tile_check)
                probs[done:done + len(batch)] = p.float().cpu().numpy()
                ood[done:done + len(batch)] = o.float().cpu().numpy()
                done += len(batch)
                bar.update(len(batch))
    finally:
        bar.close()
        if tile_reader is not None:
            tile_reader.close()
    seconds = time.perf_counter() - start
    columns = {"x": x, "y": y}
    columns.update({f"prob_{c}": probs[:, i] for i, c in enumerate(card["classes"])})
    columns["ood_model"] = ood
    if checked is not None:
        columns["ood_tile_check"] = checked
    columns["ood_score"] = ood if checked is None else np.maximum(ood, checked)
    meta = {
        "device": device, "precision": precision, "threads": threads, "readers": readers, "reader": reader,
        "prefetch": prefetch,
        "batch_size": batch_size, "seconds": round(seconds, 3), "tiles_per_s": round(n / seconds, 1) if n else 0.0,
    }
    return columns, meta


def empty_columns(classes, ood: bool = True, tile_check: bool = True) -> dict[str, np.ndarray]:
    columns = {"x": np.zeros(0, np.int64), "y": np.zeros(0, np.int64)}
    columns.update({f"prob_{c}": np.zeros(0, np.float32) for c in classes})
    names = (["ood_model"] if ood else []) + (["ood_tile_check"] if tile_check else []) + (["ood_score"] if ood else [])
    columns.update({name: np.zeros(0, np.float32) for name in names})
    return columns


def tile_check_params(text: str | None) -> dict | None:
    """``--tile-check`` (the config's ``tile_check`` section as JSON; none: the calibrated defaults) -> the
    parameters, or None when ``enabled`` is false."""
    import json

    from pipeline.he.tile_check import default_params

    params = default_params()
    if text:
        try:
            given = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ModelError(f"--tile-check: not JSON ({exc.msg}); pass the config's tile_check section") from None
        if not isinstance(given, dict) or set(given) - set(params):
            raise ModelError(f"--tile-check: expected an object with keys among {', '.join(params)}, got {text[:80]}")
        params.update(given)
    return params if params["enabled"] else None


def write_scores(path, columns: dict[str, np.ndarray], meta: dict) -> None:
    """Write scores.parquet atomically: int64 x/y, float32 everything else, metadata as JSON."""
    import pyarrow as pa

    write_table(path, {k: pa.array(v, pa.int64() if k in {"x", "y"} else pa.float32()) for k, v in columns.items()},
                meta)


def read_scores(path) -> tuple[dict[str, np.ndarray], dict]:
    """(columns as numpy arrays, metadata) of a scores.parquet."""
    return read_columns(path)


def model_meta(card: dict) -> dict:
    return {"model_id": card["model_id"], "weights_sha256": card["weights"]["sha256"],
            "architecture": card["architecture"], "classes": list(card["classes"]), "tile_px": card["tile_px"],
            "target_mpp": card["mpp"],
            "ood_score": "> 1 = unlike the training data: the larger of ood_model (the model's feature distance, see "
                         "the model card) and ood_tile_check (not H&E tissue by stain and image statistics, config "
                         "tile_check; absent when disabled)"}


def check_ood_statistics(model, card: dict, model_dir, allow_missing: bool) -> bool:
    """True when the model gives an OOD score; False when it cannot and ``allow_missing`` (logged); otherwise
    a one-line :class:`ModelError` naming the model directory and the two fixes."""
    from pipeline.he.models import missing_ood_statistics

    missing = missing_ood_statistics(model, card)
    if missing is None:
        return True
    if not allow_missing:
        raise ModelError(f"{model_dir}: model {card['model_id']} has no out-of-distribution statistics "
                         f"({missing}), so nothing would flag tissue unlike its training data; re-train it "
                         "(python -m pipeline train-model or train writes them) or set slide_call.require_ood: false "
                         "in the config to score with no out-of-distribution check")
    log.warning("%s: model %s has no out-of-distribution statistics (%s); scoring with no out-of-distribution "
                "check (slide_call.require_ood: false)", model_dir, card["model_id"], missing)
    return False


# ---- CLI -------------------------------------------------------------------------------------------------
def configure_parser(parser) -> None:
    parser.add_argument("--slide", required=True, help="slide file")
    parser.add_argument("--mpp", type=float, default=None, help="level-0 um/px override (sample sheet `mpp`)")
    parser.add_argument("--tiles", required=True, help="tiles.parquet from tile-slide")
    parser.add_argument("--model", required=True, help="model directory (card.json + weights), models/<model_id>")
    parser.add_argument("--out", required=True, help="scores.parquet to write")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--batch-size", type=int, default=64, help="tiles per inference batch")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="inference device")
    parser.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default="auto",
                        help="auto: bf16 autocast on CPU / fp16 AMP on CUDA where the model card allows it")
    parser.add_argument("--reader", choices=["threads", "processes"], default="threads",
                        help="tile readers: a thread pool (default, measured faster) or DataLoader processes")
    parser.add_argument("--readers", type=int, default=None,
                        help="reader threads/processes (default: the cores left beside --threads, up to 4, "
                             "reading ahead of inference; with none left, --threads readers in turn with "
                             "inference; on a GPU up to 8)")
    parser.add_argument("--prefetch", type=int, default=None,
                        help="batches read ahead of inference (0: read each batch on all readers, then infer; "
                             "default: see --readers)")
    parser.add_argument("--tile-check", default=None, metavar="JSON",
                        help="the config's tile_check section as JSON (default: the calibrated thresholds of the "
                             "config schema; {\"enabled\": false} scores with the model's OOD distance alone)")
    parser.add_argument("--allow-no-ood", action="store_true",
                        help="score with a model that has no out-of-distribution statistics (no OOD check: no "
                             "ood_score column); the workflow passes it only when slide_call.require_ood is false")


def run(args) -> None:
    import torch

    from pipeline.he.models import load_model
    from pipeline.slides.tiling import read_tile_grid

    if args.threads < 1 or args.batch_size < 1:
        raise ModelError("--threads and --batch-size must be >= 1")
    torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    model, card = load_model(args.model, device)
    ood_check = check_ood_statistics(model, card, args.model, args.allow_no_ood)
    tile_check = tile_check_params(args.tile_check)
    model = model.to(memory_format=torch.channels_last)
    try:
        grid = read_tile_grid(args.tiles)
    except (OSError, KeyError, ValueError) as exc:
        raise SlideError(f"{args.tiles}: cannot read the tile grid ({exc}); re-run tile-slide") from exc
    meta = {"scores_version": SCORES_VERSION, "slide_id": grid.meta.get("slide_id", Path(args.slide).stem),
            **model_meta(card), "effective_mpp": grid.meta.get("effective_mpp"), "level": grid.meta.get("level"),
            "n_tiles": len(grid.x), "status": "ok", "reason": "", "ood_check": ood_check,
            "tile_check": tile_check or False}
    if not ood_check:
        meta["ood_score"] = "none: the model has no out-of-distribution statistics (slide_call.require_ood: false)"
    status = grid.meta.get("status", "ok")
    if status == "failed":
        meta.update(status="failed", reason=f"tile grid failed: {grid.meta.get('reason', '')}", n_tiles=0)
    elif len(grid.x) == 0:
        meta.update(status="empty", reason=grid.meta.get("reason") or "the tile grid has no tiles")
    if meta["status"] != "ok":
        log.warning("%s: %s; writing an empty score table", meta["slide_id"], meta["reason"])
        write_scores(args.out, empty_columns(card["classes"], ood_check, tile_check is not None), meta)
        return
    check_grid_scale(grid.meta, card, args.tiles)
    try:
        columns, run_meta = score_tiles(args.slide, grid, model, card, mpp=args.mpp, batch_size=args.batch_size,
                                        threads=args.threads, device=device, precision=args.precision,
                                        reader=args.reader, readers=args.readers, prefetch=args.prefetch,
                                        tile_check=tile_check, progress=sys.stderr.isatty())
    except SlideError as exc:
        log.error("%s", exc)
        from pipeline.redact import redact

        meta.update(status="failed", reason=redact(str(exc), args.slide), n_tiles=0)
        write_scores(args.out, empty_columns(card["classes"], ood_check, tile_check is not None), meta)
        return
    if not ood_check:
        del columns["ood_score"], columns["ood_model"]  # zeros would read as "in distribution"
    meta.update(run_meta)
    write_scores(args.out, columns, meta)
    log.info("%s: %d tiles scored in %.1f s (%.0f tiles/s, %s, %s, %d threads)", meta["slide_id"], len(grid.x),
             run_meta["seconds"], run_meta["tiles_per_s"], device, run_meta["precision"], args.threads)
