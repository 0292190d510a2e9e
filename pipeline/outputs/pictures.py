"""The three pictures of one slide, drawn from its summary and arrays: heatmap, tissue overlay, top-tile sheet.

* :func:`heatmap_picture` -- thumbnail panels overlaid with per-tile values (H&E: P(carcinoma), P(sarcoma);
  IHC: the marker's metric beside the plain thumbnail), a colour bar and a scale bar in mm;
* :func:`tissue_picture` -- the thumbnail with the tissue mask tinted and outlined and the analysed tiles drawn;
* :func:`contact_sheet` -- the top tiles per group at full resolution, read through a ``read_tile(x, y)`` callback,
  each labelled with its value and level-0 position.

Every picture has a header (:func:`title_of`: slide, stain, call) and the disclaimer as footer. Pure: summary
dict and numpy arrays in, PIL images out; reading the files and writing the PNGs is :mod:`pipeline.outputs.figures`.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from pipeline.outputs.drawing import (
    CLASS_COLOURS,
    INK,
    MUTED,
    TISSUE_TINT,
    colour_bar,
    display_thumb,
    framed,
    heat_overlay,
    panel,
    placeholder,
    stack,
    text_block,
    tile_boxes,
)


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
