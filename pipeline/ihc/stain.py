"""Colour deconvolution of brightfield RGB into stain concentrations (pure numpy; no slide I/O).

Model (Beer-Lambert, Ruifrok & Johnston 2001): the optical density of a pixel in channel c is
``OD_c = -log10(I_c / I0_c)`` with ``I0`` the brightness of empty glass, and OD is a non-negative mix of
per-stain OD vectors: ``OD = sum_s C_s * v_s``. With the stain vectors ``v_s`` normalised to unit length,
the concentration ``C_s`` is in OD units along that stain, which is the convention of QuPath and of the
ImageJ Colour Deconvolution plugin, so DAB OD thresholds (0.2 / 0.4 / 0.6 ...) mean the same there and here.

Stain vectors:
* ``HDAB_REFERENCE``: haematoxylin and DAB from Ruifrok & Johnston (the "H DAB" vectors of ImageJ's
  Colour Deconvolution and of scikit-image's ``rgb_from_hdx``), third vector = normalised cross product.
* ``HED_REFERENCE``: haematoxylin, eosin, DAB (scikit-image ``rgb_from_hed``), used by the stain check to
  tell eosin from DAB.
* :func:`estimate_hdab_vectors`: per-slide estimate from the slide's own tissue pixels (Macenko et al.
  2009 plane + extreme angles), falling back to the reference when the estimate is implausible.

Public: :func:`rgb_to_od`, :func:`deconvolve` / :func:`hdab` (one implementation: :class:`Deconvolver`, which
keeps a slide's matrix and glass colour), :func:`compose` (back to RGB, for pictures), :func:`estimate_background`,
:func:`estimate_hdab_vectors` and :func:`intensity_classes` (DAB OD -> 0 / 1+ / 2+ / 3+).
"""

from __future__ import annotations

import numpy as np

from pipeline import opencv

# Ruifrok & Johnston (2001) OD vectors (rows: stains; columns: R, G, B absorption).
_H = (0.650, 0.704, 0.286)
_DAB = (0.268, 0.570, 0.776)
_E = (0.072, 0.990, 0.105)
# Darkest OD a uint8 pixel can reach against a 255 background (1/256): keeps log finite.
OD_MAX = float(np.log10(256.0))
# An estimated stain vector further than this from the reference is rejected (scanner colour shifts
# measured on the OS-2 NDPI/VSI pair move the vectors by a few degrees; a 20+ degree swing means the
# estimate latched onto something else: pen, pigment, a counterstain-free slide).
MAX_VECTOR_SHIFT_DEG = 20.0


def _unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v)


def stain_matrix(*vectors) -> np.ndarray:
    """A 3x3 matrix of unit stain OD vectors (rows); with two vectors the third is their cross product."""
    rows = [_unit(v) for v in vectors]
    if len(rows) == 2:
        third = np.cross(rows[0], rows[1])
        if np.linalg.norm(third) < 1e-6:
            raise ValueError("stain vectors are parallel")
        rows.append(_unit(third))  # orthogonal residual: H and DAB become the least-squares fit
    if len(rows) != 3:
        raise ValueError(f"need 2 or 3 stain vectors, got {len(rows)}")
    m = np.vstack(rows)
    if abs(np.linalg.det(m)) < 1e-6:
        raise ValueError("stain vectors are linearly dependent")
    return m


HDAB_REFERENCE = stain_matrix(_H, _DAB)
HED_REFERENCE = stain_matrix(_H, _E, _DAB)


def estimate_background(rgb: np.ndarray, quantile: float = 0.98, glass_min: float = 200.0,
                        glass_max_chroma: float = 20.0) -> np.ndarray:
    """Brightness of empty glass per channel (the ``I0`` of Beer-Lambert), from a thumbnail or tile.

    The median colour of the brightest ``1 - quantile`` of pixels, accepted as glass when it is bright
    (every channel >= ``glass_min``) and near-grey (max - min channel <= ``glass_max_chroma``); otherwise
    (no glass in view, e.g. an image filled with tissue) white (255, 255, 255). Scanners differ here: the
    OS-2 NDPI glass is (228, 226, 236), the VSI glass (216, 216, 216); dividing by each scanner's own
    glass removes that offset before any OD threshold applies.
    """
    _check_rgb(rgb)
    flat = rgb.reshape(-1, 3)
    brightness = flat.sum(axis=1, dtype=np.int32)  # 0..765: order statistics from a histogram, not a sort
    cut = _histogram_quantile(np.bincount(brightness, minlength=766), quantile)
    bright = flat[brightness >= cut]
    glass = np.array([_histogram_quantile(np.bincount(bright[:, c], minlength=256), 0.5) for c in range(3)])
    if glass.min() >= glass_min and glass.max() - glass.min() <= glass_max_chroma:
        return glass
    return np.full(3, 255.0)


def _histogram_quantile(counts: np.ndarray, q: float) -> float:
    """``np.quantile(values, q)`` (linear interpolation between order statistics) of integer values given as
    ``counts`` per value 0, 1, 2...: exact, and linear in the number of distinct values, not of values."""
    n = int(counts.sum())
    position = q * (n - 1)
    below, frac = int(np.floor(position)), position - np.floor(position)
    cumulative = np.cumsum(counts)
    low = int(np.searchsorted(cumulative, below, side="right"))  # value of order statistic ``below`` (0-based)
    high = int(np.searchsorted(cumulative, min(below + 1, n - 1), side="right"))
    return float(low + (high - low) * frac)


def rgb_to_od(rgb: np.ndarray, background=255.0) -> np.ndarray:
    """Per-channel optical density ``-log10(I / I0)`` as float32, clipped to [0, OD_MAX]."""
    _check_rgb(rgb)
    i0 = np.broadcast_to(np.asarray(background, dtype=np.float32), (3,))
    od = -np.log10((rgb.astype(np.float32) + 1.0) / (i0 + 1.0))
    return np.clip(od, 0.0, OD_MAX)


def deconvolve(rgb: np.ndarray, matrix: np.ndarray = HDAB_REFERENCE, background=255.0) -> np.ndarray:
    """Stain concentrations (OD units along each unit stain vector), float32 ``(..., 3)`` in ``matrix`` order.

    Negative concentrations (noise, colours outside the stain model) are clipped to 0.
    """
    return Deconvolver(matrix, np.broadcast_to(np.asarray(background, np.float64), (3,))).concentrations(rgb)[0]


def hdab(rgb: np.ndarray, matrix: np.ndarray = HDAB_REFERENCE, background=255.0) -> tuple[np.ndarray, np.ndarray]:
    """Haematoxylin and DAB OD images (float32, same height/width as ``rgb``)."""
    conc = deconvolve(rgb, matrix, background)
    return conc[..., 0], conc[..., 1]


def compose(h_od: np.ndarray, dab_od: np.ndarray, matrix: np.ndarray = HDAB_REFERENCE,
            background=255.0) -> np.ndarray:
    """Inverse of :func:`hdab`: an RGB uint8 image with the given H and DAB ODs (tests, contact sheets)."""
    conc = np.stack([h_od, dab_od, np.zeros_like(h_od)], axis=-1).astype(np.float64)
    od = conc @ matrix
    i0 = np.broadcast_to(np.asarray(background, dtype=np.float64), (3,))
    rgb = (i0 + 1.0) * 10.0 ** (-od) - 1.0
    return np.clip(np.round(rgb), 0, 255).astype(np.uint8)


def angle_deg(a, b) -> float:
    cos = float(np.clip(np.dot(_unit(a), _unit(b)), -1.0, 1.0))
    return float(np.degrees(np.arccos(cos)))


def estimate_hdab_vectors(rgb: np.ndarray, background=255.0, od_min: float = 0.15, percentile: float = 1.0,
                          min_pixels: int = 500) -> tuple[np.ndarray, dict]:
    """Per-image H and DAB vectors by the Macenko method; returns ``(matrix, info)``.

    Tissue pixels (OD norm >= ``od_min``) are projected on the plane of their two main OD directions; the
    directions at the ``percentile`` and ``100 - percentile`` angles are the two stains, the one nearer the
    reference haematoxylin being H. The reference matrix is returned (``info["used"] == "reference"``)
    when there are too few stained pixels, when the slide has essentially one stain (a DAB-negative slide
    has no DAB direction to find) or when a vector moves more than ``MAX_VECTOR_SHIFT_DEG``.
    """
    od = rgb_to_od(rgb, background).reshape(-1, 3).astype(np.float64)
    od = od[np.linalg.norm(od, axis=1) >= od_min]
    info: dict = {"used": "reference", "pixels": int(len(od))}
    if len(od) < min_pixels:
        info["reason"] = f"only {len(od)} stained pixels (< {min_pixels})"
        return HDAB_REFERENCE, info
    _, _, vt = np.linalg.svd(od - 0.0, full_matrices=False)
    plane = vt[:2]
    plane = np.where(plane.sum(axis=1, keepdims=True) < 0, -plane, plane)  # point into positive OD
    proj = od @ plane.T
    phi = np.arctan2(proj[:, 1], proj[:, 0])
    lo, hi = np.percentile(phi, [percentile, 100.0 - percentile])
    v1 = _unit(np.array([np.cos(lo), np.sin(lo)]) @ plane)
    v2 = _unit(np.array([np.cos(hi), np.sin(hi)]) @ plane)
    if angle_deg(v1, _H) + angle_deg(v2, _DAB) > angle_deg(v2, _H) + angle_deg(v1, _DAB):
        v1, v2 = v2, v1
    shift_h, shift_dab = angle_deg(v1, _H), angle_deg(v2, _DAB)
    info.update(h_vector=[round(float(x), 4) for x in v1], dab_vector=[round(float(x), 4) for x in v2],
                shift_h_deg=round(shift_h, 2), shift_dab_deg=round(shift_dab, 2))
    if min(v1.min(), v2.min()) < -0.05 or max(shift_h, shift_dab) > MAX_VECTOR_SHIFT_DEG:
        info["reason"] = (f"estimate moved {shift_h:.1f} deg (H) / {shift_dab:.1f} deg (DAB) from the reference "
                          f"(limit {MAX_VECTOR_SHIFT_DEG:g})")
        return HDAB_REFERENCE, info
    if angle_deg(v1, v2) < 10.0:
        info["reason"] = "a single stain direction (no separate DAB signal)"
        return HDAB_REFERENCE, info
    info["used"] = "estimated"
    return stain_matrix(np.clip(v1, 0, None), np.clip(v2, 0, None)), info


def _check_rgb(rgb: np.ndarray) -> None:
    if rgb.ndim < 2 or rgb.shape[-1] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an (..., 3) uint8 RGB array, got {rgb.shape} {rgb.dtype}")


class Deconvolver:
    """Stain matrix + glass colour for one slide (estimated once, applied to every tile)."""

    def __init__(self, matrix: np.ndarray = HDAB_REFERENCE, background=(255.0, 255.0, 255.0)):
        self.matrix = np.asarray(matrix, np.float64)
        self.background = tuple(float(v) for v in background)
        self._inverse = np.linalg.inv(self.matrix).astype(np.float32)
        # rgb_to_od of every uint8 level per channel: a tile's OD is then a table look-up (same float32 values)
        levels = np.repeat(np.arange(256, dtype=np.uint8)[:, None], 3, axis=1)
        self._od_table = rgb_to_od(levels, self.background).reshape(1, 256, 3)

    def __call__(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(H OD, DAB OD, per-channel RGB OD) of an RGB tile."""
        conc, od = self.concentrations(rgb)
        # contiguous planes: every later step (sums, smoothing, per-nucleus means) reads them whole
        return np.ascontiguousarray(conc[..., 0]), np.ascontiguousarray(conc[..., 1]), od

    def concentrations(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(stain concentrations ``(..., 3)`` in matrix order, clipped at 0; per-channel RGB OD), float32."""
        cv2 = opencv.cv2()
        _check_rgb(rgb)
        shape = rgb.shape
        flat = np.ascontiguousarray(rgb).reshape(1, -1, 3)  # cv2 takes a 2-D image of 3 channels
        od = cv2.LUT(flat, self._od_table)
        conc = cv2.transform(od, self._inverse.T)  # per pixel: inverse.T @ od = od @ inverse
        np.maximum(conc, 0.0, out=conc)
        return conc.reshape(shape), od.reshape(shape)


def intensity_classes(dab_od: np.ndarray, thresholds=(0.2, 0.4, 0.6)) -> np.ndarray:
    """DAB class per pixel (uint8 0..3): 0 below thresholds[0], 1+ from it, 2+ from thresholds[1], 3+ from [2]."""
    return np.searchsorted(np.asarray(thresholds, np.float32), dab_od, side="right").astype(np.uint8)
