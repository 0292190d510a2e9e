"""Colour of the synthetic slides: per-slide stain strengths and optical densities turned into RGB.

* :class:`Stain`: what a slide is stained with (H&E or an IHC marker) and how strongly (:meth:`Stain.for_slide`);
* :func:`to_rgb`: the Beer-Lambert law (I = I0 * 10^-OD) with the Ruifrok & Johnston stain vectors, the slide
  artefacts (pen ink, fold, bubble, blur) applied in optical density, a little blur and sensor noise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from pipeline.synth.cells import Canvas
from pipeline.synth.layout import Layout, lookup
from pipeline.synth.noise import hash01

# Ruifrok & Johnston stain vectors (RGB optical density, normalised)
_HAEM = np.array([0.65, 0.70, 0.29])
_EOSIN = np.array([0.07, 0.99, 0.11])
_DAB = np.array([0.27, 0.57, 0.78])
_HAEM, _EOSIN, _DAB = (v / np.linalg.norm(v) for v in (_HAEM, _EOSIN, _DAB))


@dataclass
class Stain:
    """What a slide is stained with and how strongly (per-slide variation)."""

    marker: str = "HE"  # "HE" or an IHC marker
    h_strength: float = 1.0
    e_strength: float = 1.0
    dab_strength: float = 1.0
    glass: tuple[float, float, float] = (242.0, 240.0, 244.0)

    @classmethod
    def for_slide(cls, marker: str, seed: int) -> Stain:
        """The stain of the slide with ``seed``: strengths and glass colour drawn from it."""
        rng = np.random.default_rng([seed, 202])
        glass = tuple(float(v) for v in rng.uniform(238, 246) + rng.uniform(-2, 2, 3))
        return cls(marker, float(rng.uniform(0.8, 1.2)), float(rng.uniform(0.75, 1.25)),
                   float(rng.uniform(0.9, 1.1)), glass)


def to_rgb(cv: Canvas, stain: Stain, layout: Layout, C: np.ndarray) -> np.ndarray:
    """Beer-Lambert: I = I0 * 10^-(OD_h h + OD_e e + OD_dab d); a little blur and sensor noise."""
    h = cv.h * stain.h_strength
    if stain.marker == "HE":
        od = (np.clip(h, 0, 3)[..., None] * (_HAEM * 0.85)
              + np.clip(cv.e * stain.e_strength * 0.5, 0, 3)[..., None] * _EOSIN)
    else:  # IHC: haematoxylin counterstain (lighter), DAB, a faint background on tissue
        tissue = (C > 0).astype(np.float32)
        od = (np.clip(h * 0.55 + 0.09 * tissue + 0.12 * cv.e, 0, 3)[..., None] * _HAEM
              + np.clip(cv.d * stain.dab_strength, 0, 3)[..., None] * _DAB)
    salt = layout.seed * 1000 + 500
    arte = layout.artefacts
    X, Y = cv.XY
    if arte:
        for name, mask in arte.items():
            here = lookup(layout, mask, X, Y)
            if not here.any():
                continue
            if name == "pen":  # green marker ink
                od = od + here[..., None] * np.array([0.55, 0.12, 0.45])
            elif name == "fold":  # two layers of tissue
                od = od * np.where(here, 1.9, 1.0)[..., None]
            elif name == "bubble":
                od = od + here[..., None] * 0.35
            elif name == "blur":
                sigma = 3.0 / cv.mpp
                blurred = ndi.gaussian_filter(od, (sigma, sigma, 0))
                od = np.where(here[..., None], blurred, od)
    od = ndi.gaussian_filter(od, (0.5, 0.5, 0))
    noise = hash01(np.floor(X / cv.mpp).astype(np.int64), np.floor(Y / cv.mpp).astype(np.int64), salt)
    od = od + (noise[..., None] - 0.5) * 0.03
    rgb = np.asarray(stain.glass) * np.power(10.0, -np.clip(od, 0, 4))
    return np.clip(rgb + 0.5, 0, 255).astype(np.uint8)
