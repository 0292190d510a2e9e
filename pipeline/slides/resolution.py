"""A slide's microns per pixel (um/px, MPP): where it comes from and whether it can serve an analysis.

* :func:`check_mpp` - plausible or a one-line :class:`SlideError`; :func:`resolve_mpp` - the sample sheet's
  override, else the slide's own, never guessed;
* :func:`ome_mpp` (OME-XML PhysicalSize, unit and squareness checked), :func:`resolution_tag_mpp` (TIFF
  resolution tags: centimetre units only; DPI/inch is print size, not a pixel size) and the OpenSlide
  properties (:func:`openslide_mpp`);
* :func:`resolution_problem` / :func:`check_resolution` - a slide coarser than an analysis needs is refused,
  never enlarged.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.errors import SlideError

if TYPE_CHECKING:
    from pipeline.slides.slide import Slide

# A usable MPP lies in this range (um per level-0 pixel): 100x objectives give ~0.1, overview scans ~10-20.
MPP_MIN_UM = 0.05
MPP_MAX_UM = 50.0
# A slide may be coarser than the um/px an analysis needs by at most this fraction; it is then resized by at
# most 10 %, about the spread of pixel sizes between scanners sold as the same magnification. A coarser slide
# is refused (:func:`resolution_problem`): enlarging it invents no detail, and its tiles would be labelled
# with a resolution they do not have.
MPP_COARSER_TOLERANCE = 0.10
TIFF_UNIT_INCH, TIFF_UNIT_CENTIMETER = 2, 3


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


def openslide_mpp(properties: dict[str, str]) -> tuple[float | None, str]:
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


def resolve_mpp(path: Path, mpp_slide: float | None, mpp_override: float | None,
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


def tiff_mpp(tif) -> tuple[float | None, str]:
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
