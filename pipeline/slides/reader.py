"""Whole-slide image access: one small interface, two readers, one factory.

* :class:`OpenSlideSlide` reads everything OpenSlide 4 reads (SVS, NDPI, MRXS, SCN, DICOM, generic tiled
  TIFF, ...). OpenSlide stays the authority on metadata (vendor, MPP, levels) for those files.
* :class:`TiffSlide` reads TIFF-family files directly with tifffile + imagecodecs, decoding only the
  tiles (or strips) a region needs. It serves OME-TIFF and plain RGB TIFF, which OpenSlide cannot open,
  and is the fast pixel path for JPEG-tiled SVS / generic TIFF that OpenSlide also opens.

:func:`open_slide` picks the reader, checks the file is a brightfield RGB image, resolves the
microns-per-pixel (MPP) and refuses anything it cannot use with a one-line :class:`SlideError`.

All coordinates are level-0 pixels (top-left origin) unless a name says otherwise; all images are
``(height, width, 3)`` uint8 RGB arrays; transparent or out-of-bounds areas read as white glass.
"""

from __future__ import annotations

import abc
import math
import os
import re
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np

from pipeline.errors import SlideError

# A usable MPP lies in this range (um per level-0 pixel): 100x objectives give ~0.1, overview scans ~10-20.
MPP_MIN_UM, MPP_MAX_UM = 0.05, 50.0
# Largest pyramid level we will decode whole (in chunks) to build a thumbnail. A 100k x 100k slide with
# 4x levels has a 6250 x 6250 level; a file that claims 10^6 x 10^6 px with no pyramid is refused.
MAX_THUMBNAIL_SOURCE_PX = 400_000_000
# Largest single region a caller may ask for (guards against allocating a claimed huge size).
MAX_REGION_PX = 64_000_000
# Level chosen for a target MPP may be finer than the target by any amount, coarser by at most this much.
LEVEL_MPP_TOLERANCE = 0.01
# A slide may be coarser than the um/px an analysis needs by at most this fraction; it is then resized by at
# most 10 %, about the spread of pixel sizes between scanners sold as the same magnification. A coarser slide
# is refused (:func:`resolution_problem`): enlarging it invents no detail, and its tiles would be labelled
# with a resolution they do not have.
MPP_COARSER_TOLERANCE = 0.10
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")

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


def resolution_problem(slide_mpp_um: float, needed_mpp_um: float, purpose: str,
                       tolerance: float = MPP_COARSER_TOLERANCE) -> str | None:
    """Why a slide scanned at ``slide_mpp_um`` cannot serve ``purpose`` at ``needed_mpp_um``, or None.

    Refused when coarser than needed by more than ``tolerance`` (a fraction); finer is always fine (it is
    downsampled). One line, naming the fix.
    """
    if slide_mpp_um <= needed_mpp_um * (1.0 + tolerance):
        return None
    return (f"scanned at {slide_mpp_um:g} um/px, coarser than the {needed_mpp_um:g} um/px {purpose} needs "
            f"(tolerance {tolerance:.0%}); slides are never enlarged: rescan at a higher magnification, or "
            "correct the sample sheet's `mpp` if the slide's metadata is wrong")


def check_resolution(slide: Slide, needed_mpp_um: float, purpose: str) -> None:
    """Raise a :class:`SlideError` naming the file when :func:`resolution_problem` refuses the slide."""
    problem = resolution_problem(slide.mpp, needed_mpp_um, purpose)
    if problem:
        raise SlideError(f"{slide.path}: {problem}")


def check_mpp(mpp: float, path: str | os.PathLike, source: str) -> float:
    """Return ``mpp`` if plausible, else raise a SlideError that says where it came from."""
    if not (isinstance(mpp, (int, float)) and math.isfinite(mpp) and MPP_MIN_UM <= mpp <= MPP_MAX_UM):
        raise SlideError(
            f"{path}: MPP {mpp!r} um/px from {source} is outside {MPP_MIN_UM}-{MPP_MAX_UM}; "
            "fix the slide metadata or set the sample sheet's `mpp` column for this slide"
        )
    return float(mpp)


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
        out = _tile_batch(len(xs), tile_px, out)
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
    """Area-averaging resize (box filter) of an RGB uint8 array; returns the input when sizes match."""
    if image.shape[1] == width and image.shape[0] == height:
        return image
    from PIL import Image

    return np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.BOX))


def _rgba_to_rgb(rgba: np.ndarray) -> np.ndarray:
    """Composite OpenSlide's (non-premultiplied) RGBA onto white glass."""
    rgb, alpha = rgba[..., :3], rgba[..., 3]
    if alpha.min() == 255:
        return np.ascontiguousarray(rgb)
    a = alpha[..., None].astype(np.uint16)
    return ((rgb.astype(np.uint16) * a + 255 * (255 - a) + 127) // 255).astype(np.uint8)


class OpenSlideSlide(Slide):
    """Any format OpenSlide reads."""

    def __init__(self, path: Path, osr, mpp_override: float | None = None):
        self.path = path
        self._osr = osr
        self.properties = dict(osr.properties)
        self.vendor = self.properties.get("openslide.vendor", "unknown")
        self.level_dimensions = tuple(tuple(d) for d in osr.level_dimensions)
        power = self.properties.get("openslide.objective-power")
        self.objective_power = float(power) if power else None
        mpp_slide, why_missing = _openslide_mpp(self.properties)
        self.mpp, self.mpp_source = _resolve_mpp(path, mpp_slide, mpp_override, why_missing)
        self._lock = threading.Lock()

    def _read_level(self, level, x, y, width, height):
        ds = self.level_downsamples[level]
        location = (int(round(x * ds)), int(round(y * ds)))
        import openslide

        try:
            rgba = np.asarray(self._osr.read_region(location, level, (width, height)))
        except openslide.OpenSlideError as exc:
            raise SlideError(f"{self.path}: pixel data cannot be decoded ({exc}); the file is damaged") from exc
        return _rgba_to_rgb(rgba)

    def close(self):
        self._osr.close()


def _openslide_mpp(properties: dict[str, str]) -> tuple[float | None, str]:
    """(level-0 um/px, or None and why) from OpenSlide's properties.

    OpenSlide derives a generic TIFF's MPP from its resolution tags, inch units included; a resolution in
    dots per inch is refused here as in :func:`resolution_tag_mpp`.
    """
    try:
        mx, my = float(properties["openslide.mpp-x"]), float(properties["openslide.mpp-y"])
    except (KeyError, ValueError):
        return None, ""
    if properties.get("openslide.vendor") == "generic-tiff" and properties.get("tiff.ResolutionUnit") == "inch":
        return None, dpi_reason(25400.0 / mx)
    if my and abs(mx - my) / max(mx, my) > 0.02:
        return None, f"non-square pixels ({mx:g} x {my:g} um)"  # let the caller refuse rather than guess
    return mx, ""


class TiffSlide(Slide):
    """Direct tile/strip decoding of a TIFF-family pyramid with tifffile + imagecodecs (no OpenSlide).

    Thread-safe: one instance may serve several reader threads. File bytes are read with positional reads
    (no shared file offset) and JPEG tiles are decoded by libjpeg-turbo with the GIL released, outside the
    lock. The cache of decoded segments is a fixed pool of buffers, touched only under the lock: a segment is
    *pinned* while a reader copies from it, and the least recently used unpinned one is evicted, its buffer
    decoded into again (no allocation and page faults per tile). Each segment a batch of tiles needs is
    decoded once and copied straight into the caller's output (no per-tile buffers).
    """

    _CACHE_SEGMENTS = 256  # decoded segments kept (256 px JPEG tiles: 48 MiB), > two rows of a 100k slide

    def __init__(self, path: Path, tif, levels, mpp_slide: float | None, mpp_override: float | None,
                 vendor: str, properties: dict[str, str], objective_power: float | None = None,
                 mpp_missing_why: str = ""):
        self.path = path
        self._tif = tif
        self._pages = levels
        self.level_dimensions = tuple((int(p.imagewidth), int(p.imagelength)) for p in levels)
        self.vendor = vendor
        self.properties = properties
        self.objective_power = objective_power
        self.mpp, self.mpp_source = _resolve_mpp(path, mpp_slide, mpp_override, mpp_missing_why)
        # The lock guards _cache (contents and LRU order) and _pins, nothing else.
        self._lock = threading.Lock()
        self._cache: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()
        self._pins: dict[tuple[int, int], int] = {}  # key -> readers copying from that segment now
        # per level: (segment width, segment height, segments across) and the direct JPEG decoder's arguments
        self._grid = [_segment_grid(page) for page in levels]
        self._jpeg = [_jpeg_args(page) for page in levels]
        self._fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))

    def _pin(self, level: int, index: int) -> np.ndarray:
        """Decoded segment (tile or strip) ``index`` of ``level`` as (h, w, samples) uint8, pinned in the cache
        until :meth:`_unpin`: its buffer is not reused while the caller reads it."""
        key = (level, index)
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
                self._pins[key] = self._pins.get(key, 0) + 1
                return cached
            buffer = self._spare_buffer(level)
        segment = self._decode(level, index, buffer)  # outside the lock: decoding runs with the GIL released
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None:  # another thread decoded it meanwhile: use that one (it may be pinned)
                segment = cached
            self._cache[key] = segment
            self._cache.move_to_end(key)
            self._pins[key] = self._pins.get(key, 0) + 1
            self._evict(keep=self._CACHE_SEGMENTS)
        return segment

    def _unpin(self, level: int, index: int) -> None:
        key = (level, index)
        with self._lock:
            left = self._pins[key] - 1
            if left:
                self._pins[key] = left
            else:
                del self._pins[key]

    def _evict(self, keep: int) -> np.ndarray | None:
        """Drop least recently used unpinned segments until at most ``keep`` remain (lock held); return the
        last dropped buffer, for reuse."""
        dropped, excess = None, len(self._cache) - keep
        if excess > 0:
            victims = []
            for key in self._cache:  # oldest first; pinned ones are few (one per reader thread at most)
                if key not in self._pins:
                    victims.append(key)
                    if len(victims) == excess:
                        break
            for key in victims:
                dropped = self._cache.pop(key)
        return dropped

    def _spare_buffer(self, level: int) -> np.ndarray | None:
        """A buffer to decode a JPEG tile of ``level`` into (lock held): an evicted segment's when the cache
        is full, else a new one; None when the level is not decoded into buffers."""
        jpeg = self._jpeg[level]
        if jpeg is None:
            return None
        shape = (*jpeg["shape"], 3)
        spare = self._evict(keep=self._CACHE_SEGMENTS - 1)
        if spare is not None and spare.shape == shape and spare.flags.c_contiguous:
            return spare
        return decode_buffer(shape)

    def _decode(self, level: int, index: int, buffer: np.ndarray | None = None) -> np.ndarray:
        page = self._pages[level]
        offset, count = int(page.dataoffsets[index]), int(page.databytecounts[index])
        if not count:
            raise SlideError(f"{self.path}: tile {index} of level {level} is missing from the file")
        data = os.pread(self._fd, count, offset)
        if len(data) != count:
            raise SlideError(f"{self.path}: tile {index} of level {level} is cut short; re-copy the slide")
        jpeg = self._jpeg[level]
        try:
            if jpeg is not None:
                import imagecodecs

                segment = imagecodecs.jpeg8_decode(data, out=buffer, **jpeg)
            else:
                segment, _, _ = page.decode(data, index, jpegtables=page.jpegtables)
        except Exception as exc:  # imagecodecs raises its own error classes per codec
            raise SlideError(f"{self.path}: tile {index} of level {level} cannot be decoded ({exc})") from exc
        if segment is None:
            raise SlideError(f"{self.path}: tile {index} of level {level} is missing from the file")
        segment = np.asarray(segment)
        return segment.reshape(segment.shape[-3:]) if segment.ndim > 3 else segment  # (1, h, w, s) -> (h, w, s)

    def _fill(self, level: int, x: int, y: int, out: np.ndarray) -> np.ndarray:
        """Write the pixels of ``level`` whose top-left is (x, y) (that level's frame) into ``out`` (h, w, 3)."""
        height, width = out.shape[:2]
        lw, lh = self.level_dimensions[level]
        seg_w, seg_h, across = self._grid[level]
        x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + width, lw), min(y + height, lh)
        if x0 != x or y0 != y or x1 != x + width or y1 != y + height:
            out[...] = 255  # runs past an edge: white glass there
        if x1 <= x0 or y1 <= y0:
            return out
        for ty in range(y0 // seg_h, (y1 - 1) // seg_h + 1):
            sy0 = ty * seg_h
            iy0, iy1 = max(y0, sy0), min(y1, sy0 + seg_h)
            for tx in range(x0 // seg_w, (x1 - 1) // seg_w + 1):
                index = ty * across + tx
                seg = self._pin(level, index)
                try:
                    sx0 = tx * seg_w
                    ix0, ix1 = max(x0, sx0), min(x1, sx0 + seg_w)
                    # a short last strip (or a smaller segment) leaves glass below/right of its pixels
                    ey1, ex1 = min(iy1, sy0 + seg.shape[0]), min(ix1, sx0 + seg.shape[1])
                    if ey1 < iy1 or ex1 < ix1:
                        out[iy0 - y:iy1 - y, ix0 - x:ix1 - x] = 255
                    out[iy0 - y:ey1 - y, ix0 - x:ex1 - x] = seg[iy0 - sy0:ey1 - sy0, ix0 - sx0:ex1 - sx0, :3]
                finally:
                    self._unpin(level, index)
        return out

    def _read_level(self, level, x, y, width, height):
        return self._fill(level, x, y, np.empty((height, width, 3), np.uint8))

    def read_tiles(self, xs, ys, tile_px: int, target_mpp: float, out: np.ndarray | None = None) -> np.ndarray:
        level, region_px, _ = self.tile_geometry(tile_px, target_mpp)
        if region_px != tile_px:  # tiles resized from another level's pixels: the generic path
            return super().read_tiles(xs, ys, tile_px, target_mpp, out)
        out = _tile_batch(len(xs), tile_px, out)
        ds = self.level_downsamples[level]
        lx = (np.asarray(xs, np.int64) // ds).astype(np.int64).tolist()  # = int(x0 // ds), as read_tile
        ly = (np.asarray(ys, np.int64) // ds).astype(np.int64).tolist()
        for i, (x, y) in enumerate(zip(lx, ly, strict=True)):
            self._fill(level, x, y, out[i])
        return out

    def close(self):
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self._tif.close()


def _segment_grid(page) -> tuple[int, int, int]:
    """(segment width, segment height, segments per row) of a tiled or stripped page."""
    width, height = int(page.imagewidth), int(page.imagelength)
    if page.is_tiled:
        seg_w, seg_h = int(page.tilewidth), int(page.tilelength)
    else:
        seg_w, seg_h = width, int(page.rowsperstrip or height)
    return seg_w, seg_h, math.ceil(width / seg_w)


def _jpeg_args(page) -> dict | None:
    """Arguments for ``imagecodecs.jpeg8_decode`` of this page's tiles, as tifffile would pass them; None when
    the page is not a tiled 8-bit JPEG page (tifffile's own decoder then handles it)."""
    from tifffile.tifffile import jpeg_decode_colorspace

    if not (page.is_tiled and int(page.compression) == 7 and int(page.bitspersample) == 8):
        return None
    colorspace, outcolorspace = jpeg_decode_colorspace(
        page.photometric, page.planarconfig, page.extrasamples, page.is_jfif)
    return {"tables": page.jpegtables, "colorspace": colorspace, "outcolorspace": outcolorspace,
            "shape": (int(page.tilelength), int(page.tilewidth))}


def decode_buffer(shape: tuple[int, ...]) -> np.ndarray:
    """An uninitialised uint8 array for libjpeg-turbo to decode into, starting 16 bytes past a 64-byte boundary.

    Into a 32-byte-aligned buffer the same JPEG tiles decode ~25 % slower (measured with imagecodecs 2026.3.6
    on AMD EPYC: 195 vs 255 us per 256 px tile, for every offset that is a multiple of 32 against every other);
    plain allocations land on either, by chance.
    """
    n = math.prod(shape)
    raw = np.empty(n + 64, np.uint8)
    start = (16 - raw.ctypes.data) % 64
    return raw[start:start + n].reshape(shape)


def _tile_batch(n: int, tile_px: int, out: np.ndarray | None) -> np.ndarray:
    if out is None:
        return np.empty((n, tile_px, tile_px, 3), np.uint8)
    if out.shape != (n, tile_px, tile_px, 3) or out.dtype != np.uint8:
        raise ValueError(f"out must be uint8 {(n, tile_px, tile_px, 3)}, got {out.dtype} {out.shape}")
    return out


def _resolve_mpp(path: Path, mpp_slide: float | None, mpp_override: float | None,
                 why_missing: str = "") -> tuple[float, str]:
    if mpp_override is not None:
        return check_mpp(mpp_override, path, "the `mpp` override"), "override"
    if mpp_slide is None:
        detail = f" ({why_missing})" if why_missing else ""
        raise SlideError(
            f"{path}: the slide has no MPP (microns per pixel) in its metadata{detail}; set the sample sheet's "
            "`mpp` column (or --mpp) to the scan's um/px for level 0 — it is never guessed"
        )
    return check_mpp(mpp_slide, path, "the slide metadata"), "slide"


# Largest relative difference between a pixel's width and height still taken as square.
SQUARE_PIXEL_TOLERANCE = 0.02
# OME-XML length units (UnitsLength) in micrometres; PhysicalSize without a unit is in um (the OME default).
OME_UNIT_UM = {"µm": 1.0, "um": 1.0, "nm": 1e-3, "Å": 1e-4, "mm": 1e3, "cm": 1e4, "m": 1e6}
TIFF_UNIT_INCH, TIFF_UNIT_CENTIMETER = 2, 3


def dpi_reason(dpi: float) -> str:
    return (f"its only resolution is {dpi:g} dots per inch ({25400.0 / dpi:g} um/px if that were the scan's "
            "pixel size), a print setting that image editors write, not a measured pixel size")


def _square(x_um: float, y_um: float) -> bool:
    return abs(x_um - y_um) <= SQUARE_PIXEL_TOLERANCE * max(x_um, y_um)


def ome_mpp(ome_xml: str) -> tuple[float | None, str]:
    """(level-0 um/px, or None and why) from the first OME ``Pixels`` element's PhysicalSizeX/Y and units."""
    pixels = re.search(r"<(?:\w+:)?Pixels\b[^>]*>", ome_xml)
    attrs = dict(re.findall(r'(\w+)="([^"]*)"', pixels.group(0))) if pixels else {}
    sizes = []
    for axis in "XY":
        if f"PhysicalSize{axis}" not in attrs:
            return None, f"OME PhysicalSize{axis} is missing"
        unit = attrs.get(f"PhysicalSize{axis}Unit", "µm")
        if unit not in OME_UNIT_UM:
            return None, f"OME PhysicalSize{axis}Unit {unit!r} is not a length unit"
        try:
            sizes.append(float(attrs[f"PhysicalSize{axis}"]) * OME_UNIT_UM[unit])
        except ValueError:
            return None, f"OME PhysicalSize{axis} {attrs[f'PhysicalSize{axis}']!r} is not a number"
    if not _square(*sizes):
        return None, f"OME pixels are not square ({sizes[0]:g} x {sizes[1]:g} um)"
    return sizes[0], ""


def resolution_tag_mpp(x_resolution: tuple[int, int], y_resolution: tuple[int, int] | None,
                       unit: int) -> tuple[float | None, str]:
    """(level-0 um/px, or None and why) from TIFF XResolution/YResolution (pixels per unit, as fractions).

    Only centimetres are a physical pixel size; inches (DPI) are refused, see :func:`dpi_reason`.
    """
    num, den = x_resolution
    if not (num and den and num / den > 1.0):
        return None, ""
    if unit == TIFF_UNIT_INCH:
        return None, dpi_reason(num / den)
    if unit != TIFF_UNIT_CENTIMETER:
        return None, ""
    x_um = 1e4 * den / num
    if y_resolution and y_resolution[0] and y_resolution[1]:
        y_um = 1e4 * y_resolution[1] / y_resolution[0]
        if not _square(x_um, y_um):
            return None, f"non-square pixels ({x_um:g} x {y_um:g} um)"
    return x_um, ""


def _tiff_mpp(tif) -> tuple[float | None, str]:
    """(level-0 um/px, or None and why) from OME physical sizes, an Aperio description or the resolution tags."""
    if tif.is_ome and tif.ome_metadata:
        return ome_mpp(tif.ome_metadata)
    page = tif.pages[0]
    m = re.search(r"\|MPP = ([0-9.]+)", page.description or "")
    if m:
        return float(m.group(1)), ""
    tags = page.tags
    if "XResolution" in tags and "ResolutionUnit" in tags:
        y = tags["YResolution"].value if "YResolution" in tags else None
        return resolution_tag_mpp(tags["XResolution"].value, y, int(tags["ResolutionUnit"].value))
    return None, ""


def _check_brightfield(path: Path, page) -> None:
    """Refuse fluorescence / multiplex / 16-bit / RGBA pages: only 8-bit RGB brightfield is in scope."""
    samples = int(page.samplesperpixel)
    photometric = getattr(page.photometric, "name", str(page.photometric))
    if page.dtype != np.uint8 or samples != 3 or photometric not in {"RGB", "YCBCR"}:
        raise SlideError(
            f"{path}: not an 8-bit RGB brightfield image ({samples} channel(s), {page.dtype}, {photometric}); "
            "fluorescence/multiplex and other non-brightfield images are out of scope — remove it from the sheet"
        )


def open_slide(path: str | os.PathLike, mpp: float | None = None, reader: str = "auto") -> Slide:
    """Open ``path`` as a :class:`Slide`.

    ``mpp`` overrides (or supplies a missing) level-0 um/px. ``reader`` is ``auto`` (OpenSlide for
    metadata, tifffile tiles for JPEG-tiled TIFF pixels), ``openslide`` or ``tifffile``.
    Raises :class:`SlideError` with a one-line reason for anything unusable.
    """
    p = Path(path)
    if not p.exists():
        raise SlideError(f"{p}: no such file; check the sample sheet's `path` column")
    if not p.is_file():
        raise SlideError(f"{p}: not a regular file (a directory or special file); point `path` at the slide file")
    if p.stat().st_size == 0:
        raise SlideError(f"{p}: empty file (0 bytes); re-export or re-copy the slide")
    with open(p, "rb") as fh:
        magic = fh.read(4)
    is_tiff = magic in _TIFF_MAGIC
    tif = None
    if is_tiff:
        tif = _open_tifffile(p)

    import openslide

    try:
        osr = openslide.OpenSlide(str(p))
    except openslide.OpenSlideUnsupportedFormatError:
        osr = None
    except (openslide.OpenSlideError, OSError) as exc:
        if tif is not None:
            tif.close()
        raise SlideError(f"{p}: OpenSlide cannot open it ({exc}); the file is damaged or unsupported") from exc

    if osr is None:
        if tif is None:
            raise SlideError(
                f"{p}: not a whole-slide image that OpenSlide or tifffile can read; check the file type"
            )
        try:
            return _tiff_slide(p, tif, mpp, vendor="ome-tiff" if tif.is_ome else "tiff")
        except BaseException:
            tif.close()
            raise

    if tif is not None:
        try:
            _check_brightfield(p, tif.pages[0])
        except SlideError:
            tif.close()
            osr.close()
            raise
    try:
        slide = OpenSlideSlide(p, osr, mpp)
    except SlideError:
        osr.close()
        if tif is not None:
            tif.close()
        raise
    if reader == "openslide" or tif is None:
        if tif is not None:
            tif.close()
        return slide
    fast = _fast_tiff_reader(p, tif, slide)
    if fast is None:
        tif.close()
        if reader == "tifffile":
            raise SlideError(f"{p}: no direct tile path for this file; use the OpenSlide reader")
        return slide
    slide.close()
    return fast


def _open_tifffile(p: Path):
    import tifffile

    _check_tiff_chain(p)
    try:
        tif = tifffile.TiffFile(str(p))
        _ = tif.pages[0].shape, tif.series  # force parsing of the first IFD and series
    except Exception as exc:  # tifffile raises many types for broken headers
        raise SlideError(f"{p}: TIFF structure is broken ({type(exc).__name__}: {exc}); re-export the slide") from exc
    size = p.stat().st_size
    for page in tif.pages:
        ends = [o + n for o, n in zip(page.dataoffsets, page.databytecounts, strict=False) if n]
        if ends and max(ends) > size:
            tif.close()
            raise SlideError(f"{p}: truncated file: image data runs to byte {max(ends)} of {size}; re-copy the slide")
    return tif


def _check_tiff_chain(p: Path, max_ifds: int = 4096) -> None:
    """Walk the IFD chain (classic and BigTIFF) and refuse files whose IFDs point past the end (truncated)."""
    import struct

    size = p.stat().st_size
    with open(p, "rb") as fh:
        head = fh.read(16)
        endian = "<" if head[:2] == b"II" else ">"
        big = struct.unpack(endian + "H", head[2:4])[0] == 43
        offset = struct.unpack(endian + ("Q" if big else "I"), head[8:16] if big else head[4:8])[0]
        count_fmt, entry_size, next_fmt = ("Q", 20, "Q") if big else ("H", 12, "I")
        seen = set()
        while offset:
            if offset in seen or len(seen) >= max_ifds:
                raise SlideError(f"{p}: TIFF directory chain loops; the file is damaged")
            seen.add(offset)
            count_size = struct.calcsize(count_fmt)
            if offset + count_size > size:
                raise SlideError(f"{p}: truncated file: a TIFF directory starts at byte {offset} of {size}; "
                                 "re-copy the slide")
            fh.seek(offset)
            (count,) = struct.unpack(endian + count_fmt, fh.read(count_size))
            next_at = offset + count_size + count * entry_size
            if next_at + struct.calcsize(next_fmt) > size:
                raise SlideError(f"{p}: truncated file: a TIFF directory runs past byte {size}; re-copy the slide")
            fh.seek(next_at)
            (offset,) = struct.unpack(endian + next_fmt, fh.read(struct.calcsize(next_fmt)))


def _tiff_slide(p: Path, tif, mpp_override: float | None, vendor: str) -> TiffSlide:
    series = tif.series[0]
    levels = [lvl.pages[0] if hasattr(lvl, "pages") else lvl for lvl in series.levels]
    levels = [getattr(page, "keyframe", page) for page in levels]
    _check_brightfield(p, levels[0])
    props = {"openslide.vendor": vendor}
    mpp_slide, why_missing = _tiff_mpp(tif)
    return TiffSlide(p, tif, levels, mpp_slide, mpp_override, vendor, props, mpp_missing_why=why_missing)


_FAST_COMPRESSIONS = {"JPEG", "NONE", "LZW", "ADOBE_DEFLATE", "DEFLATE", "WEBP"}


def _fast_tiff_reader(p: Path, tif, slide: OpenSlideSlide) -> TiffSlide | None:
    """A TiffSlide over the same pages when tifffile sees exactly OpenSlide's levels, else None."""
    if slide.vendor not in {"aperio", "generic-tiff"}:
        return None
    # Match each OpenSlide level to the tiled page of the same size (thumbnail/label/macro pages are
    # stripped or differently sized, so they never match).
    by_size = {}
    for page in tif.pages:
        if page.is_tiled and (page.imagewidth, page.imagelength) not in by_size:
            by_size[(int(page.imagewidth), int(page.imagelength))] = page
    pages = [by_size.get(dims) for dims in slide.level_dimensions]
    if any(pg is None or pg.compression.name not in _FAST_COMPRESSIONS for pg in pages):
        return None
    override = slide.mpp if slide.mpp_source == "override" else None
    return TiffSlide(p, tif, pages, slide.mpp, override, slide.vendor, slide.properties, slide.objective_power)
