"""Tissue and pen-ink detection on a low-resolution RGB thumbnail (pure numpy; no slide I/O).

Works on H&E and on IHC: pale haematoxylin-only tissue is still coloured (saturation) and absorbs light
(optical density), while glass is bright and grey, and pen ink has hues tissue never has.
"""

from __future__ import annotations

import numpy as np


def optical_density(rgb: np.ndarray) -> np.ndarray:
    """Mean optical density over R, G, B (Beer-Lambert, background 255): glass ~0.02, dense tissue > 0.5."""
    od = -np.log10((rgb.astype(np.float32) + 1.0) / 256.0)
    return od.mean(axis=-1)


def saturation(rgb: np.ndarray) -> np.ndarray:
    """HSV saturation in [0, 1]."""
    rgb = rgb.astype(np.float32)
    vmax, vmin = rgb.max(axis=-1), rgb.min(axis=-1)
    return np.where(vmax > 0, (vmax - vmin) / np.maximum(vmax, 1.0), 0.0)


def pen_ink_mask(rgb: np.ndarray) -> np.ndarray:
    """Green, blue and black marker ink: colours H&E/IHC stains do not produce."""
    r, g, b = (rgb[..., i].astype(np.int16) for i in range(3))
    green = (g - r > 20) & (g >= b - 10)
    blue = (b > 90) & (r < 0.35 * b) & (g < 0.85 * b)
    black = rgb.max(axis=-1) < 50
    return green | blue | black


def tissue_mask(
    rgb: np.ndarray,
    mpp: float,
    saturation_min: float = 0.07,
    optical_density_min: float = 0.08,
    min_object_um2: float = 2500.0,
    min_hole_um2: float = 2500.0,
) -> np.ndarray:
    """Boolean tissue mask of a thumbnail whose pixels are ``mpp`` um wide.

    Tissue = stained (saturation and optical density above thresholds) and not pen ink, then
    closed over ~20 um (adipocyte membranes, gland lumens), fragments below ``min_object_um2`` dropped
    and holes below ``min_hole_um2`` filled.
    """
    if rgb.ndim != 3 or rgb.shape[-1] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB array, got {rgb.shape} {rgb.dtype}")
    if not mpp > 0:
        raise ValueError(f"mpp must be > 0, got {mpp}")
    from skimage import morphology

    stained = (saturation(rgb) >= saturation_min) & (optical_density(rgb) >= optical_density_min)
    mask = stained & ~pen_ink_mask(rgb)
    radius_px = int(round(10.0 / mpp))
    if radius_px >= 1:
        mask = morphology.closing(mask, morphology.disk(radius_px)) & ~pen_ink_mask(rgb)
    px_area_um2 = mpp * mpp
    min_obj_px = int(min_object_um2 / px_area_um2)
    if min_obj_px > 0:
        mask = morphology.remove_small_objects(mask, max_size=min_obj_px)
    min_hole_px = int(min_hole_um2 / px_area_um2)
    if min_hole_px > 0:
        mask = morphology.remove_small_holes(mask, max_size=min_hole_px)
    return mask
