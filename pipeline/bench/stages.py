"""The stages measured in this process against their physical bounds, best of interleaved rounds.

* **qc + grid**: tissue detection (:func:`pipeline.slides.qc.qc_slide`) and the tile grid
  (:func:`pipeline.slides.tiling.grid_for_slide`), slide opening included;
* **reading** vs the **decode bound**: the grid's tiles through ``Slide.read_tiles`` on one thread (cold cache)
  against libjpeg-turbo decoding, once each, the JPEG tiles they need (:mod:`pipeline.bench.readbench`);
* **scoring** vs the **compute bound**: :func:`pipeline.he.scoring.score_tiles` as ``score-tiles`` runs it against
  the same model's forward pass on random tiles in memory (:func:`compute_bound`), same batches, threads,
  precision and memory format.

Each measurement is interleaved with its bound (:func:`best_of`), so a busy neighbour disturbs both alike.

Public: :func:`best_of`, :func:`measure_qc_grid`, :func:`measure_reader`, :func:`load_model_as`,
:func:`compute_bound`, :func:`measure_scoring`.
"""

from __future__ import annotations

import math
import time
from pathlib import Path


def best_of(repeats: int, *fns) -> list[float]:
    """Shortest wall time of each function over ``repeats`` interleaved rounds."""
    best = [math.inf] * len(fns)
    for _ in range(max(1, repeats)):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - t0)
    return best


def measure_qc_grid(path: Path, config: dict, repeats: int):
    """Seconds for tissue detection + grid (opening included); returns (figures, grid)."""
    from pipeline.slides.qc import qc_slide
    from pipeline.slides.reader import open_slide
    from pipeline.slides.tiling import grid_for_slide

    result = {}

    def once():
        with open_slide(path) as slide:
            record, _, mask = qc_slide(slide, config)
            t1 = time.perf_counter()
            result["grid"] = grid_for_slide(slide, mask, record["thumb_mpp"], config["tiling"], path.stem)
            result["grid_s"] = min(result.get("grid_s", math.inf), time.perf_counter() - t1)
        result["record"] = record

    (seconds,) = best_of(repeats, once)
    record, grid = result["record"], result["grid"]
    figures = {"seconds": round(seconds, 3), "grid_seconds": round(result["grid_s"], 4), "status": record["status"],
               "tissue_area_mm2": record["metrics"].get("tissue_area_mm2", 0.0), "n_tiles": len(grid.x),
               "level": grid.meta.get("level"), "width_px": record["slide"]["width_px"] if record["slide"] else None,
               "height_px": record["slide"]["height_px"] if record["slide"] else None}
    return figures, grid


def measure_reader(path: Path, xs, ys, tile_px: int, target_mpp: float, batch_size: int, repeats: int) -> dict:
    """Our reader (one thread, cold cache, batches as scoring reads them) against the JPEG decode bound."""
    from pipeline.bench import readbench
    from pipeline.slides.reader import open_slide
    from pipeline.slides.tiff_slide import TiffSlide

    with open_slide(path) as slide:
        level = slide.tile_geometry(tile_px, target_mpp)[0]
        if not isinstance(slide, TiffSlide) or slide._jpeg[level] is None:
            return {"reader": type(slide).__name__, "note": "not a JPEG-tiled TIFF: no decode bound"}
        blobs, args = readbench.jpeg_segments(slide, xs, ys, tile_px, target_mpp)
        bound_s, batched_s, single_s = best_of(
            repeats, lambda: readbench.decode_all(blobs, args),
            lambda: readbench.read_all(slide, xs, ys, tile_px, target_mpp, batch_size),
            lambda: readbench.read_all(slide, xs, ys, tile_px, target_mpp, None))
    n = len(xs)
    return {"reader": "TiffSlide", "tiles": n, "segments": len(blobs), "segments_per_tile": round(len(blobs) / n, 3),
            "tiles_per_s": round(n / batched_s, 1), "read_tile_tiles_per_s": round(n / single_s, 1),
            "decode_bound_tiles_per_s": round(n / bound_s, 1), "ratio": round(bound_s / batched_s, 3)}


def load_model_as(model_dir: Path, device: str, channels_last: bool):
    """(model, card) loaded on ``device``, in channels-last memory format if asked (as score-tiles runs it)."""
    import torch

    from pipeline.he.models import load_model

    model, card = load_model(model_dir, device)
    return (model.to(memory_format=torch.channels_last) if channels_last else model), card


def compute_bound(model, card: dict, n: int, batch_size: int, device: str, precision: str) -> float:
    """Seconds for the model's forward pass (``TileClassifier.score``: normalisation, backbone, head, OOD) over
    ``n`` random uint8 tiles in batches, as score_tiles runs it, without reading (tiles already in memory)."""
    import torch

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    tile_px = int(card["tile_px"])
    host = torch.randint(0, 256, (batch_size, tile_px, tile_px, 3), dtype=torch.uint8)
    x = host.to(device)
    t0 = time.perf_counter()
    with torch.inference_mode(), torch.autocast(device, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        for a in range(0, n, batch_size):
            p, o = model.score(x[: min(batch_size, n - a)].permute(0, 3, 1, 2))
            p.float().cpu(), o.float().cpu()  # as score_tiles: results back on the host each batch
    return time.perf_counter() - t0


def measure_scoring(path: Path, grid, model_dir: Path, *, threads: int, batch_size: int, repeats: int,
                    device: str = "cpu") -> dict:
    """score_tiles (as the score-tiles verb runs it) against the compute bound, interleaved, best of each."""
    import torch

    from pipeline.he.scoring import pick_precision, score_tiles, tile_check_params

    torch.set_num_threads(threads)
    model, card = load_model_as(model_dir, device, channels_last=True)
    precision = pick_precision("auto", card, device)
    n = len(grid.x)
    meta = {}

    def ours():
        _, m = score_tiles(path, grid, model, card, batch_size=batch_size, threads=threads, device=device,
                           precision=precision, tile_check=tile_check_params(None))
        meta.update(m)

    warm = min(n, batch_size)
    compute_bound(model, card, warm, batch_size, device, precision)  # oneDNN / cuDNN kernel selection
    cpu0 = time.process_time()
    bound_s, ours_s = best_of(repeats, lambda: compute_bound(model, card, n, batch_size, device, precision), ours)
    return {"device": device, "precision": precision, "threads": threads, "batch_size": batch_size,
            "readers": meta.get("readers"), "prefetch": meta.get("prefetch"), "tiles": n,
            "tiles_per_s": round(n / ours_s, 1), "compute_bound_tiles_per_s": round(n / bound_s, 1),
            "ratio": round(bound_s / ours_s, 3),
            "cpu_seconds_both": round(time.process_time() - cpu0, 2)}
