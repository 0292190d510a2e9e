"""Slide quality control: open the slide, build a thumbnail, find tissue, measure QC metrics.

``qc-slide`` never crashes on a bad slide: it writes ``qc.json`` with ``status: failed`` and a one-line
reason, so the rest of the cohort goes on and the worklist shows why. Statuses: ``ok``; ``warn`` (usable,
with reasons a reviewer should know: blur, pen ink, little tissue); ``failed`` (unusable).

Given the slide's stain from the sample sheet (``--stain``), QC also fails a slide that cannot be what its
analysis needs: scanned coarser than the um/px the analysis reads (tiling.target_mpp for H&E, ihc.quantify_mpp
for IHC; see :func:`pipeline.slides.resolution.resolution_problem`), or labelled HE while its colour says DAB
immunohistochemistry (:func:`pipeline.ihc.stain.stain_check`; IHC slides are checked by ``quantify-ihc``).
"""

from __future__ import annotations

import logging

import numpy as np

from pipeline import atomic
from pipeline.config import HE_STAIN
from pipeline.errors import SlideError
from pipeline.ihc.stain_check import stain_check
from pipeline.slides.reader import open_slide
from pipeline.slides.resolution import resolution_problem
from pipeline.slides.slide import Slide
from pipeline.slides.tissue import optical_density, pen_ink_mask, tissue_mask

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


def needed_mpp(config: dict, stain: str | None) -> tuple[float, str]:
    """(um/px, what needs it) for a slide of ``stain``: the finest scale its analysis reads tiles at."""
    target = float(config["tiling"]["target_mpp"])
    if stain is None or stain == HE_STAIN:
        return target, "the tile classifier (tiling.target_mpp)"
    quantify = float(config["ihc"]["quantify_mpp"])
    if quantify <= target:
        return quantify, "IHC quantification (ihc.quantify_mpp)"
    return target, "the tile grid (tiling.target_mpp)"


def he_stain_problem(check: dict) -> str | None:
    """The one-line QC failure for an HE-labelled slide whose colour says immunohistochemistry, else None."""
    return check["reason"] if check.get("probable_mislabel") else None


def judge(metrics: dict, params: dict, refusals: tuple[str, ...] = ()) -> tuple[str, list[str]]:
    """QC status and reasons from metrics and the config's ``qc`` thresholds; ``refusals`` (wrong resolution
    or stain) fail the slide too, after the metrics' own failures."""
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
    failed += refusals
    if failed:
        return "failed", failed + warn
    return ("warn" if warn else "ok"), warn


def qc_slide(slide: Slide, config: dict, stain: str | None = None) -> tuple[dict, np.ndarray, np.ndarray]:
    """Run QC on an open slide: returns (qc record, thumbnail RGB, tissue mask).

    ``stain``: the sample sheet's stain (HE or a marker); None checks the resolution against the tiling only.
    """
    params, tiling = config["qc"], config["tiling"]
    target_thumb_mpp = thumbnail_mpp(slide, params["thumb_max_px"], params["thumb_min_mpp"])
    thumb, thumb_mpp = slide.read_downsampled(target_thumb_mpp)
    mask = tissue_mask(
        thumb, thumb_mpp,
        saturation_min=params["saturation_min"], optical_density_min=params["optical_density_min"],
        min_object_um2=params["min_object_um2"], min_hole_um2=params["min_hole_um2"],
        pale_chroma_min=params["pale_chroma_min"], membrane_closing_um=params["membrane_closing_um"],
    )
    metrics = qc_metrics(thumb, mask, thumb_mpp)
    too_coarse = resolution_problem(slide.mpp, *needed_mpp(config, stain))
    if not too_coarse:  # sharpness is measured on tiles at the model's scale, which a coarse slide lacks
        values = sample_tile_sharpness(slide, mask, thumb_mpp, tiling["tile_px"], tiling["target_mpp"])
        if values:
            metrics["sharpness_median"] = round(float(np.median(values)), 6)
            metrics["blurred_tile_fraction"] = round(float(np.mean(np.array(values) < params["blur_min"])), 4)
    check = stain_check(thumb, HE_STAIN, **he_check_params(config)) if stain == HE_STAIN else None
    refusals = tuple(r for r in (too_coarse, check and he_stain_problem(check)) if r)
    status, reasons = judge(metrics, params, refusals)
    record = {
        "qc_version": QC_VERSION,
        "status": status,
        "reasons": reasons,
        "metrics": metrics,
        "thumb_mpp": round(thumb_mpp, 6),
        "slide": slide.describe(),
        "stain": stain,
        "stain_check": check,
    }
    return record, thumb, mask


def he_check_params(config: dict) -> dict:
    """The stain check's HE thresholds from the config (``ihc.stain_check``, shared with the IHC-side check)."""
    section = config["ihc"]["stain_check"]
    return {"he_dab_max": float(section["he_dab_max"]), "he_eosin_min": float(section["he_eosin_min"])}


def failed_record(reason: str, stain: str | None = None) -> dict:
    return {"qc_version": QC_VERSION, "status": "failed", "reasons": [reason], "metrics": {}, "slide": None,
            "thumb_mpp": None, "stain": stain, "stain_check": None}


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
    parser.add_argument("--stain", default=None,
                        help="the sample sheet's stain (HE or a marker): checks the colour of HE slides and the "
                             "resolution the stain's analysis needs (default: the tiling's only)")
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
            record, thumb, mask = qc_slide(slide, config, args.stain)
    except SlideError as exc:
        log.error("%s", exc)
        record = failed_record(redact(str(exc), args.slide), args.stain)
    record["slide_id"] = args.slide_id
    if thumb is None:
        thumb = np.full((8, 8, 3), 255, np.uint8)
        mask = np.zeros((8, 8), bool)
    write_png(args.thumb, thumb)
    write_png(args.mask, (mask * 255).astype(np.uint8))
    atomic.write_json(args.out, record)
    level = logging.WARNING if record["status"] != "ok" else logging.INFO
    log.log(level, "%s: QC %s %s", args.slide_id, record["status"], "; ".join(record["reasons"]))
