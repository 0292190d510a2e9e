"""Tissue and pen-ink detection on a low-resolution RGB thumbnail (pure numpy and OpenCV; no slide I/O).

Works on H&E and on IHC: pale haematoxylin-only tissue is still coloured (saturation) and absorbs light
(optical density), while glass is bright and grey, and pen ink has hues tissue never has. Pale tissue (loose and
myxoid stroma) is told from glass by its colour relative to the slide's own glass; fat, whose cells are as clear
as glass, is kept as the space enclosed by its network of thin stained membranes.
"""

from __future__ import annotations

import numpy as np

from pipeline import filters


def optical_density(rgb: np.ndarray) -> np.ndarray:
    """Mean optical density over R, G, B (Beer-Lambert, background 255): glass ~0.02, dense tissue > 0.5."""
    r, g, b = _channels(_OD_LUT[rgb] if rgb.ndim != 3 else filters.lookup(rgb, _OD_LUT))
    return (r + g + b) / np.float32(3)


def saturation(rgb: np.ndarray) -> np.ndarray:
    """HSV saturation in [0, 1]."""
    r, g, b = _channels(rgb)
    vmax = np.maximum(np.maximum(r, g), b).astype(np.float32)
    vmin = np.minimum(np.minimum(r, g), b).astype(np.float32)
    return np.where(vmax > 0, (vmax - vmin) / np.maximum(vmax, 1.0), 0.0)


def pen_ink_mask(rgb: np.ndarray) -> np.ndarray:
    """Green, blue and black marker ink: colours H&E/IHC stains do not produce."""
    r, g, b = (c.astype(np.int16) for c in _channels(rgb))
    green = (g - r > 20) & (g >= b - 10)
    blue = (b > 90) & (r < 0.35 * b) & (g < 0.85 * b)
    black = np.maximum(np.maximum(r, g), b) < 50
    return green | blue | black


def glass_colour(rgb: np.ndarray, fallback: float = 242.0) -> np.ndarray:
    """The slide's glass (background) RGB: the median of its brightest 20 % of pixels (every 4th row and column;
    a slide covered with tissue, whose brightest pixels are darker than 180, gets ``fallback`` grey)."""
    sample = rgb[::4, ::4].reshape(-1, 3)
    brightness = sample.astype(np.int32).sum(axis=-1)
    bright = sample[brightness >= np.percentile(brightness, 80)]
    glass = np.median(bright, axis=0).astype(np.float32)
    return glass if glass.min() >= 180 else np.full(3, fallback, np.float32)


# Pale tissue is light: its mean optical density stays below this (myxoid stroma ~0.05, fat membranes on a
# thumbnail < 0.2); darker pixels count as tissue only when stained (saturated).
PALE_OD_MAX = 0.25
# Stains absorb some colours more than others: the spread of a tissue pixel's optical density over R, G, B is at
# least this share of its mean (H&E pink ~1.4, nuclei ~0.9, DAB ~1.0, pale myxoid stroma > 0.7); grey shadows,
# dark slide edges and dust darken all channels alike (a dark grey with a bluish cast: ~0.05).
TINT_MIN = 0.3
_OD_LUT = -np.log10((np.arange(256, dtype=np.float32) + 1.0) / 256.0)  # optical density of each 8-bit value


def glass_relative_od(rgb: np.ndarray, glass: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(spread, mean)`` of the optical density over R, G, B relative to ``glass``: the spread (max - min) is ~0
    for glass, and small for grey dust, shadows and dark edges, which darken all channels alike; stains absorb
    some colours more than others."""
    glass_od = _OD_LUT[np.clip(np.round(glass), 0, 255).astype(np.intp)]
    r, g, b = _channels(_OD_LUT[rgb] if rgb.ndim != 3 else filters.lookup(rgb, _OD_LUT))
    r, g, b = r - glass_od[0], g - glass_od[1], b - glass_od[2]
    spread = np.maximum(np.maximum(r, g), b) - np.minimum(np.minimum(r, g), b)
    return spread, (r + g + b) / np.float32(3)


def _channels(image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The three channels of an (..., 3) array, each contiguous (a reduction along a last axis of 3 is slow)."""
    return tuple(np.ascontiguousarray(image[..., i]) for i in range(3))


def _disk_closing(mask: np.ndarray, radius_px: float) -> np.ndarray:
    """Binary closing with a Euclidean disk of ``radius_px`` (two distance transforms: fast for any radius)."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if radius_px < 1 or not len(rows):
        return mask
    # only the tissue's bounding box: glass beyond it (and beyond the image edge) is never closed
    pad = int(np.ceil(radius_px)) + 1
    box = np.pad(mask[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1], pad)
    grown = filters.edt(~box) <= radius_px
    out = mask.copy()
    out[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1] = (filters.edt(grown) > radius_px)[pad:-pad, pad:-pad]
    return out


def tissue_mask(
    rgb: np.ndarray,
    mpp: float,
    saturation_min: float = 0.07,
    optical_density_min: float = 0.08,
    min_object_um2: float = 2500.0,
    min_hole_um2: float = 20000.0,
    pale_chroma_min: float = 0.012,
    membrane_closing_um: float = 35.0,
    pen_margin_um: float = 12.0,
) -> np.ndarray:
    """Boolean tissue mask of a thumbnail whose pixels are ``mpp`` um wide.

    1. Stained: saturation >= ``saturation_min`` and mean optical density >= ``optical_density_min``; or pale:
       the optical-density spread over R, G, B relative to the slide's glass (:func:`glass_relative_od`) at least
       ``pale_chroma_min`` and mean optical density below :data:`PALE_OD_MAX` (loose and myxoid stroma, pale fat
       membranes). Either way tinted (spread >= :data:`TINT_MIN` x mean): not grey shadows, dark edges or dust.
       Pen ink is never tissue, nor are pale pixels within ``pen_margin_um`` of ink (the ink's faint halo).
    2. Fragments below ``min_object_um2`` (dust, specks, glass noise) are dropped before anything is joined.
    3. Closing with a disk of radius ``membrane_closing_um``: joins broken membranes and seals the fat cells cut
       open at the tissue's edge. Tissue pieces further apart than twice this radius stay separate; the closing
       does not grow tissue outwards (it only fills gaps and bays narrower than twice the radius).
    4. Holes below ``min_hole_um2`` are filled: fat cells (adipocytes 50-150 um across, a 150 um cell is
       ~17,700 um2), gland lumens, vessels. Larger glass inside tissue and all glass joined to the outside stay out.
    Then fragments below ``min_object_um2`` are dropped again.
    """
    if rgb.ndim != 3 or rgb.shape[-1] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB array, got {rgb.shape} {rgb.dtype}")
    if not mpp > 0:
        raise ValueError(f"mpp must be > 0, got {mpp}")
    pen = pen_ink_mask(rgb)
    spread, mean_od = glass_relative_od(rgb, glass_colour(rgb))
    stained = (saturation(rgb) >= saturation_min) & (optical_density(rgb) >= optical_density_min)
    pale = (spread >= pale_chroma_min) & (mean_od < PALE_OD_MAX)
    if pen.any() and pen_margin_um / mpp >= 1:
        pale &= filters.edt(~pen) > pen_margin_um / mpp
    mask = (stained | pale) & (spread >= TINT_MIN * mean_od) & ~pen
    px_area_um2 = mpp * mpp
    min_obj_px = int(min_object_um2 / px_area_um2)
    if min_obj_px > 0:
        mask = filters.remove_small(mask, min_obj_px)
    mask = _disk_closing(mask, membrane_closing_um / mpp) & ~pen
    min_hole_px = int(min_hole_um2 / px_area_um2)
    if min_hole_px > 0:
        mask = ~filters.remove_small(~mask, min_hole_px)  # holes: small components of the glass
    if min_obj_px > 0:
        mask = filters.remove_small(mask, min_obj_px)
    return mask
