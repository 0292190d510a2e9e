"""Whole-slide image access: :func:`open_slide`, the one factory, over two readers of one interface
(:class:`pipeline.slides.slide.Slide`).

* :class:`OpenSlideSlide` reads everything OpenSlide 4 reads (SVS, NDPI, MRXS, SCN, DICOM, generic tiled
  TIFF, ...). OpenSlide stays the authority on metadata (vendor, MPP, levels) for those files.
* :class:`pipeline.slides.tiff_slide.TiffSlide` reads TIFF-family files directly with tifffile +
  imagecodecs, decoding only the tiles (or strips) a region needs. It serves OME-TIFF and plain RGB TIFF,
  which OpenSlide cannot open, and is the fast pixel path for JPEG-tiled SVS / generic TIFF that OpenSlide
  also opens.

:func:`open_slide` picks the reader, checks the file is a brightfield RGB image, resolves the
microns-per-pixel (MPP, :mod:`pipeline.slides.resolution`) and refuses anything it cannot use with a
one-line :class:`SlideError`.

All coordinates are level-0 pixels (top-left origin) unless a name says otherwise; all images are
``(height, width, 3)`` uint8 RGB arrays; transparent or out-of-bounds areas read as white glass.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np

from pipeline.errors import SlideError
from pipeline.slides.resolution import openslide_mpp, resolve_mpp, tiff_mpp
from pipeline.slides.slide import Slide, rgba_to_rgb
from pipeline.slides.tiff_slide import TiffSlide

_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


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
        mpp_slide, why_missing = openslide_mpp(self.properties)
        self.mpp, self.mpp_source = resolve_mpp(path, mpp_slide, mpp_override, why_missing)
        self._lock = threading.Lock()

    def _read_level(self, level, x, y, width, height):
        ds = self.level_downsamples[level]
        location = (int(round(x * ds)), int(round(y * ds)))
        import openslide

        try:
            rgba = np.asarray(self._osr.read_region(location, level, (width, height)))
        except openslide.OpenSlideError as exc:
            raise SlideError(f"{self.path}: pixel data cannot be decoded ({exc}); the file is damaged") from exc
        return rgba_to_rgb(rgba)

    def close(self):
        self._osr.close()


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
    mpp_slide, why_missing = tiff_mpp(tif)
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
