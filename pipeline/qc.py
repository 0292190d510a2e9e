"""Slide quality control: open the slide, build a thumbnail, find tissue, measure QC metrics.

``qc-slide`` never crashes on a bad slide: it writes ``qc.json`` with ``status: failed`` and a one-line
reason, so the rest of the cohort goes on and the worklist shows why. Statuses: ``ok``; ``warn`` (usable,
with reasons a reviewer should know: blur, pen ink, little tissue); ``failed`` (unusable).
"""

from __future__ import annotations

import logging

import numpy as np

from pipeline import atomic
from pipeline.errors import SlideError
from pipeline.slide import Slide, open_slide
from pipeline.tissue import optical_density, pen_ink_mask, tissue_mask

log = logging.getLogger(__name__)

QC_VERSION = 1
BLUR_SAMPLE_TILES = 24


def thumbnail_mpp(slide: Slide, thumb_max_px: int, thumb_min_mpp: float) -> float:
    """um/px of the QC thumbnail: longest side at most ``thumb_max_px``, never finer than ``thumb_min_mpp``."""
    width_um, height_um = (d * slide.mpp for d in slide.dimensions)
    return max(thumb_min_mpp, max(width_um, height_um) / thumb_max_px, slide.mpp)


def sharpness(gray: np.ndarray) -> float:
    """Variance of the 4-neighbour Laplacian of a [0, 1] grey image: low for blurred tiles."""
    lap = (
        -4 * gray[1:-1, 1:-1] + gray[:-2, 1:-1] + gray[2:, 1:-1] + gray[1:-1, :-2] + gray[1:-1, 2:]
    )
    return float(lap.var())


def sample_tile_sharpness(slide: Slide, mask: np.ndarray, mask_mpp: float, tile_px: int, target_mpp: float,
                          n: int = BLUR_SAMPLE_TILES) -> list[float]:
    """Sharpness of up to ``n`` tissue tiles spread evenly over the mask (deterministic sample)."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return []
    picks = np.linspace(0, len(xs) - 1, num=min(n, len(xs))).round().astype(int)
    scale = mask_mpp / slide.mpp  # level-0 px per mask px
    half = tile_px * target_mpp / slide.mpp / 2
    values = []
    for i in picks:
        x0 = int(max(0, min(slide.dimensions[0] - 2 * half, xs[i] * scale - half)))
        y0 = int(max(0, min(slide.dimensions[1] - 2 * half, ys[i] * scale - half)))
        tile = slide.read_tile(x0, y0, tile_px, target_mpp)
        values.append(sharpness(tile.mean(axis=-1) / 255.0))
    return values


def qc_metrics(thumb: np.ndarray, mask: np.ndarray, thumb_mpp: float) -> dict:
    """Pure QC metrics of a thumbnail and its tissue mask."""
    px_mm2 = (thumb_mpp / 1000.0) ** 2
    pen = pen_ink_mask(thumb)
    tissue_px = int(mask.sum())
    gray = thumb.mean(axis=-1)
    return {
        "tissue_area_mm2": round(tissue_px * px_mm2, 4),
        "tissue_fraction": round(tissue_px / mask.size, 4),
        "pen_ink_fraction": round(float((pen & ~mask).sum() / max(1, tissue_px + (pen & ~mask).sum())), 4),
        "background_brightness": round(float(np.percentile(gray, 90)), 1),
        "is_brightfield": bool(np.percentile(gray, 90) > 180),
        "mean_tissue_optical_density": round(float(optical_density(thumb)[mask].mean()), 4) if tissue_px else 0.0,
    }


def judge(metrics: dict, params: dict) -> tuple[str, list[str]]:
    """QC status and reasons from metrics and the config's ``qc`` thresholds."""
    failed, warn = [], []
    if not metrics["is_brightfield"]:
        failed.append("dark background: not a brightfield slide (fluorescence or an all-black image?)")
    elif metrics["tissue_area_mm2"] < params["min_tissue_mm2"]:
        failed.append(f"no tissue: {metrics['tissue_area_mm2']:.2f} mm2 found, need {params['min_tissue_mm2']} mm2")
    if metrics.get("pen_ink_fraction", 0) > params["pen_max_fraction"]:
        warn.append(f"pen ink covers {100 * metrics['pen_ink_fraction']:.0f}% of the tissue area (excluded)")
    blur = metrics.get("sharpness_median")
    if blur is not None and blur < params["blur_min"]:
        warn.append(f"blurred: sharpness {blur:.4f} < {params['blur_min']} (rescan if tiles look soft)")
    if failed:
        return "failed", failed + warn
    return ("warn" if warn else "ok"), warn


def qc_slide(slide: Slide, config: dict) -> tuple[dict, np.ndarray, np.ndarray]:
    """Run QC on an open slide: returns (qc record, thumbnail RGB, tissue mask)."""
    params, tiling = config["qc"], config["tiling"]
    target_thumb_mpp = thumbnail_mpp(slide, params["thumb_max_px"], params["thumb_min_mpp"])
    thumb, thumb_mpp = slide.read_downsampled(target_thumb_mpp)
    mask = tissue_mask(
        thumb, thumb_mpp,
        saturation_min=params["saturation_min"], optical_density_min=params["optical_density_min"],
        min_object_um2=params["min_object_um2"], min_hole_um2=params["min_hole_um2"],
    )
    metrics = qc_metrics(thumb, mask, thumb_mpp)
    values = sample_tile_sharpness(slide, mask, thumb_mpp, tiling["tile_px"], tiling["target_mpp"])
    if values:
        metrics["sharpness_median"] = round(float(np.median(values)), 6)
        metrics["blurred_tile_fraction"] = round(float(np.mean(np.array(values) < params["blur_min"])), 4)
    status, reasons = judge(metrics, params)
    record = {
        "qc_version": QC_VERSION,
        "status": status,
        "reasons": reasons,
        "metrics": metrics,
        "thumb_mpp": round(thumb_mpp, 6),
        "slide": slide.describe(),
    }
    return record, thumb, mask


def failed_record(reason: str) -> dict:
    return {"qc_version": QC_VERSION, "status": "failed", "reasons": [reason], "metrics": {}, "slide": None,
            "thumb_mpp": None}


def write_png(path, image: np.ndarray) -> None:
    """Deterministic PNG (no timestamp chunks), written atomically."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", optimize=False, compress_level=6)
    atomic.write_bytes(path, buf.getvalue())


# ---- CLI -------------------------------------------------------------------------------------------
def configure_parser(parser) -> None:
    parser.add_argument("--slide", required=True, help="slide file")
    parser.add_argument("--slide-id", required=True, help="slide id (sample sheet)")
    parser.add_argument("--mpp", type=float, default=None, help="level-0 um/px override (sample sheet `mpp`)")
    parser.add_argument("--config", default="configs/config.yaml", help="config file")
    parser.add_argument("--out", required=True, help="qc.json to write")
    parser.add_argument("--thumb", required=True, help="thumbnail PNG to write (tissue image only)")
    parser.add_argument("--mask", required=True, help="tissue mask PNG to write")


def run(args) -> None:
    from pipeline.config import load_config
    from pipeline.redact import redact

    config = load_config(args.config)
    thumb = mask = None
    try:
        with open_slide(args.slide, mpp=args.mpp) as slide:
            record, thumb, mask = qc_slide(slide, config)
    except SlideError as exc:
        log.error("%s", exc)
        record = failed_record(redact(str(exc), args.slide))
    record["slide_id"] = args.slide_id
    if thumb is None:
        thumb = np.full((8, 8, 3), 255, np.uint8)
        mask = np.zeros((8, 8), bool)
    write_png(args.thumb, thumb)
    write_png(args.mask, (mask * 255).astype(np.uint8))
    atomic.write_json(args.out, record)
    level = logging.WARNING if record["status"] != "ok" else logging.INFO
    log.log(level, "%s: QC %s %s", args.slide_id, record["status"], "; ".join(record["reasons"]))
