"""``python -m pipeline draw-slide``: the pictures of one slide for people, read from its results and written as PNGs.

* ``heatmap.png`` -- H&E: the QC thumbnail twice, overlaid with each tile's P(carcinoma) and P(sarcoma), with a
  colour bar and a scale bar in mm. IHC: the thumbnail beside the map of the marker's metric per tile (e.g. %
  DAB-positive area), the cut-off marked on the colour bar.
* ``tissue_overlay.png`` -- the thumbnail with the tissue mask tinted and outlined and the analysed tiles drawn.
* ``top_tiles.png`` -- contact sheet of the top tiles per class (or by the marker's metric), read from the slide
  at the tiles' own um/px and shown at full resolution, each labelled with its value and level-0 position.

Every picture has a header (slide, stain, call) and the disclaimer as footer. A failed slide gets placeholder
pictures that say why. Only the QC thumbnail (built from the pyramid levels) and tissue tiles are drawn: never
the slide's label, macro or thumbnail associated images. Text uses Pillow's built-in font, so the bytes do not
depend on the fonts installed; PNGs carry no time stamps or text chunks.

Drawing is :mod:`pipeline.outputs.pictures` (the three pictures) on :mod:`pipeline.outputs.drawing` (primitives);
this module reads the stage files, picks what each picture shows and writes the PNGs.

Public: :func:`draw_slide` (the pictures from the CLI arguments), :func:`top_tiles_picture`, :func:`png_bytes`,
:func:`configure_parser`, :func:`run`.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline import atomic
from pipeline.he.slide_call import TUMOUR_CLASSES
from pipeline.outputs.drawing import placeholder
from pipeline.outputs.pictures import contact_sheet, heatmap_picture, tissue_picture, title_of
from pipeline.tables import try_read_columns

log = logging.getLogger(__name__)


def png_bytes(image: Image.Image | np.ndarray) -> bytes:
    """Deterministic PNG: no metadata chunks, fixed compression."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


# ---- reading the stage files ------------------------------------------------------------------------------
def _read_png(path) -> np.ndarray | None:
    try:
        with Image.open(path) as im:
            return np.asarray(im)
    except (OSError, ValueError):
        return None


# ---- what each picture shows ------------------------------------------------------------------------------
def _he_heatmap(summary: dict, thumb: np.ndarray, grid_meta: dict, scores_path, title: str) -> Image.Image:
    """P(class) per tile for the tumour classes, from scores.parquet."""
    table = try_read_columns(scores_path) if scores_path else None
    cols = table[0] if table else {}
    if not (cols and len(cols.get("x", []))):
        return placeholder(title, "no scored tiles")
    layers = [(f"P({c})", np.asarray(cols[f"prob_{c}"], np.float64)) for c in TUMOUR_CLASSES if f"prob_{c}" in cols]
    return heatmap_picture(summary, thumb, grid_meta, cols["x"], cols["y"], layers, 0.0, 1.0,
                           "tile probability (CNN, calibrated)", [0, 0.25, 0.5, 0.75, 1])


def _ihc_heatmap(summary: dict, thumb: np.ndarray, grid_meta: dict, ihc_path, title: str) -> Image.Image:
    """The marker's metric per tile from ihc.parquet, beside the plain thumbnail, the cut-off on the colour bar."""
    table = try_read_columns(ihc_path) if ihc_path else None
    result = (summary.get("ihc") or {}).get("result") or {}
    metric = result.get("metric")
    cols = table[0] if table else {}
    if not (cols and metric in cols and len(cols["x"])):
        return placeholder(title, "no quantified tiles")
    values = np.array([np.nan if v is None else v for v in cols[metric]], np.float64)
    vmax = 300.0 if "h_score" in metric else 100.0
    ticks = [0, 100, 200, 300] if vmax == 300 else [0, 25, 50, 75, 100]
    marks = {"cut-off": float(result["cutoff"])} if result.get("cutoff") is not None else None
    return heatmap_picture(summary, thumb, grid_meta, cols["x"], cols["y"],
                           [(f"{summary['stain']} {metric} per tile", values)], 0.0, vmax,
                           f"{summary['stain']}: {metric} per tile", ticks, marks, show_plain=True)


def draw_slide(args) -> dict[str, Image.Image]:
    """The three pictures of a slide (``tissue``, ``heatmap``, ``top_tiles``) from the CLI arguments."""
    summary = atomic.read_json(args.summary)
    title, _ = title_of(summary)
    thumb = _read_png(args.thumb) if args.thumb else None
    mask = _read_png(args.mask) if args.mask else None
    grid = try_read_columns(args.tiles) if args.tiles else None
    grid_cols, grid_meta = grid if grid else ({"x": np.zeros(0, int), "y": np.zeros(0, int)}, {})
    have_thumb = thumb is not None and thumb.ndim == 3 and summary["qc"].get("thumb_mpp")
    pictures = {}
    if have_thumb and mask is not None and mask.shape[:2] == thumb.shape[:2]:
        pictures["tissue"] = tissue_picture(summary, thumb, mask, grid_meta, grid_cols["x"], grid_cols["y"])
    else:
        pictures["tissue"] = placeholder(title, summary["reason"] or "no thumbnail")
    if summary["status"] == "failed" or not have_thumb or not grid_meta.get("mpp"):
        reason = summary["reason"] or "no tiles"
        pictures["heatmap"] = placeholder(title, reason)
        pictures["top_tiles"] = placeholder(title, reason)
        return pictures
    if summary["kind"] == "HE":
        pictures["heatmap"] = _he_heatmap(summary, thumb, grid_meta, args.scores, title)
        groups = list(TUMOUR_CLASSES)
    else:
        pictures["heatmap"] = _ihc_heatmap(summary, thumb, grid_meta, args.ihc_tiles, title)
        groups = None
    pictures["top_tiles"] = top_tiles_picture(summary, args, groups, title)
    return pictures


def top_tiles_picture(summary: dict, args, groups, title: str) -> Image.Image:
    """The top-tile sheet, tiles read from ``args.slide``; a placeholder if there is no readable slide."""
    from pipeline.errors import SlideError
    from pipeline.slides.reader import open_slide

    tile_px, target_mpp = int(summary["tiles"]["tile_px"]), float(summary["tiles"]["target_mpp"])
    if not args.slide:
        return placeholder(title, "slide file not given: no tiles drawn")
    try:
        with open_slide(args.slide, mpp=args.mpp) as slide:
            return contact_sheet(summary, lambda x, y: slide.read_tile(x, y, tile_px, target_mpp), tile_px, groups)
    except SlideError as exc:
        from pipeline.redact import redact

        return placeholder(title, redact(str(exc), args.slide))


# ---- CLI ------------------------------------------------------------------------------------------------
def configure_parser(parser) -> None:
    parser.add_argument("--summary", required=True, help="summary.json from summarize-slide")
    parser.add_argument("--slide", default=None, help="slide file (top tiles are read from it)")
    parser.add_argument("--mpp", type=float, default=None, help="level-0 um/px override (sample sheet `mpp`)")
    parser.add_argument("--thumb", default=None, help="thumb.png from qc-slide")
    parser.add_argument("--mask", default=None, help="tissue.png from qc-slide")
    parser.add_argument("--tiles", default=None, help="tiles.parquet from tile-slide")
    parser.add_argument("--scores", nargs="?", default=None, help="scores.parquet (H&E)")
    parser.add_argument("--ihc-tiles", nargs="?", default=None, help="ihc.parquet (IHC)")
    parser.add_argument("--out-heatmap", required=True, help="heatmap PNG to write")
    parser.add_argument("--out-tissue", required=True, help="tissue overlay PNG to write")
    parser.add_argument("--out-top-tiles", required=True, help="top-tiles contact sheet PNG to write")


def run(args) -> None:
    pictures = draw_slide(args)
    for key, path in (("heatmap", args.out_heatmap), ("tissue", args.out_tissue), ("top_tiles", args.out_top_tiles)):
        atomic.write_bytes(path, png_bytes(pictures[key]))
    log.info("%s: pictures written (%s)", Path(args.summary).parent.name,
             ", ".join(f"{k} {v.width}x{v.height}" for k, v in pictures.items()))

