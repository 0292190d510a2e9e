"""Drawing primitives for the slide pictures: colour map, text blocks, stacking, bars, panels, placeholders.

Pure Pillow/numpy (images and arrays in, images out); no file access. Text uses Pillow's built-in font, so the
pixels do not depend on the fonts installed.

Public: :data:`COLORMAP`, :data:`CLASS_COLOURS`, :func:`colorize`, :func:`font`, :func:`wrap`,
:func:`text_block`, :func:`stack`, :func:`framed`, :func:`scale_bar`, :func:`colour_bar`,
:func:`display_thumb`, :func:`tile_boxes`, :func:`heat_overlay`, :func:`panel`, :func:`placeholder`.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from pipeline import DISCLAIMER

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
