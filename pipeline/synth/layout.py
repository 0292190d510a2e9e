"""Tissue layouts of the synthetic slides: which tissue class lies where (the ground truth), pure per seed.

* :data:`LAYOUTS`: per case type, its tumour classes, tumour share and non-tumour soft tissue;
* :func:`make_layout`: a :class:`Layout` -- a low-resolution class map (ids of
  :data:`pipeline.synth.classes.CLASSES`) at ``layout_um`` um/px: a tissue piece on glass with a tumour region
  inside soft tissue (stroma, loose/myxoid stroma, fat, muscle, lymphoid aggregates), a field of fibre/fascicle
  directions and optional artefact masks (pen, blur, fold, bubble);
* :func:`class_map`: the layout's class per pixel of a :class:`~pipeline.synth.cells.Canvas`, borders roughened
  by seamless noise; :func:`lookup`, :func:`cells_in`, :func:`angle_at`: the layout at absolute positions (um).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi

from pipeline.synth.cells import Canvas, Cells
from pipeline.synth.classes import CLASS_ID, CLASSES
from pipeline.synth.noise import smooth_noise

# tumour: {class: share of tumour area}; tumour_share: tumour fraction of tissue; normal: {class: weight}
LAYOUTS = {
    "breast_duct_carcinoma": {"tumour": {"adenocarcinoma": 1.0}, "tumour_share": 0.5,
                              "normal": {"fibrous_stroma": 0.55, "adipose": 0.4, "lymphoid": 0.05}},
    "cervical_squamous_carcinoma": {"tumour": {"squamous_carcinoma": 1.0}, "tumour_share": 0.5,
                                    "normal": {"fibrous_stroma": 0.55, "adipose": 0.4, "lymphoid": 0.05}},
    "leiomyosarcoma": {"tumour": {"spindle_sarcoma": 1.0}, "tumour_share": 0.6,
                       "normal": {"fibrous_stroma": 0.5, "adipose": 0.5}},
    "pleomorphic_sarcoma": {"tumour": {"pleomorphic_sarcoma": 1.0}, "tumour_share": 0.6,
                            "normal": {"fibrous_stroma": 0.5, "adipose": 0.5}},
    "benign_soft_tissue": {"tumour": {}, "tumour_share": 0.0,
                           "normal": {"skeletal_muscle": 0.4, "adipose": 0.3, "fibrous_stroma": 0.25,
                                      "lymphoid": 0.05}},
    "mixed": {"tumour": {"adenocarcinoma": 0.25, "squamous_carcinoma": 0.25, "spindle_sarcoma": 0.25,
                         "pleomorphic_sarcoma": 0.25}, "tumour_share": 0.5,
              "normal": {"skeletal_muscle": 0.3, "adipose": 0.3, "fibrous_stroma": 0.35, "lymphoid": 0.05,
                         "myxoid_stroma": 0.15}},
}


@dataclass
class Layout:
    """Class map (uint8 ids of :data:`CLASSES`) and direction field (radians) at ``layout_um`` um/px."""

    labels: np.ndarray
    angles: np.ndarray
    layout_um: float
    seed: int
    artefacts: dict = field(default_factory=dict)  # name -> bool mask at layout_um
    edge: np.ndarray | None = None  # smooth tissue field (> 0 inside), for tissue borders without steps

    def class_fractions(self) -> dict[str, float]:
        """Share of tissue area per class (glass excluded)."""
        counts = np.bincount(self.labels.ravel(), minlength=len(CLASSES))
        tissue = max(1, counts[1:].sum())
        return {CLASSES[i]: round(float(counts[i] / tissue), 4) for i in range(1, len(CLASSES)) if counts[i]}


def _quantile_mask(values: np.ndarray, where: np.ndarray, fraction: float) -> np.ndarray:
    if fraction <= 0 or not where.any():
        return np.zeros_like(where)
    return where & (values >= np.quantile(values[where], 1.0 - fraction))


def make_layout(seed: int, width_um: float, height_um: float, layout: str, tissue_fraction: float = 0.45,
                artefacts: tuple[str, ...] = ()) -> Layout:
    """The tissue layout of a slide: a class map on glass, deterministic for ``seed`` (pure)."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; known: {', '.join(LAYOUTS)}")
    spec = LAYOUTS[layout]
    layout_um = max(8.0, float(np.ceil(max(width_um, height_um) / 2500.0)))
    ny, nx = max(8, int(np.ceil(height_um / layout_um))), max(8, int(np.ceil(width_um / layout_um)))
    rng = np.random.default_rng([seed, 101])
    side = min(nx, ny)
    yy, xx = np.mgrid[0:ny, 0:nx].astype(np.float32)
    # one or two tissue pieces: smooth noise under an elliptical envelope, cut to the requested area
    ell = ((xx - nx / 2) / (nx * 0.42)) ** 2 + ((yy - ny / 2) / (ny * 0.42)) ** 2
    body = smooth_noise(rng, (ny, nx), side * 0.08) - 2.2 * ell
    margin = np.zeros((ny, nx), bool)
    margin[max(1, ny // 20):-max(1, ny // 20), max(1, nx // 20):-max(1, nx // 20)] = True
    tissue = _quantile_mask(body, margin, min(1.0, tissue_fraction / margin.mean()))
    tissue = ndi.binary_fill_holes(ndi.binary_opening(tissue, iterations=2))
    edge = ndi.gaussian_filter(tissue.astype(np.float32), 1.0) - 0.5
    labels = np.zeros((ny, nx), np.uint8)
    # tumour: a smooth blob near the centre of the tissue
    tumour = np.zeros((ny, nx), bool)
    if spec["tumour"]:
        t_field = smooth_noise(rng, (ny, nx), side * 0.06) - 1.5 * ell
        tumour = ndi.binary_opening(_quantile_mask(t_field, tissue, spec["tumour_share"]), iterations=1)
    # non-tumour soft tissue: Voronoi regions of random seeds, each one class
    normal_names = list(spec["normal"])
    weights = np.array([spec["normal"][n] for n in normal_names])
    n_seeds = 10 + int(side / 40)
    pts = rng.uniform(0, 1, (n_seeds, 2)) * (ny, nx)
    kinds = rng.choice(len(normal_names), size=n_seeds, p=weights / weights.sum())
    if len(normal_names) > 1:  # every listed class appears at least once
        kinds[: len(normal_names)] = np.arange(len(normal_names))
    nearest = np.argmin((yy[..., None] - pts[:, 0]) ** 2 + (xx[..., None] - pts[:, 1]) ** 2, axis=-1)
    normal = np.array([CLASS_ID[normal_names[k]] for k in kinds], np.uint8)[nearest]
    if "lymphoid" in normal_names:  # lymphoid tissue as small aggregates in stroma, not whole territories
        normal[normal == CLASS_ID["lymphoid"]] = CLASS_ID["fibrous_stroma"]
        agg = _quantile_mask(smooth_noise(rng, (ny, nx), max(1.5, side * 0.01)), tissue & ~tumour,
                             spec["normal"]["lymphoid"])
        normal[agg] = CLASS_ID["lymphoid"]
    labels[tissue] = normal[tissue]
    if spec["tumour"]:
        t_names = list(spec["tumour"])
        if len(t_names) == 1:
            labels[tumour] = CLASS_ID[t_names[0]]
        else:
            tp = rng.uniform(0, 1, (len(t_names) * 2, 2)) * (ny, nx)
            near_t = np.argmin((yy[..., None] - tp[:, 0]) ** 2 + (xx[..., None] - tp[:, 1]) ** 2, axis=-1)
            ids = np.array([CLASS_ID[t_names[i % len(t_names)]] for i in range(len(tp))], np.uint8)
            labels[tumour] = ids[near_t][tumour]
    # directions: smooth per-territory angles (muscle fibres, fascicles, collagen)
    base = rng.uniform(0, np.pi, n_seeds).astype(np.float32)[nearest]
    angles = (base + 0.6 * smooth_noise(rng, (ny, nx), side * 0.05)).astype(np.float32)
    arte = {}
    for name in artefacts:
        arte[name] = _artefact_mask(name, rng, tissue, yy, xx)
    return Layout(labels, angles, layout_um, seed, arte, edge)


def _artefact_mask(name: str, rng: np.random.Generator, tissue: np.ndarray, yy, xx) -> np.ndarray:
    ny, nx = tissue.shape
    if name == "pen":  # a thick ink stroke across the edge of the tissue
        ys, xs = np.nonzero(tissue)
        cy, cx = ys.min() + 0.15 * (ys.max() - ys.min()), xs.mean()
        d = np.abs(np.hypot(yy - cy * 0.3, xx - cx) - 0.35 * min(ny, nx))
        return (d < max(1.5, 0.012 * min(ny, nx))) & (yy < ny * 0.5)
    if name in ("blur", "fold", "bubble"):
        cy, cx = rng.uniform(0.35, 0.65) * ny, rng.uniform(0.35, 0.65) * nx
        r = 0.12 * min(ny, nx)
        if name == "fold":
            return (np.abs((yy - cy) * 0.8 + (xx - cx) * 0.6) < r * 0.15) & tissue
        if name == "bubble":
            return np.abs(np.hypot(yy - cy, xx - cx) - r) < max(1.0, r * 0.04)
        return np.hypot(yy - cy, xx - cx) < r
    raise ValueError(f"unknown artefact {name!r}; known: pen, blur, fold, bubble")

def class_map(layout: Layout, canvas: Canvas, warp_um: float = 10.0) -> np.ndarray:
    """The layout's class per pixel, with boundaries roughened by seamless noise."""
    X, Y = canvas.XY
    salt = layout.seed * 1000
    wx = (canvas.noise(35.0, salt + 1) - 0.5) * 2 * warp_um
    wy = (canvas.noise(35.0, salt + 2) - 0.5) * 2 * warp_um
    lx = np.clip(((X + wx) / layout.layout_um).astype(np.int64), 0, layout.labels.shape[1] - 1)
    ly = np.clip(((Y + wy) / layout.layout_um).astype(np.int64), 0, layout.labels.shape[0] - 1)
    labels = layout.labels[ly, lx]
    if layout.edge is None:
        return labels
    # the tissue border from the smooth field, bilinear: no staircase of layout cells
    fx = np.clip((X + wx) / layout.layout_um - 0.5, 0, layout.edge.shape[1] - 1.001)
    fy = np.clip((Y + wy) / layout.layout_um - 0.5, 0, layout.edge.shape[0] - 1.001)
    x0, y0 = fx.astype(np.int64), fy.astype(np.int64)
    ax, ay = fx - x0, fy - y0
    e = layout.edge
    val = ((e[y0, x0] * (1 - ax) + e[y0, x0 + 1] * ax) * (1 - ay)
           + (e[y0 + 1, x0] * (1 - ax) + e[y0 + 1, x0 + 1] * ax) * ay)
    inside = val > 0
    labels = np.where(inside & (labels == 0), CLASS_ID["fibrous_stroma"], labels)
    return np.where(inside, labels, 0).astype(np.uint8)


def lookup(layout: Layout, grid: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Values of a layout-resolution ``grid`` (labels, angles, a mask) at absolute positions (um)."""
    lx = np.clip((x / layout.layout_um).astype(np.int64), 0, grid.shape[1] - 1)
    ly = np.clip((y / layout.layout_um).astype(np.int64), 0, grid.shape[0] - 1)
    return grid[ly, lx]


def cells_in(layout: Layout, cells: Cells, classes: tuple[int, ...]) -> Cells:
    """The cells whose centre lies in one of ``classes``."""
    return cells.take(np.isin(lookup(layout, layout.labels, cells.x, cells.y), classes))


def angle_at(layout: Layout, x, y) -> np.ndarray:
    """Fibre/fascicle direction (radians) at absolute positions (um)."""
    return lookup(layout, layout.angles, x, y).astype(np.float64)
