"""Pictures of one slide for people: heatmap, tissue overlay and top tiles (PNG, deterministic bytes).

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
"""

from __future__ import annotations

import io
import json
import logging
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from pipeline import DISCLAIMER, atomic

log = logging.getLogger(__name__)

PANEL_MAX_PX = 640  # longest side of one slide panel in heatmap / overlay pictures
HEAT_ALPHA = 0.6
BACKGROUND = (255, 255, 255)
INK = (20, 20, 20)
MUTED = (90, 90, 90)
# Perceptually ordered colour map (dark violet -> blue -> teal -> green -> yellow), 256 entries.
_ANCHORS = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], np.float64)
COLORMAP = np.stack([np.interp(np.linspace(0, 4, 256), np.arange(5), _ANCHORS[:, c]) for c in range(3)],
                    axis=1).round().astype(np.uint8)
# Class colours shared with the GeoJSON export (QuPath classification colours).
CLASS_COLOURS = {"carcinoma": (200, 40, 40), "sarcoma": (40, 90, 200), "non_tumour": (120, 170, 90),
                 "ood": (150, 150, 150)}
TISSUE_TINT = (46, 160, 67)
SCALE_BAR_MM = (0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50)


# ---- drawing primitives ---------------------------------------------------------------------------------
def font(size: int) -> ImageFont.FreeTypeFont:
    """Pillow's built-in font at ``size`` px (independent of installed fonts)."""
    return ImageFont.load_default(size=size)


def png_bytes(image: Image.Image | np.ndarray) -> bytes:
    """Deterministic PNG: no metadata chunks, fixed compression."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def colorize(values: np.ndarray, vmin: float = 0.0, vmax: float = 1.0) -> np.ndarray:
    """RGB of ``values`` on :data:`COLORMAP` (clipped to [vmin, vmax])."""
    t = np.clip((np.asarray(values, np.float64) - vmin) / max(vmax - vmin, 1e-12), 0, 1)
    return COLORMAP[np.round(t * 255).astype(int)]


def wrap(text: str, fnt, width_px: int) -> list[str]:
    """Greedy word wrap to ``width_px`` with ``fnt``."""
    lines = []
    for para in str(text).splitlines() or [""]:
        words, line = para.split(), ""
        for word in words:
            trial = f"{line} {word}".strip()
            if fnt.getlength(trial) <= width_px or not line:
                line = trial
            else:
                lines.append(line)
                line = word
        lines.append(line)
    out = []
    for line in lines:  # a single word longer than the width: hard-wrap it
        while fnt.getlength(line) > width_px and len(line) > 1:
            cut = max(1, int(len(line) * width_px / fnt.getlength(line)))
            out.append(line[:cut])
            line = line[cut:]
        out.append(line)
    return out


def text_block(lines: list[tuple[str, int, tuple]], width: int, pad: int = 8) -> Image.Image:
    """A white block with the given (text, size, colour) lines wrapped to ``width``."""
    rendered = []
    for text, size, colour in lines:
        fnt = font(size)
        for line in wrap(text, fnt, width - 2 * pad):
            rendered.append((line, fnt, colour, size + 4))
    height = pad * 2 + sum(h for *_, h in rendered)
    img = Image.new("RGB", (width, max(height, 1)), BACKGROUND)
    draw = ImageDraw.Draw(img)
    y = pad
    for line, fnt, colour, h in rendered:
        draw.text((pad, y), line, fill=colour, font=fnt)
        y += h
    return img


def stack(images: list[Image.Image], vertical: bool = True, gap: int = 0) -> Image.Image:
    """Images one below the other (or side by side), left/top aligned on white."""
    images = [im for im in images if im is not None]
    if vertical:
        w, h = max(im.width for im in images), sum(im.height for im in images) + gap * (len(images) - 1)
    else:
        w, h = sum(im.width for im in images) + gap * (len(images) - 1), max(im.height for im in images)
    out = Image.new("RGB", (w, h), BACKGROUND)
    pos = 0
    for im in images:
        out.paste(im, (0, pos) if vertical else (pos, 0))
        pos += (im.height if vertical else im.width) + gap
    return out


def framed(body: Image.Image, title: str, subtitle: str = "") -> Image.Image:
    """Header (title, subtitle) + body + disclaimer footer."""
    width = max(body.width, 480)
    header = text_block([(title, 20, INK)] + ([(subtitle, 14, MUTED)] if subtitle else []), width)
    footer = text_block([(DISCLAIMER, 12, MUTED)], width)
    return stack([header, body, footer])


def scale_bar(draw: ImageDraw.ImageDraw, panel_w: int, panel_h: int, um_per_px: float) -> None:
    """A scale bar in mm at the bottom-left of a panel: the longest of SCALE_BAR_MM up to 30 % of the width."""
    best = None
    for mm in SCALE_BAR_MM:
        if mm * 1000.0 / um_per_px <= 0.3 * panel_w:
            best = mm
    if best is None:
        return
    length = max(1, round(best * 1000.0 / um_per_px))
    x0, y0 = 10, panel_h - 14
    label = f"{best:g} mm"
    fnt = font(13)
    tw = fnt.getlength(label)
    draw.rectangle([x0 - 4, y0 - 20, x0 + max(length, tw) + 4, y0 + 8], fill=(255, 255, 255))
    draw.rectangle([x0, y0, x0 + length, y0 + 4], fill=(0, 0, 0))
    draw.text((x0, y0 - 18), label, fill=(0, 0, 0), font=fnt)


def colour_bar(width: int, label: str, vmin: float, vmax: float, ticks: list[float],
               marks: dict[str, float] | None = None) -> Image.Image:
    """A horizontal colour bar with tick labels and optional labelled marks (e.g. the cut-off)."""
    bar_w, pad = min(width - 40, 420), 20
    img = Image.new("RGB", (width, 64), BACKGROUND)
    draw = ImageDraw.Draw(img)
    fnt = font(13)
    draw.text((pad, 2), label, fill=INK, font=fnt)
    ramp = colorize(np.linspace(vmin, vmax, bar_w), vmin, vmax)[None].repeat(14, axis=0)
    img.paste(Image.fromarray(ramp), (pad, 22))
    draw.rectangle([pad - 1, 21, pad + bar_w, 36], outline=INK)

    def xpos(v):
        return pad + round((v - vmin) / (vmax - vmin) * (bar_w - 1))

    for t in ticks:
        draw.line([xpos(t), 36, xpos(t), 40], fill=INK)
        text = f"{t:g}"
        draw.text((xpos(t) - fnt.getlength(text) / 2, 42), text, fill=INK, font=fnt)
    for name, v in (marks or {}).items():
        if vmin <= v <= vmax:
            draw.line([xpos(v), 18, xpos(v), 40], fill=(220, 0, 0), width=2)
            draw.text((pad + bar_w + 8, 22), f"| {name} {v:g}", fill=(220, 0, 0), font=fnt)
    return img


# ---- slide panels ---------------------------------------------------------------------------------------
def display_thumb(thumb: np.ndarray, thumb_mpp: float, max_px: int = PANEL_MAX_PX) -> tuple[np.ndarray, float]:
    """The thumbnail resized so its longest side is at most ``max_px``; returns (image, its um/px)."""
    h, w = thumb.shape[:2]
    scale = min(1.0, max_px / max(h, w))
    if scale >= 1.0:
        return thumb, thumb_mpp
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    img = np.asarray(Image.fromarray(thumb).resize((nw, nh), Image.Resampling.BOX))
    return img, thumb_mpp * w / nw


def tile_boxes(x: np.ndarray, y: np.ndarray, size0: float, level0_per_px: float, shape) -> np.ndarray:
    """Integer (x0, y0, x1, y1) display-pixel boxes of level-0 tiles, clipped to ``shape`` (h, w)."""
    h, w = shape[:2]
    x0 = np.clip(np.floor(np.asarray(x) / level0_per_px), 0, w).astype(int)
    y0 = np.clip(np.floor(np.asarray(y) / level0_per_px), 0, h).astype(int)
    x1 = np.clip(np.ceil((np.asarray(x) + size0) / level0_per_px), 0, w).astype(int)
    y1 = np.clip(np.ceil((np.asarray(y) + size0) / level0_per_px), 0, h).astype(int)
    return np.stack([x0, y0, x1, y1], axis=1) if len(x0) else np.zeros((0, 4), int)


def heat_overlay(base: np.ndarray, boxes: np.ndarray, values: np.ndarray, vmin: float, vmax: float,
                 alpha: float = HEAT_ALPHA) -> np.ndarray:
    """``base`` with each box filled by its value's colour at ``alpha`` (NaN values left clear)."""
    layer = np.zeros(base.shape[:2] + (3,), np.float64)
    weight = np.zeros(base.shape[:2], np.float64)
    colours = colorize(np.nan_to_num(values, nan=vmin), vmin, vmax)
    for (x0, y0, x1, y1), v, c in zip(boxes, values, colours, strict=True):
        if math.isfinite(float(v)):
            layer[y0:y1, x0:x1] = c
            weight[y0:y1, x0:x1] = alpha
    out = base.astype(np.float64) * (1 - weight[..., None]) + layer * weight[..., None]
    return out.round().astype(np.uint8)


def panel(image: np.ndarray, caption: str, um_per_px: float) -> Image.Image:
    """One slide panel: caption above, the image with a scale bar."""
    im = Image.fromarray(image)
    draw = ImageDraw.Draw(im)
    scale_bar(draw, im.width, im.height, um_per_px)
    cap = text_block([(caption, 14, INK)], max(im.width, 200), pad=4)
    return stack([cap, im])


def placeholder(title: str, reason: str, width: int = 720) -> Image.Image:
    """A picture that says why there is no picture."""
    body = text_block([("Not assessed", 18, (170, 30, 30)), (reason or "no reason recorded", 14, INK)], width)
    box = Image.new("RGB", (width, body.height + 40), (246, 246, 246))
    box.paste(body.crop((0, 0, width, body.height)), (0, 20))
    ImageDraw.Draw(box).rectangle([0, 0, width - 1, box.height - 1], outline=(170, 170, 170))
    return framed(box, title)


# ---- the three pictures ---------------------------------------------------------------------------------
def title_of(summary: dict) -> tuple[str, str]:
    """(title, subtitle) for a slide's pictures."""
    title = f"{summary['slide_id']} - {summary['stain']} (case {summary['case_id']})"
    if summary["status"] == "failed":
        return title, f"FAILED: {summary['reason']}"
    if summary["kind"] == "HE":
        c = summary["slide_call"] or {}
        sub = f"slide call: {c.get('call')} (confidence {c.get('confidence', 0):.2f}) - {c.get('reason', '')}"
    else:
        r = ((summary.get("ihc") or {}).get("result")) or {}
        sub = f"{summary['stain']}: {r.get('call')} - {r.get('reason', '')}"
    if summary["status"] == "warn":
        sub += f" | warnings: {summary['reason']}"
    return title, sub


def heatmap_picture(summary: dict, thumb: np.ndarray, grid_meta: dict, x: np.ndarray, y: np.ndarray,
                    layers: list[tuple[str, np.ndarray]], vmin: float, vmax: float, bar_label: str,
                    ticks: list[float], marks: dict | None = None, show_plain: bool = False) -> Image.Image:
    """Thumbnail panels overlaid with per-tile values (one panel per layer), colour bar and scale bars."""
    title, subtitle = title_of(summary)
    disp, disp_mpp = display_thumb(thumb, summary["qc"]["thumb_mpp"])
    level0_per_px = disp_mpp / float(grid_meta["mpp"])
    boxes = tile_boxes(x, y, float(grid_meta["tile_size_level0"]), level0_per_px, disp.shape)
    panels = [panel(disp, "thumbnail", disp_mpp)] if show_plain else []
    for caption, values in layers:
        panels.append(panel(heat_overlay(disp, boxes, values, vmin, vmax), caption, disp_mpp))
    body = stack(panels, vertical=False, gap=12)
    bar = colour_bar(body.width, bar_label, vmin, vmax, ticks, marks)
    return framed(stack([body, bar]), title, subtitle)


def tissue_picture(summary: dict, thumb: np.ndarray, mask: np.ndarray, grid_meta: dict,
                   x: np.ndarray, y: np.ndarray) -> Image.Image:
    """Thumbnail with the tissue mask tinted and outlined, and the analysed tile grid drawn."""
    from scipy import ndimage

    title, subtitle = title_of(summary)
    thumb_mpp = summary["qc"]["thumb_mpp"]
    disp, disp_mpp = display_thumb(thumb, thumb_mpp)
    m = np.asarray(Image.fromarray((mask > 0).astype(np.uint8) * 255).resize(
        (disp.shape[1], disp.shape[0]), Image.Resampling.BOX)) > 127
    edge = m & ~ndimage.binary_erosion(m, iterations=2)
    out = disp.astype(np.float64)
    out[m] = out[m] * 0.8 + np.array(TISSUE_TINT) * 0.2
    out[edge] = TISSUE_TINT
    im = Image.fromarray(out.round().astype(np.uint8))
    draw = ImageDraw.Draw(im)
    n = 0
    if grid_meta.get("mpp") and grid_meta.get("tile_size_level0") and len(x):
        boxes = tile_boxes(x, y, float(grid_meta["tile_size_level0"]), disp_mpp / float(grid_meta["mpp"]), disp.shape)
        for x0, y0, x1, y1 in boxes:
            draw.rectangle([x0, y0, max(x0, x1 - 1), max(y0, y1 - 1)], outline=(30, 30, 30))
        n = len(boxes)
    caption = f"tissue (green, {summary['qc']['metrics'].get('tissue_area_mm2', 0):g} mm2) and {n} analysed tiles"
    body = panel(np.asarray(im), caption, disp_mpp)
    return framed(body, title, subtitle)


def contact_sheet(summary: dict, read_tile, tile_px: int, groups: list[str] | None = None,
                  max_per_group: int = 8) -> Image.Image:
    """Top tiles per group at full resolution; ``read_tile(x, y) -> RGB array`` reads one tile."""
    title, subtitle = title_of(summary)
    rows = []
    for group, entry in summary["top_tiles"].items():
        if groups is not None and group not in groups:
            continue
        tiles = entry["tiles"][:max_per_group]
        if not tiles:
            continue
        cells = []
        for t in tiles:
            rgb = read_tile(t["x"], t["y"])
            cap = text_block([(f"{entry['measure']} {t['value']:g}", 12, INK), (f"x {t['x']}, y {t['y']}", 11, MUTED)],
                             tile_px, pad=3)
            cell = stack([Image.fromarray(rgb), cap])
            ImageDraw.Draw(cell).rectangle([0, 0, tile_px - 1, tile_px - 1],
                                           outline=CLASS_COLOURS.get(group, (220, 120, 0)), width=3)
            cells.append(cell)
        label = text_block([(f"top tiles by {entry['measure']}", 15, INK)], max(480, len(cells) * (tile_px + 6)))
        rows.append(stack([label, stack(cells, vertical=False, gap=6)]))
    if not rows:
        return placeholder(title, "no tiles to show")
    note = text_block([(f"{tile_px} px tiles at {summary['tiles']['target_mpp']:g} um/px; x, y = level-0 "
                        "top-left corner", 12, MUTED)], rows[0].width)
    return framed(stack(rows + [note], gap=10), title, subtitle)


# ---- CLI ------------------------------------------------------------------------------------------------
def _read_png(path) -> np.ndarray | None:
    try:
        with Image.open(path) as im:
            return np.asarray(im)
    except (OSError, ValueError):
        return None


def _columns(path) -> tuple[dict, dict] | None:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (OSError, ValueError):
        return None
    meta = json.loads((table.schema.metadata or {}).get(b"slide_triage", b"{}"))
    return {n: table.column(n).to_numpy(zero_copy_only=False) for n in table.column_names}, meta


def draw_slide(args) -> dict[str, Image.Image]:
    """The three pictures of a slide from the CLI arguments."""
    summary = json.loads(Path(args.summary).read_text(encoding="utf-8"))
    title, _ = title_of(summary)
    thumb = _read_png(args.thumb) if args.thumb else None
    mask = _read_png(args.mask) if args.mask else None
    grid = _columns(args.tiles) if args.tiles else None
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
        table = _columns(args.scores) if args.scores else None
        cols = table[0] if table else {}
        if cols and len(cols.get("x", [])):
            layers = [(f"P({c})", np.asarray(cols[f"prob_{c}"], np.float64)) for c in ("carcinoma", "sarcoma")
                      if f"prob_{c}" in cols]
            pictures["heatmap"] = heatmap_picture(summary, thumb, grid_meta, cols["x"], cols["y"], layers, 0.0, 1.0,
                                                  "tile probability (CNN, calibrated)", [0, 0.25, 0.5, 0.75, 1])
        else:
            pictures["heatmap"] = placeholder(title, "no scored tiles")
        groups = ["carcinoma", "sarcoma"]
    else:
        table = _columns(args.ihc_tiles) if args.ihc_tiles else None
        result = (summary.get("ihc") or {}).get("result") or {}
        metric = result.get("metric")
        cols = table[0] if table else {}
        if cols and metric in cols and len(cols["x"]):
            values = np.array([np.nan if v is None else v for v in cols[metric]], np.float64)
            vmax = 300.0 if "h_score" in metric else 100.0
            ticks = [0, 100, 200, 300] if vmax == 300 else [0, 25, 50, 75, 100]
            marks = {"cut-off": float(result["cutoff"])} if result.get("cutoff") is not None else None
            pictures["heatmap"] = heatmap_picture(summary, thumb, grid_meta, cols["x"], cols["y"],
                                                  [(f"{summary['stain']} {metric} per tile", values)], 0.0, vmax,
                                                  f"{summary['stain']}: {metric} per tile", ticks, marks,
                                                  show_plain=True)
        else:
            pictures["heatmap"] = placeholder(title, "no quantified tiles")
        groups = None
    pictures["top_tiles"] = top_tiles_picture(summary, args, groups, title)
    return pictures


def top_tiles_picture(summary: dict, args, groups, title: str) -> Image.Image:
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

