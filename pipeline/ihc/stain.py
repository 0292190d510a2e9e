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
"""

from __future__ import annotations

import numpy as np

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
    flat = rgb.reshape(-1, 3).astype(np.float64)
    brightness = flat.sum(axis=1)
    cut = np.quantile(brightness, quantile)
    glass = np.median(flat[brightness >= cut], axis=0)
    if glass.min() >= glass_min and glass.max() - glass.min() <= glass_max_chroma:
        return glass
    return np.full(3, 255.0)


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
    od = rgb_to_od(rgb, background)
    conc = od @ np.linalg.inv(matrix).astype(np.float32)
    return np.maximum(conc, 0.0)


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


# ---- stain check: is this slide what the sample sheet says it is? ------------------------------------------
# Reference colours (unit OD vectors) of the three brightfield stains. Eosin is QuPath's "H&E default" eosin
# (real eosin absorbs blue as well as green, unlike Ruifrok's 0.07/0.99/0.11), which separates it from DAB
# by ~19 degrees: eosin absorbs green most, DAB blue most, haematoxylin red and green.
STAIN_CHECK_REFERENCES = {
    "haematoxylin": _unit(_H),
    "eosin": _unit((0.2159, 0.8012, 0.5581)),
    "dab": _unit(_DAB),
}


def stain_check(rgb_thumbnail: np.ndarray, stain: str, *, stained_od_min: float = 0.15,
                he_dab_max: float = 0.05, he_eosin_min: float = 0.3, ihc_dab_min: float = 0.01,
                ihc_eosin_min: float = 0.3, min_stained_pixels: int = 200) -> dict:
    """Does a thumbnail look like its labelled stain? A probable mislabel is flagged, never silently scored.

    Each pixel whose OD vector is at least ``stained_od_min`` long (glass divided out, see
    :func:`estimate_background`) is assigned to the nearest reference stain colour (haematoxylin, eosin, DAB)
    by angle; the fractions of stained pixels per stain decide:

    * an ``HE``-labelled slide with DAB as at least ``he_dab_max`` of stained pixels and more DAB than eosin
      looks like an IHC slide (brown pigment in a real H&E stays below its eosin);
    * an ``HE``-labelled slide with eosin below ``he_eosin_min`` of stained pixels does not look like H&E:
      haematoxylin without eosin is an IHC slide's counterstain, and a negative IHC (no DAB) shows nothing
      else. A real H&E whose violet eosin reads as haematoxylin (OS-1) is flagged too: the safe side, since a
      negative keratin slide scored as H&E would read "no tumour";
    * an IHC-labelled slide with DAB below ``ihc_dab_min`` and eosin at least ``ihc_eosin_min`` looks like
      an H&E slide (an IHC with no DAB and no eosin is simply negative, and is not flagged).

    Defaults were set on the real reference images (4 um/px thumbnails): H&E images (histo.jpg, TCGA crops,
    cmu_small_region, OS-1, the TCGA frozen section) have DAB <= 0.0001 and eosin 0.6-1.0, except OS-1 whose
    violet eosin reads as haematoxylin (so absence of eosin alone does not make an IHC-labelled slide H&E);
    IHC images (ihc.png, the OS-2 Ki-67 pair) have DAB 0.23-0.89 and eosin <= 0.02. On the generated sample
    cohort (2 um/px QC thumbnails) the H&E slides have eosin 0.57-0.88 and DAB <= 0.0005; its IHC slides have
    eosin <= 0.21, and DAB 0.36-0.65 when positive, 0-0.08 when negative.
    Returns a JSON-ready dict: ``status`` (ok | warn | not_evaluable), ``probable_mislabel``, ``looks_like``
    (HE | IHC | unclear), ``fractions``, ``stained_pixels`` and a one-line ``reason``.
    """
    _check_rgb(rgb_thumbnail)
    background = estimate_background(rgb_thumbnail)
    od = rgb_to_od(rgb_thumbnail, background).reshape(-1, 3)
    norm = np.linalg.norm(od, axis=1)
    stained = od[norm >= stained_od_min] / norm[norm >= stained_od_min, None]
    names = list(STAIN_CHECK_REFERENCES)
    result = {"stain": stain, "stained_pixels": int(len(stained)), "probable_mislabel": False,
              "background_rgb": [round(float(v), 1) for v in background]}
    if len(stained) < min_stained_pixels:
        result.update(status="not_evaluable", looks_like="unclear", fractions=None,
                      reason=f"only {len(stained)} stained pixels (< {min_stained_pixels}): too little tissue to check")
        return result
    nearest = (stained @ np.vstack([STAIN_CHECK_REFERENCES[n] for n in names]).T).argmax(axis=1)
    fractions = {n: round(float(f), 4) for n, f in zip(names, np.bincount(nearest, minlength=3) / len(stained),
                                                       strict=True)}
    dab, eosin = fractions["dab"], fractions["eosin"]
    looks_ihc = dab >= he_dab_max and dab > eosin
    lacks_eosin = eosin < he_eosin_min
    looks_he = dab < ihc_dab_min and eosin >= ihc_eosin_min
    result["looks_like"] = "IHC" if looks_ihc else "HE" if looks_he else "unclear"
    result["fractions"] = fractions
    is_he = stain == "HE"
    if is_he and looks_ihc:
        result.update(status="warn", probable_mislabel=True,
                      reason=f"colour looks like DAB immunohistochemistry, not H&E: {dab:.0%} of stained pixels "
                             f"are DAB brown (>= {he_dab_max:.0%}, more than eosin {eosin:.0%}); check the sample "
                             "sheet's stain column")
    elif is_he and lacks_eosin:
        result.update(status="warn", probable_mislabel=True,
                      reason=f"colour does not look like H&E: only {eosin:.1%} of stained pixels are eosin pink "
                             f"(< {he_eosin_min:.0%}; DAB {dab:.1%}), the haematoxylin-only look of an "
                             "immunohistochemistry slide; check the sample sheet's stain column")
    elif not is_he and looks_he:
        result.update(status="warn", probable_mislabel=True,
                      reason=f"labelled {stain} (IHC) but DAB is {dab:.1%} of stained pixels (< {ihc_dab_min:.0%}) "
                             f"and eosin {eosin:.0%} (>= {ihc_eosin_min:.0%}): probable H&E slide; not scored")
    else:
        result.update(status="ok", reason=f"consistent with {stain}: haematoxylin {fractions['haematoxylin']:.0%}, "
                                          f"eosin {eosin:.0%}, DAB {dab:.0%} of stained pixels")
    return result
