"""The slide interface every reader implements: :class:`Slide` (levels, um/px per level, regions, tiles
at a target um/px, a downsampled whole image, non-identifying facts) and :func:`safe_properties` (the
allowlist of slide properties that may leave the slide).

All coordinates are level-0 pixels (top-left origin) unless a name says otherwise; all images are
``(height, width, 3)`` uint8 RGB arrays; transparent or out-of-bounds areas read as white glass.
"""

from __future__ import annotations

import abc
import re
from pathlib import Path

import numpy as np

from pipeline import opencv
from pipeline.errors import SlideError

# Largest pyramid level we will decode whole (in chunks) to build a thumbnail. A 100k x 100k slide with
# 4x levels has a 6250 x 6250 level; a file that claims 10^6 x 10^6 px with no pyramid is refused.
MAX_THUMBNAIL_SOURCE_PX = 400_000_000
# Largest single region a caller may ask for (guards against allocating a claimed huge size).
MAX_REGION_PX = 64_000_000
# Level chosen for a target MPP may be finer than the target by any amount, coarser by at most this much.
LEVEL_MPP_TOLERANCE = 0.01
# Slide properties safe to copy into outputs. Everything else (scan dates, file names, user names,
# barcodes, device serials, label/macro images) stays in the slide.
SAFE_PROPERTY_PATTERNS = (
    r"openslide\.vendor",
    r"openslide\.mpp-[xy]",
    r"openslide\.objective-power",
    r"openslide\.level-count",
    r"openslide\.level\[\d+\]\.(width|height|downsample)",
    r"openslide\.bounds-(x|y|width|height)",
)


def safe_properties(properties: dict[str, str]) -> dict[str, str]:
    """Keep only allowlisted, non-identifying slide properties."""
    pattern = re.compile("|".join(f"(?:{p})" for p in SAFE_PROPERTY_PATTERNS))
    return {k: str(v) for k, v in sorted(properties.items()) if pattern.fullmatch(k)}


class Slide(abc.ABC):
    """A pyramidal brightfield slide. Subclasses implement :meth:`_read_level`."""

    path: Path
    vendor: str
    level_dimensions: tuple[tuple[int, int], ...]  # (width, height) per level
    mpp: float  # um per level-0 pixel
    mpp_source: str  # "slide" or "override"
    objective_power: float | None
    properties: dict[str, str]  # raw properties; never export without safe_properties()

    # ---- geometry -------------------------------------------------------------------------------
    @property
    def dimensions(self) -> tuple[int, int]:
        """Level-0 (width, height) in pixels."""
        return self.level_dimensions[0]

    @property
    def level_count(self) -> int:
        return len(self.level_dimensions)

    @property
    def level_downsamples(self) -> tuple[float, ...]:
        w0, h0 = self.dimensions
        return tuple((w0 / w + h0 / h) / 2.0 for w, h in self.level_dimensions)

    def level_mpp(self, level: int) -> float:
        return self.mpp * self.level_downsamples[level]

    def best_level_for_mpp(self, target_mpp: float) -> int:
        """The coarsest level whose um/px is not coarser than ``target_mpp`` (level 0 if none is)."""
        best = 0
        for level in range(self.level_count):
            if self.level_mpp(level) <= target_mpp * (1.0 + LEVEL_MPP_TOLERANCE):
                best = level
        return best

    # ---- pixels ---------------------------------------------------------------------------------
    @abc.abstractmethod
    def _read_level(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        """RGB pixels of ``level`` at (x, y) in that level's own pixel frame; may run past the edges."""

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        """Read ``size`` (w, h) pixels of ``level`` whose top-left pixel is ``location`` in level-0 frame."""
        width, height = int(size[0]), int(size[1])
        if width <= 0 or height <= 0 or width * height > MAX_REGION_PX:
            raise ValueError(f"region size {width}x{height} out of range (max {MAX_REGION_PX} px)")
        ds = self.level_downsamples[level]
        return self._read_level(level, int(location[0] // ds), int(location[1] // ds), width, height)

    def tile_geometry(self, tile_px: int, target_mpp: float) -> tuple[int, int, float]:
        """For tiles of ``tile_px`` at ``target_mpp``: (level, region_px at that level, effective um/px).

        The effective um/px is the resolution the tile really has: the pixel pitch of the resized tile, or the
        level's own um/px when that is coarser (a slide read within :data:`MPP_COARSER_TOLERANCE`; enlarging
        adds pixels, not detail).
        """
        level = self.best_level_for_mpp(target_mpp)
        region_px = max(1, round(tile_px * target_mpp / self.level_mpp(level)))
        return level, region_px, max(self.level_mpp(level) * region_px / tile_px, self.level_mpp(level))

    def read_tile(self, x0: int, y0: int, tile_px: int, target_mpp: float) -> np.ndarray:
        """A ``tile_px`` square tile at ``target_mpp`` whose top-left is (x0, y0) in level-0 pixels."""
        level, region_px, _ = self.tile_geometry(tile_px, target_mpp)
        ds = self.level_downsamples[level]
        region = self._read_level(level, int(x0 // ds), int(y0 // ds), region_px, region_px)
        return resize_rgb(region, tile_px, tile_px)

    def read_tiles(self, xs, ys, tile_px: int, target_mpp: float, out: np.ndarray | None = None) -> np.ndarray:
        """Tiles as :meth:`read_tile` gives them for level-0 top-left corners ``xs``, ``ys``: a
        ``(len(xs), tile_px, tile_px, 3)`` uint8 array, written into ``out`` when given."""
        out = tile_batch(len(xs), tile_px, out)
        for i, (x0, y0) in enumerate(zip(xs, ys, strict=True)):
            out[i] = self.read_tile(int(x0), int(y0), tile_px, target_mpp)
        return out

    def read_downsampled(self, target_mpp: float, chunk_px: int = 4096) -> tuple[np.ndarray, float]:
        """The whole slide at about ``target_mpp`` um/px, read chunk by chunk with bounded memory.

        Returns ``(image, mpp_y_x)`` where the second item is the image's actual um/px.
        """
        level = self.best_level_for_mpp(target_mpp)
        lw, lh = self.level_dimensions[level]
        if lw * lh > MAX_THUMBNAIL_SOURCE_PX:
            raise SlideError(
                f"{self.path}: no pyramid level near {target_mpp:g} um/px (level {level} is {lw} x {lh} px); "
                "convert the slide to a tiled pyramidal format (e.g. `vips tiffsave --tile --pyramid`)"
            )
        scale = self.level_mpp(level) / target_mpp  # output px per level px (<= 1)
        out_w, out_h = max(1, round(lw * scale)), max(1, round(lh * scale))
        out = np.empty((out_h, out_w, 3), np.uint8)
        for y in range(0, lh, chunk_px):
            oy0, oy1 = round(y * scale), round(min(lh, y + chunk_px) * scale)
            for x in range(0, lw, chunk_px):
                ox0, ox1 = round(x * scale), round(min(lw, x + chunk_px) * scale)
                if ox1 <= ox0 or oy1 <= oy0:
                    continue
                chunk = self._read_level(level, x, y, min(chunk_px, lw - x), min(chunk_px, lh - y))
                out[oy0:oy1, ox0:ox1] = resize_rgb(chunk, ox1 - ox0, oy1 - oy0)
        return out, self.level_mpp(level) * lw / out_w

    # ---- description ----------------------------------------------------------------------------
    def describe(self) -> dict:
        """Non-identifying facts about the slide, for summaries."""
        return {
            "vendor": self.vendor,
            "reader": type(self).__name__,
            "width_px": self.dimensions[0],
            "height_px": self.dimensions[1],
            "level_count": self.level_count,
            "level_dimensions": [list(d) for d in self.level_dimensions],
            "mpp": round(self.mpp, 6),
            "mpp_source": self.mpp_source,
            "objective_power": self.objective_power,
            "properties": safe_properties(self.properties),
        }

    def close(self) -> None:  # noqa: B027 - optional hook
        pass

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def resize_rgb(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Area-averaging resize (box filter) of an RGB uint8 array; returns the input when sizes match.

    A whole-number shrink (a 0.25 um/px level read at 0.5 um/px: 2 x 2 blocks) is OpenCV's block mean, rounded to
    nearest (0.6 ms for a 448 px tile against Pillow's 5 ms, which is also off by one level in a third of pixels);
    other factors are Pillow's box filter."""
    if image.shape[1] == width and image.shape[0] == height:
        return image
    factor = image.shape[1] // width
    if factor > 1 and image.shape[1] == factor * width and image.shape[0] == factor * height:
        cv2 = opencv.cv2()
        return cv2.resize(np.ascontiguousarray(image), (width, height), interpolation=cv2.INTER_AREA)
    from PIL import Image

    return np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.BOX))


def rgba_to_rgb(rgba: np.ndarray) -> np.ndarray:
    """Composite OpenSlide's (non-premultiplied) RGBA onto white glass."""
    rgb, alpha = rgba[..., :3], rgba[..., 3]
    if alpha.min() == 255:
        return np.ascontiguousarray(rgb)
    a = alpha[..., None].astype(np.uint16)
    return ((rgb.astype(np.uint16) * a + 255 * (255 - a) + 127) // 255).astype(np.uint8)


def tile_batch(n: int, tile_px: int, out: np.ndarray | None) -> np.ndarray:
    if out is None:
        return np.empty((n, tile_px, tile_px, 3), np.uint8)
    if out.shape != (n, tile_px, tile_px, 3) or out.dtype != np.uint8:
        raise ValueError(f"out must be uint8 {(n, tile_px, tile_px, 3)}, got {out.dtype} {out.shape}")
    return out
