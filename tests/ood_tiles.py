"""Tiles that are not H&E tissue (for the out-of-distribution guard's test) and real H&E tiles from slides no
model was trained on. Every function returns (N, px, px, 3) uint8 RGB."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

ROOT = Path(__file__).resolve().parents[1]


def _grid(img: np.ndarray, px: int, n: int) -> list[np.ndarray]:
    h, w = img.shape[:2]
    ys = np.linspace(0, h - px, max(1, min(n, h // px))).astype(int)
    xs = np.linspace(0, w - px, max(1, min(n, w // px))).astype(int)
    return [img[y:y + px, x:x + px] for y in ys for x in xs]


def slide_tiles(path: Path, px: int, mpp: float, n: int = 24, min_tissue: float = 0.5,
                slide_mpp: float | None = None, step: float = 1.0) -> np.ndarray:
    """Tissue tiles of a slide at ``mpp`` um/px, through the project's reader (level chosen as scoring does), on a
    grid whose step is ``step`` tiles (below 1: overlapping tiles, for slides only a few tiles wide)."""
    from pipeline.slides.reader import open_slide

    with open_slide(path, mpp=slide_mpp) as slide:
        side = round(px * mpp / slide.mpp)  # level-0 px of one tile
        stride = max(1, round(side * step))
        w, h = slide.dimensions
        out = []
        for y in range(0, h - side, stride):
            for x in range(0, w - side, stride):
                tile = slide.read_tile(x, y, px, mpp)
                grey = tile.mean(axis=2)
                if (grey < 215).mean() >= min_tissue:
                    out.append(tile)
        idx = np.linspace(0, len(out) - 1, min(n, len(out))).astype(int)
        return np.stack([out[i] for i in idx])


def natural_images(px: int) -> np.ndarray:
    import skimage.data

    names = ["astronaut", "chelsea", "coffee", "rocket", "cat", "camera", "coins", "moon", "page", "text",
             "brick", "grass", "gravel", "rocket", "logo", "colorwheel", "hubble_deep_field", "immunohistochemistry"]
    tiles = []
    for name in names:
        img = getattr(skimage.data, name)()
        if img.ndim == 2:
            img = np.stack([img] * 3, axis=-1)
        img = img[..., :3].astype(np.uint8)
        if min(img.shape[:2]) < px:
            img = np.asarray(Image.fromarray(img).resize((px * 2, px * 2)))
        tiles += _grid(img, px, 2)
    return np.stack(tiles)


def pen_ink(px: int, n: int = 12, seed: int = 0) -> np.ndarray:
    """Marker strokes (green, blue, black, red) on glass."""
    rng = np.random.default_rng(seed)
    colours = [(20, 120, 60), (30, 50, 150), (25, 25, 30), (170, 30, 40)]
    out = []
    for i in range(n):
        im = Image.new("RGB", (px, px), tuple(int(v) for v in rng.integers(232, 246, 3)))
        d = ImageDraw.Draw(im)
        for _ in range(3):
            pts = [tuple(int(v) for v in rng.integers(0, px, 2)) for _ in range(4)]
            d.line(pts, fill=colours[i % 4], width=int(rng.integers(25, 60)))
        out.append(np.asarray(im.filter(ImageFilter.GaussianBlur(1.5))))
    return np.stack(out)


def glass(px: int, n: int = 8, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.integers(225, 250, (n, 1, 1, 3))
    return np.clip(base + rng.normal(0, 3, (n, px, px, 3)), 0, 255).astype(np.uint8)


def blurred(tiles: np.ndarray, radius: float = 8.0) -> np.ndarray:
    """Out-of-focus tissue: a Gaussian blur far beyond a scanner's depth of field."""
    return np.stack([np.asarray(Image.fromarray(t).filter(ImageFilter.GaussianBlur(radius))) for t in tiles])


def fluorescence(px: int, n: int = 12, seed: int = 0) -> np.ndarray:
    """Dark field with bright nuclei (DAPI blue) and cytoplasm (FITC green / Cy3 red), as a fluorescence scan
    renders in RGB."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:px, 0:px]
    out = []
    for i in range(n):
        img = np.zeros((px, px, 3), np.float32) + rng.uniform(2, 12)
        for _ in range(int(rng.integers(20, 60))):
            cy, cx, r = rng.uniform(0, px), rng.uniform(0, px), rng.uniform(3, 8)
            d2 = (yy - cy) ** 2 + (xx - cx) ** 2
            img[..., 2] += 200 * np.exp(-d2 / (2 * r * r))
            ch = 1 if i % 2 else 0
            img[..., ch] += 120 * np.exp(-d2 / (2 * (2.5 * r) ** 2))
        out.append(np.clip(img, 0, 255).astype(np.uint8))
    return np.stack(out)


def ihc_tiles(px: int, mpp: float, n_per_slide: int = 16) -> np.ndarray:
    """Tiles of the sample cohort's IHC slides (DAB + haematoxylin)."""
    paths = sorted(p for p in (ROOT / "slides_sample").glob("*.svs") if not p.name.endswith("-HE.svs"))
    return np.concatenate([slide_tiles(p, px, mpp, n_per_slide) for p in paths])


def real_ihc_tiles(data: Path, px: int, mpp: float) -> dict[str, np.ndarray]:
    """Real Ki-67 IHC (DAB + haematoxylin), the same tissue from two scanners (../shared/data/slides OS-2-*): each
    scan is 500 um square, so 2 x 2 tiles of 224 um; at half a tile's step, 9 overlapping tissue tiles each."""
    return {scanner: slide_tiles(data / "slides" / f"OS-2-{scanner}.ome.tif", px, mpp, step=0.5)
            for scanner in ("ndpi", "vsi")}
