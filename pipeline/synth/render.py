"""Procedural histology for the synthetic slides: RGB pixels of any region of a slide, or a one-class patch (pure).

Everything is a pure function of a seed and absolute positions in micrometres, so any region of a slide renders
the same pixels whichever band or tile it is rendered with: slides are written in bands without seams, and an
IHC slide of a case has exactly the cells of its H&E slide (same layout seed, other colours), placed on its glass
by a :class:`~pipeline.synth.placement.Placement` when it has one.

* :func:`render_region`: RGB pixels of a rectangle of a slide (a :class:`~pipeline.synth.layout.Layout` and a
  :class:`~pipeline.synth.colour.Stain`) at ``mpp`` um/px: class map (:mod:`pipeline.synth.layout`), cells and
  fibres as optical densities (:mod:`pipeline.synth.draw`), then colour (:mod:`pipeline.synth.colour`);
* :func:`render_patch`: a square patch of one tissue class, for training the tile classifier.
"""

from __future__ import annotations

import numpy as np

from pipeline.synth.cells import Canvas
from pipeline.synth.classes import CLASSES
from pipeline.synth.colour import Stain, to_rgb
from pipeline.synth.draw import draw
from pipeline.synth.layout import Layout, class_map
from pipeline.synth.noise import smooth_noise
from pipeline.synth.placement import Placement


def render_region(layout: Layout, stain: Stain, x0_um: float, y0_um: float, nx: int, ny: int,
                  mpp: float, margin_um: float = 30.0, placement: Placement | None = None) -> np.ndarray:
    """RGB uint8 (ny, nx, 3) of the slide region starting at (x0_um, y0_um) (level-0 um) at ``mpp`` um/px.

    With a ``placement`` the region is in the slide frame of a section placed on its glass by it."""
    m = int(np.ceil(margin_um / mpp))
    cv = Canvas(x0_um - m * mpp, y0_um - m * mpp, nx + 2 * m, ny + 2 * m, mpp, placement)
    C = class_map(layout, cv)
    present = set(np.unique(C).tolist())
    if present != {0}:
        draw(layout, stain, cv, C, present)
    rgb = to_rgb(cv, stain, layout, C)
    return rgb[m:m + ny, m:m + nx]


def render_patch(fine_class: int, seed: int, mpp: float, size_px: int, marker: str = "HE") -> np.ndarray:
    """A ``size_px`` square RGB patch of one tissue class (id in :data:`CLASSES`) at ``mpp`` um/px."""
    if not 1 <= fine_class < len(CLASSES):
        raise ValueError(f"fine_class must be 1..{len(CLASSES) - 1}, got {fine_class}")
    rng = np.random.default_rng([seed, 303])
    side_um = size_px * mpp + 200
    n = int(np.ceil(side_um / 8.0)) + 2
    labels = np.full((n, n), fine_class, np.uint8)
    angles = np.full((n, n), rng.uniform(0, np.pi), np.float32)
    angles += (0.5 * smooth_noise(rng, (n, n), n / 4)).astype(np.float32)
    layout = Layout(labels, angles, 8.0, int(seed) % 1_000_000 + 1)
    stain = Stain.for_slide(marker, seed)
    return render_region(layout, stain, 100.0, 100.0, size_px, size_px, mpp)
