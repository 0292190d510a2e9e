"""Where a section lies on its glass relative to its case's H&E slide: a known rigid transform (pure).

Serial sections of a block land rotated, shifted and sometimes mirrored on their slides. A :class:`Placement`
maps the *layout frame* (the case's tissue, which is also the H&E slide's level-0 frame, in um) to the *slide
frame* of an IHC slide (its own level-0 frame, in um): mirror (x -> -x) about the tissue centre ``centre_um``,
rotate by ``rotation_deg`` about it (clockwise on screen: image axes, y down), then shift by ``shift_um``.
The slide is rendered by mapping each of its pixels back into the layout frame (:mod:`pipeline.synth.cells`), so
the IHC slide shows the very cells of the H&E slide, moved.

* :class:`Placement`: :meth:`~Placement.to_slide`, :meth:`~Placement.to_layout` and
  :meth:`~Placement.to_he_level0_px` (the 3x3 matrix from IHC level-0 px to H&E level-0 px, for the truth file);
* :func:`random_placement`: a seeded placement that keeps the tissue on the slide;
* :func:`placed_labels`: the layout's class map seen in the slide frame (the truth PNG of a placed slide).

A slide whose tissue must fit at any angle needs room for the turned tissue: the sample cohort's IHC slides are
square, wider than the tissue's circumscribed circle (:data:`pipeline.synth.cohort.SAMPLE_IHC_SIZE_PX`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.synth.layout import Layout

TISSUE_PAD_UM = 60.0  # kept between the placed tissue and the slide's edge (layout cell + border roughening)


@dataclass(frozen=True)
class Placement:
    """Layout frame (um) -> slide frame (um): mirror, rotate about ``centre_um``, then shift."""

    rotation_deg: float = 0.0
    flip: bool = False
    shift_um: tuple[float, float] = (0.0, 0.0)
    centre_um: tuple[float, float] = (0.0, 0.0)

    @property
    def linear(self) -> np.ndarray:
        """The 2x2 part (rotation @ mirror); orthogonal, so its inverse is its transpose."""
        t = np.deg2rad(self.rotation_deg)
        rot = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
        return rot @ np.diag([-1.0, 1.0]) if self.flip else rot

    def to_slide(self, x, y) -> tuple[np.ndarray, np.ndarray]:
        """Layout-frame positions (um) -> slide-frame positions (um)."""
        m, (cx, cy), (tx, ty) = self.linear, self.centre_um, self.shift_um
        dx, dy = np.asarray(x, np.float64) - cx, np.asarray(y, np.float64) - cy
        return m[0, 0] * dx + m[0, 1] * dy + cx + tx, m[1, 0] * dx + m[1, 1] * dy + cy + ty

    def to_layout(self, x, y) -> tuple[np.ndarray, np.ndarray]:
        """Slide-frame positions (um) -> layout-frame positions (um): the inverse of :meth:`to_slide`."""
        m, (cx, cy), (tx, ty) = self.linear, self.centre_um, self.shift_um
        dx, dy = np.asarray(x, np.float64) - cx - tx, np.asarray(y, np.float64) - cy - ty
        return m[0, 0] * dx + m[1, 0] * dy + cx, m[0, 1] * dx + m[1, 1] * dy + cy

    def to_he_level0_px(self, mpp: float) -> list[list[float]]:
        """3x3 matrix: homogeneous IHC level-0 px (x, y, 1) -> H&E level-0 px, both slides at ``mpp`` um/px.

        Continuous pixel coordinates: pixel (i, j) covers [i, i + 1) x [j, j + 1)."""
        a = self.linear.T
        ox, oy = self.to_layout(0.0, 0.0)
        return [[float(a[0, 0]), float(a[0, 1]), float(ox) / mpp], [float(a[1, 0]), float(a[1, 1]), float(oy) / mpp],
                [0.0, 0.0, 1.0]]

    def record(self, mpp: float, he_slide: str | None) -> dict:
        """The truth file's ``registration`` entry."""
        return {"he_slide": he_slide, "rotation_deg": self.rotation_deg, "flip": self.flip,
                "shift_um": list(self.shift_um), "centre_um": list(self.centre_um),
                "to_he_level0_px": self.to_he_level0_px(mpp),
                "frame": "IHC level-0 px (x, y, 1) -> H&E level-0 px; flip mirrors x before the rotation; "
                         "rotation clockwise on screen about centre_um, then shift_um"}


def _tissue_points(lay: Layout) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.nonzero(lay.labels > 0)
    return (xs + 0.5) * lay.layout_um, (ys + 0.5) * lay.layout_um


def random_placement(seed: int, lay: Layout, width_um: float, height_um: float, max_shift: float = 0.1,
                     p_flip: float = 0.3) -> Placement:
    """A seeded placement about the tissue centre that keeps all tissue on the slide.

    Rotation uniform over 0-360 degrees (redrawn while the turned tissue would not fit on the slide), mirror with
    ``p_flip``; the shift brings the tissue centre to the slide centre, then moves it uniformly by up to
    +-``max_shift`` of the slide's size, within what keeps the tissue on the slide."""
    rng = np.random.default_rng([seed, 505])
    px, py = _tissue_points(lay)
    if len(px) == 0:
        return Placement()
    centre = (round(float(px.min() + px.max()) / 2, 1), round(float(py.min() + py.max()) / 2, 1))
    for _ in range(200):
        rot, flip = round(float(rng.uniform(0.0, 360.0)), 2), bool(rng.random() < p_flip)
        qx, qy = Placement(rot, flip, (0.0, 0.0), centre).to_slide(px, py)
        bx, by = width_um / 2 - centre[0], height_um / 2 - centre[1]  # the shift that centres the tissue
        lo_x = max(TISSUE_PAD_UM - qx.min(), bx - max_shift * width_um)
        hi_x = min(width_um - TISSUE_PAD_UM - qx.max(), bx + max_shift * width_um)
        lo_y = max(TISSUE_PAD_UM - qy.min(), by - max_shift * height_um)
        hi_y = min(height_um - TISSUE_PAD_UM - qy.max(), by + max_shift * height_um)
        if lo_x + 0.1 <= hi_x and lo_y + 0.1 <= hi_y:
            shift = (round(float(rng.uniform(lo_x + 0.05, hi_x - 0.05)), 1),
                     round(float(rng.uniform(lo_y + 0.05, hi_y - 0.05)), 1))
            return Placement(rot, flip, shift, centre)
    return Placement(180.0, False, (0.0, 0.0), centre)  # half a turn about the centre always fits


def placed_labels(lay: Layout, placement: Placement, width_um: float, height_um: float) -> np.ndarray:
    """The layout's class map in the frame of a slide of ``width_um`` x ``height_um`` at ``layout_um`` um/px."""
    ny, nx = lay.labels.shape
    yy, xx = np.mgrid[0:int(np.ceil(height_um / lay.layout_um)), 0:int(np.ceil(width_um / lay.layout_um))]
    lx, ly = placement.to_layout((xx + 0.5) * lay.layout_um, (yy + 0.5) * lay.layout_um)
    ix, iy = np.floor(lx / lay.layout_um).astype(np.int64), np.floor(ly / lay.layout_um).astype(np.int64)
    inside = (ix >= 0) & (ix < nx) & (iy >= 0) & (iy < ny)
    out = np.zeros(xx.shape, lay.labels.dtype)
    out[inside] = lay.labels[iy[inside], ix[inside]]
    return out
