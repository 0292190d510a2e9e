"""Deep-zoom tiles of a slide for the browser viewer: OpenSlide's ``DeepZoomGenerator`` over the project's reader.

``DeepZoomGenerator`` wants an OpenSlide-like object. :class:`ReaderAdapter` gives it one on top of any
:class:`pipeline.slides.reader.Slide` (OpenSlide or the tifffile reader), so OME-TIFF and plain TIFF slides zoom as SVS
does, and the fast tile path of the reader serves the viewer too. The adapter exposes only the pyramid (level
sizes and downsamples) and the allowlisted properties of :func:`pipeline.slides.reader.safe_properties`: the generator
never sees a label, macro or identifying property, and cannot pass one on.

Deep-zoom addresses are ``(level, column, row)`` with level 0 the 1 x 1 px image and the last level the full
resolution (the Deep Zoom convention, not OpenSlide's). :class:`TileSource` checks an address before any pixel is
read (:class:`BadTile`), renders the tile as JPEG and keeps recent tiles in an in-memory LRU cache bounded in
bytes, shared by all slides of one server.
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict

from pipeline.slides.slide import Slide, safe_properties

TILE_SIZE_PX = 254  # + 2 x overlap = 256, a power of two (the generator's advice)
OVERLAP_PX = 1
JPEG_QUALITY = 80
CACHE_BYTES = 256 << 20  # tiles kept across all slides (~20 kB each: about 13,000 tiles)


class BadTile(ValueError):
    """A deep-zoom address outside the slide's pyramid (level, column or row out of range)."""


class ReaderAdapter:
    """An OpenSlide-like view of a :class:`Slide`: what ``DeepZoomGenerator`` reads, and nothing else.

    ``read_region`` takes the top-left pixel in the level-0 frame, a slide level and a size in that level's
    pixels, as OpenSlide's does, and returns an opaque RGBA image (the reader already composites onto white).
    """

    def __init__(self, slide: Slide):
        self._slide = slide
        self.dimensions = slide.dimensions
        self.level_count = slide.level_count
        self.level_dimensions = slide.level_dimensions
        self.level_downsamples = slide.level_downsamples
        self.properties = safe_properties(slide.properties)

    def get_best_level_for_downsample(self, downsample: float) -> int:
        """The level OpenSlide would pick: the last whose downsample is not above ``downsample``."""
        best = 0
        for level, ds in enumerate(self.level_downsamples):
            if ds <= downsample:
                best = level
        return best

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]):
        from PIL import Image

        rgb = self._slide.read_region(location, level, size)
        image = Image.fromarray(rgb, "RGB")
        image.putalpha(255)
        return image


class TileCache:
    """A thread-safe LRU of encoded tiles, bounded by their total size in bytes."""

    def __init__(self, max_bytes: int = CACHE_BYTES):
        self.max_bytes = max_bytes
        self._items: OrderedDict[tuple, bytes] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get(self, key: tuple) -> bytes | None:
        with self._lock:
            data = self._items.get(key)
            if data is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return data

    def put(self, key: tuple, data: bytes) -> None:
        with self._lock:
            if key in self._items:
                return
            self._items[key] = data
            self._bytes += len(data)
            while self._bytes > self.max_bytes and self._items:
                _, old = self._items.popitem(last=False)
                self._bytes -= len(old)


class TileSource:
    """JPEG deep-zoom tiles of one open slide, cached in ``cache`` under ``key`` (the slide id)."""

    def __init__(self, slide: Slide, key: str, cache: TileCache, quality: int = JPEG_QUALITY):
        from openslide.deepzoom import DeepZoomGenerator

        self.slide = slide
        self.key = key
        self.cache = cache
        self.quality = quality
        self.generator = DeepZoomGenerator(ReaderAdapter(slide), tile_size=TILE_SIZE_PX, overlap=OVERLAP_PX,
                                           limit_bounds=False)

    def dzi(self) -> str:
        """The Deep Zoom descriptor (XML): tile size, overlap, format and level-0 size; nothing else."""
        return self.generator.get_dzi("jpeg")

    def check(self, level: int, col: int, row: int) -> None:
        """Raise :class:`BadTile` unless (level, col, row) addresses a tile of this slide."""
        if not 0 <= level < self.generator.level_count:
            raise BadTile(f"level {level} outside 0-{self.generator.level_count - 1}")
        cols, rows = self.generator.level_tiles[level]
        if not (0 <= col < cols and 0 <= row < rows):
            raise BadTile(f"tile {col}_{row} outside the {cols} x {rows} tiles of level {level}")

    def tile_size(self, level: int, col: int, row: int) -> tuple[int, int]:
        """(width, height) in pixels of the JPEG at this address."""
        self.check(level, col, row)
        return self.generator.get_tile_dimensions(level, (col, row))

    def tile(self, level: int, col: int, row: int) -> bytes:
        """The JPEG bytes of a tile: from the cache, or read, resized and encoded (then cached)."""
        self.check(level, col, row)
        key = (self.key, level, col, row)
        data = self.cache.get(key)
        if data is None:
            image = self.generator.get_tile(level, (col, row))
            buf = io.BytesIO()
            image.save(buf, format="JPEG", quality=self.quality)
            data = buf.getvalue()
            self.cache.put(key, data)
        return data

    def info(self) -> dict:
        """What the viewer needs to know about the slide: sizes, um/px and pyramid. No property, no file name."""
        slide = self.slide
        return {"width_px": slide.dimensions[0], "height_px": slide.dimensions[1], "mpp": round(slide.mpp, 6),
                "level_count": slide.level_count, "level_dimensions": [list(d) for d in slide.level_dimensions],
                "dz_levels": self.generator.level_count, "dz_tile_px": TILE_SIZE_PX, "dz_overlap_px": OVERLAP_PX}


def parse_tile_name(level_text: str, name: str) -> tuple[int, int, int]:
    """(level, col, row) from the URL parts ``<level>`` and ``<col>_<row>.jpeg``; :class:`BadTile` otherwise.

    Only plain decimal digits are accepted (no sign, no spaces, no leading ``+``, at most 6 digits), so
    negative, huge or non-numeric coordinates never reach the generator.
    """
    stem, dot, ext = name.partition(".")
    col_text, _, row_text = stem.partition("_")
    parts = (level_text, col_text, row_text)
    if dot != "." or ext not in {"jpeg", "jpg"} or not all(p.isascii() and p.isdigit() and len(p) <= 6
                                                           for p in parts):
        raise BadTile(f"not a tile address: {level_text!r}/{name!r}")
    return int(level_text), int(col_text), int(row_text)
