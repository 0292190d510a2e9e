"""Procedural histology for the synthetic slides: tissue layouts and seamless H&E / IHC rendering (pure).

Everything here is a pure function of a seed and absolute positions in micrometres, so any region of a slide
renders the same pixels whichever band or tile it is rendered with: slides are written in bands without seams,
and an IHC slide of a case has exactly the cells of its H&E slide (same layout seed, other colours).

* :func:`make_layout`: a low-resolution map of tissue classes (:data:`CLASSES`) at ``layout_um`` um/px -- a
  tissue piece on glass with a tumour region of the case's type inside soft tissue (stroma, loose/myxoid stroma,
  fat, muscle, lymphoid aggregates) -- plus a field of fibre/fascicle directions. The class map is the ground truth.
* :func:`render_region`: RGB pixels of a rectangle of the slide at ``mpp`` um/px. Cells are drawn from hashed
  lattices (each cell's position, size, shape and marker positivity come from a hash of its lattice index), so
  nuclear size is physical (7-12 um across for tumour nuclei; spindle nuclei 12-22 um long).
  Colours: optical densities of haematoxylin, eosin and DAB turned into RGB with the Beer-Lambert law
  (I = I0 * 10^-OD) and the Ruifrok & Johnston stain vectors, with per-slide stain strengths.
* :data:`EXPRESSION`: one table of which cells express which marker, how often and how strongly.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi

# ---- classes and expression ---------------------------------------------------------------------------------
CLASSES = ("glass", "adenocarcinoma", "squamous_carcinoma", "spindle_sarcoma", "pleomorphic_sarcoma",
           "skeletal_muscle", "adipose", "fibrous_stroma", "lymphoid", "myxoid_stroma")
CLASS_ID = {name: i for i, name in enumerate(CLASSES)}
# fine class id -> the model's coarse class (glass has none)
COARSE = {1: "carcinoma", 2: "carcinoma", 3: "sarcoma", 4: "sarcoma", 5: "non_tumour", 6: "non_tumour",
          7: "non_tumour", 8: "non_tumour", 9: "non_tumour"}
TUMOUR_CLASSES = (1, 2, 3, 4)

# Where each marker we draw is expressed (agrees with configs/markers.yaml; tested).
COMPARTMENT = {
    "CK_AE1AE3": "cytoplasmic", "CK7": "cytoplasmic", "CK20": "cytoplasmic", "EMA": "membranous",
    "HER2": "membranous", "ER": "nuclear", "PR": "nuclear", "GATA3": "nuclear", "p40": "nuclear", "p63": "nuclear",
    "TTF1": "nuclear", "Ki67": "nuclear", "p16": "nuclear_cytoplasmic", "GCDFP15": "cytoplasmic",
    "desmin": "cytoplasmic", "SMA": "cytoplasmic", "CD34": "membranous", "S100": "nuclear_cytoplasmic",
    "vimentin": "cytoplasmic",
}
# Expression per tissue class: marker -> (fraction of cells positive, intensity 1-3). Absent = negative.
# Tumour rows follow the textbook profiles (breast duct carcinoma CK+/CK7+/ER+/PR+/GATA3+; cervical squamous
# carcinoma CK+/p40+/p63+/p16 block-positive; leiomyosarcoma desmin+/SMA+/CK-; pleomorphic sarcoma vimentin
# only); non-tumour rows give the internal controls (muscle desmin, vessel walls SMA, fat S100, stroma CD34).
EXPRESSION: dict[str, dict[str, tuple[float, int]]] = {
    "adenocarcinoma": {"CK_AE1AE3": (0.97, 3), "CK7": (0.9, 3), "EMA": (0.8, 2), "ER": (0.85, 3),
                       "PR": (0.6, 2), "GATA3": (0.9, 2), "GCDFP15": (0.4, 2), "Ki67": (0.25, 3),
                       "HER2": (0.1, 1), "p16": (0.1, 1), "vimentin": (0.05, 1)},
    "squamous_carcinoma": {"CK_AE1AE3": (0.97, 3), "CK7": (0.2, 1), "EMA": (0.7, 2), "p40": (0.92, 3),
                           "p63": (0.92, 3), "p16": (0.95, 3), "Ki67": (0.5, 3)},
    "spindle_sarcoma": {"desmin": (0.85, 3), "SMA": (0.9, 3), "vimentin": (0.95, 3), "Ki67": (0.3, 3)},
    "pleomorphic_sarcoma": {"vimentin": (0.95, 3), "SMA": (0.15, 1), "Ki67": (0.4, 3)},
    "skeletal_muscle": {"desmin": (1.0, 3), "vimentin": (0.2, 1)},
    "adipose": {"S100": (0.7, 2), "vimentin": (0.8, 2)},
    "fibrous_stroma": {"CD34": (0.6, 2), "vimentin": (0.9, 2), "Ki67": (0.01, 2)},
    "lymphoid": {"Ki67": (0.1, 3), "vimentin": (0.9, 2)},
    "myxoid_stroma": {"CD34": (0.3, 2), "vimentin": (0.9, 2)},
    "vessel_wall": {"SMA": (1.0, 3), "desmin": (0.5, 2), "vimentin": (0.9, 2)},
    "endothelium": {"CD34": (1.0, 3), "vimentin": (0.9, 2)},
}
DAB_OD = {0: 0.0, 1: 0.3, 2: 0.55, 3: 0.9}  # DAB optical density of an intensity level (1+ / 2+ / 3+)

# Ruifrok & Johnston stain vectors (RGB optical density, normalised)
_HAEM = np.array([0.65, 0.70, 0.29])
_EOSIN = np.array([0.07, 0.99, 0.11])
_DAB = np.array([0.27, 0.57, 0.78])
_HAEM, _EOSIN, _DAB = (v / np.linalg.norm(v) for v in (_HAEM, _EOSIN, _DAB))

# ---- layouts: which classes a case's tissue holds -----------------------------------------------------------
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


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma_px: float) -> np.ndarray:
    n = ndi.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma_px, mode="reflect")
    return (n - n.mean()) / max(float(n.std()), 1e-6)


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
    body = _smooth_noise(rng, (ny, nx), side * 0.08) - 2.2 * ell
    margin = np.zeros((ny, nx), bool)
    margin[max(1, ny // 20):-max(1, ny // 20), max(1, nx // 20):-max(1, nx // 20)] = True
    tissue = _quantile_mask(body, margin, min(1.0, tissue_fraction / margin.mean()))
    tissue = ndi.binary_fill_holes(ndi.binary_opening(tissue, iterations=2))
    edge = ndi.gaussian_filter(tissue.astype(np.float32), 1.0) - 0.5
    labels = np.zeros((ny, nx), np.uint8)
    # tumour: a smooth blob near the centre of the tissue
    tumour = np.zeros((ny, nx), bool)
    if spec["tumour"]:
        t_field = _smooth_noise(rng, (ny, nx), side * 0.06) - 1.5 * ell
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
        agg = _quantile_mask(_smooth_noise(rng, (ny, nx), max(1.5, side * 0.01)), tissue & ~tumour,
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
    angles = (base + 0.6 * _smooth_noise(rng, (ny, nx), side * 0.05)).astype(np.float32)
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


# ---- hashing and seamless noise -------------------------------------------------------------------------------
_M1, _M2, _M3 = np.uint64(0x9E3779B97F4A7C15), np.uint64(0xC2B2AE3D27D4EB4F), np.uint64(0x165667B19E3779F9)
_F1, _F2 = np.uint64(0xFF51AFD7ED558CCD), np.uint64(0xC4CEB9FE1A85EC53)
_S33 = np.uint64(33)


def hash01(i: np.ndarray, j: np.ndarray, salt: int) -> np.ndarray:
    """A uniform [0, 1) number per integer pair (i, j) and salt (murmur3 finaliser)."""
    with np.errstate(over="ignore"):
        h = (np.asarray(i).astype(np.int64).astype(np.uint64) * _M1) ^ (
            np.asarray(j).astype(np.int64).astype(np.uint64) * _M2) ^ (np.uint64(salt & 0xFFFFFFFFFFFF) * _M3)
        h ^= h >> _S33
        h *= _F1
        h ^= h >> _S33
        h *= _F2
        h ^= h >> _S33
    return (h >> np.uint64(11)).astype(np.float64) * (1.0 / 9007199254740992.0)


def value_noise(x: np.ndarray, y: np.ndarray, scale_um: float, salt: int, grid: bool = False) -> np.ndarray:
    """Smooth value noise in [0, 1] at absolute positions (um): the same value wherever it is evaluated.

    ``grid=True``: ``x`` and ``y`` are the column and row coordinates of a pixel grid (result ``(len(y), len(x))``);
    otherwise they are matching arrays of points."""
    gx, gy = x / scale_um, y / scale_um
    ix, iy = np.floor(gx), np.floor(gy)
    fx, fy = gx - ix, gy - iy
    fx, fy = fx * fx * (3 - 2 * fx), fy * fy * (3 - 2 * fy)
    ix, iy = ix.astype(np.int64), iy.astype(np.int64)
    if grid:  # separable grid: hash the lattice once
        lx, ly = np.arange(ix.min(), ix.max() + 2), np.arange(iy.min(), iy.max() + 2)
        lat = hash01(lx[None, :], ly[:, None], salt)
        jx, jy = ix - lx[0], iy - ly[0]
        a, b = lat[jy[:, None], jx[None, :]], lat[jy[:, None], jx[None, :] + 1]
        c, d = lat[jy[:, None] + 1, jx[None, :]], lat[jy[:, None] + 1, jx[None, :] + 1]
        fx, fy = fx[None, :], fy[:, None]
    else:
        a, b = hash01(ix, iy, salt), hash01(ix + 1, iy, salt)
        c, d = hash01(ix, iy + 1, salt), hash01(ix + 1, iy + 1, salt)
    return (a * (1 - fx) + b * fx) * (1 - fy) + (c * (1 - fx) + d * fx) * fy


def fibre_noise(X: np.ndarray, Y: np.ndarray, angle: np.ndarray, along_um: float, across_um: float,
                salt: int) -> np.ndarray:
    """Value noise stretched along ``angle`` (collagen, fibrillary cytoplasm)."""
    c, s = np.cos(angle), np.sin(angle)
    u, v = X * c + Y * s, -X * s + Y * c
    return value_noise(u / along_um, v / across_um, 1.0, salt)


# ---- cells on hashed lattices -------------------------------------------------------------------------------
@dataclass
class Cells:
    """Cell centres (um, absolute) with their lattice ids (for more hashed numbers)."""

    x: np.ndarray
    y: np.ndarray
    i: np.ndarray
    j: np.ndarray
    salt: int

    def u(self, k: int) -> np.ndarray:
        """The k-th uniform [0, 1) number of every cell."""
        return hash01(self.i * 7919 + k, self.j, self.salt)

    def take(self, keep: np.ndarray) -> Cells:
        return Cells(self.x[keep], self.y[keep], self.i[keep], self.j[keep], self.salt)

    def __len__(self) -> int:
        return len(self.x)


def lattice(x0: float, y0: float, x1: float, y1: float, spacing_um: float, salt: int,
            jitter: float = 0.45) -> Cells:
    """Jittered lattice points with centres inside [x0, x1) x [y0, y1) (um)."""
    i = np.arange(int(np.floor(x0 / spacing_um)) - 1, int(np.ceil(x1 / spacing_um)) + 1)
    j = np.arange(int(np.floor(y0 / spacing_um)) - 1, int(np.ceil(y1 / spacing_um)) + 1)
    ii, jj = (a.ravel() for a in np.meshgrid(i, j))
    x = (ii + 0.5 + jitter * (2 * hash01(ii, jj, salt) - 1)) * spacing_um
    y = (jj + 0.5 + jitter * (2 * hash01(ii, jj, salt + 1) - 1)) * spacing_um
    keep = (x >= x0) & (x < x1) & (y >= y0) & (y < y1)
    return Cells(x[keep], y[keep], ii[keep], jj[keep], salt + 2)


class Canvas:
    """Optical-density layers of a region (haematoxylin, eosin, DAB) at ``mpp`` um/px, absolute um coordinates."""

    def __init__(self, x0_um: float, y0_um: float, nx: int, ny: int, mpp: float):
        self.x0, self.y0, self.nx, self.ny, self.mpp = x0_um, y0_um, nx, ny, mpp
        self.xs = x0_um + (np.arange(nx) + 0.5) * mpp
        self.ys = y0_um + (np.arange(ny) + 0.5) * mpp
        self.h = np.zeros((ny, nx), np.float32)
        self.e = np.zeros((ny, nx), np.float32)
        self.d = np.zeros((ny, nx), np.float32)
        self._XY = None

    @property
    def XY(self) -> tuple[np.ndarray, np.ndarray]:
        if self._XY is None:
            self._XY = (np.broadcast_to(self.xs[None, :], (self.ny, self.nx)),
                        np.broadcast_to(self.ys[:, None], (self.ny, self.nx)))
        return self._XY

    def splat(self, cells: Cells, a_um, b_um, theta, weight, profile: str = "nucleus",
              grain: float = 0.0) -> np.ndarray:
        """Sum of elliptical stamps (semi-axes a, b um; angle theta) weighted per cell, as a (ny, nx) array."""
        out = np.zeros(self.ny * self.nx, np.float64)
        n = len(cells)
        if n == 0:
            return out.reshape(self.ny, self.nx).astype(np.float32)
        a_um = np.broadcast_to(np.asarray(a_um, np.float64), (n,))
        b_um = np.broadcast_to(np.asarray(b_um, np.float64), (n,))
        theta = np.broadcast_to(np.asarray(theta, np.float64), (n,))
        weight = np.broadcast_to(np.asarray(weight, np.float64), (n,))
        reach = 1.3 if profile != "ring" else 1.25
        r = int(np.ceil(float(max(a_um.max(), b_um.max())) * reach / self.mpp)) + 1
        for lo in range(0, n, max(1, 400_000 // (2 * r + 1) ** 2)):  # bounded temporary arrays
            sl = slice(lo, lo + max(1, 400_000 // (2 * r + 1) ** 2))
            px = (cells.x[sl] - self.x0) / self.mpp - 0.5
            py = (cells.y[sl] - self.y0) / self.mpp - 0.5
            cx, cy = np.rint(px).astype(np.int64), np.rint(py).astype(np.int64)
            off = np.arange(-r, r + 1)
            gx = cx[:, None, None] + off[None, None, :]
            gy = cy[:, None, None] + off[None, :, None]
            dx, dy = (gx - px[:, None, None]) * self.mpp, (gy - py[:, None, None]) * self.mpp
            c, s = np.cos(theta[sl])[:, None, None], np.sin(theta[sl])[:, None, None]
            u = (dx * c + dy * s) / a_um[sl][:, None, None]
            v = (-dx * s + dy * c) / b_um[sl][:, None, None]
            dist = np.sqrt(u * u + v * v)
            if profile == "nucleus":
                val = np.clip(1.5 - 1.2 * dist, 0, 1) ** 0.7
            elif profile == "disc":
                val = np.clip((1.1 - dist) * 4, 0, 1)
            else:  # ring: a membrane
                val = np.clip(1 - np.abs(dist - 1.0) * 8, 0, 1)
            if grain:
                ax = gx + int(round(self.x0 / self.mpp))  # absolute pixel index: the same grain in any band
                ay = gy + int(round(self.y0 / self.mpp))
                g = hash01(ax * 92821 + cells.i[sl][:, None, None], ay * 68917 + cells.j[sl][:, None, None],
                           cells.salt + 77)
                val = val * (1 + grain * (2 * g - 1))
            val *= weight[sl][:, None, None]
            ok = (gx >= 0) & (gx < self.nx) & (gy >= 0) & (gy < self.ny) & (val > 0)
            out += np.bincount((gy * self.nx + gx)[ok], weights=val[ok], minlength=self.ny * self.nx)
        return out.reshape(self.ny, self.nx).astype(np.float32)


# ---- rendering --------------------------------------------------------------------------------------------
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
        rng = np.random.default_rng([seed, 202])
        glass = tuple(float(v) for v in rng.uniform(238, 246) + rng.uniform(-2, 2, 3))
        return cls(marker, float(rng.uniform(0.8, 1.2)), float(rng.uniform(0.75, 1.25)),
                   float(rng.uniform(0.9, 1.1)), glass)


def _expr(tissue: str, marker: str) -> tuple[float, int]:
    return EXPRESSION.get(tissue, {}).get(marker, (0.0, 0))


def _positive(cells: Cells, tissue: str, marker: str, k: int = 40) -> np.ndarray:
    """DAB optical density per cell for ``marker`` in ``tissue`` (0 for negative cells)."""
    frac, level = _expr(tissue, marker)
    if frac <= 0 or len(cells) == 0:
        return np.zeros(len(cells))
    pos = cells.u(k) < frac
    lvl = np.clip(level + np.where(cells.u(k + 1) < 0.25, -1, 0), 1, 3)  # a quarter one level weaker
    return pos * np.array([DAB_OD[int(v)] for v in range(4)])[lvl]


def _compartments(marker: str) -> tuple[bool, bool, bool]:
    comp = COMPARTMENT.get(marker, "")
    return "nuclear" in comp, "cytoplasmic" in comp, comp == "membranous"


def class_map(layout: Layout, canvas: Canvas, warp_um: float = 10.0) -> np.ndarray:
    """The layout's class per pixel, with boundaries roughened by seamless noise."""
    X, Y = canvas.XY
    salt = layout.seed * 1000
    wx = (value_noise(canvas.xs, canvas.ys, 35.0, salt + 1, grid=True) - 0.5) * 2 * warp_um
    wy = (value_noise(canvas.xs, canvas.ys, 35.0, salt + 2, grid=True) - 0.5) * 2 * warp_um
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


def _lookup(layout: Layout, grid: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    lx = np.clip((x / layout.layout_um).astype(np.int64), 0, grid.shape[1] - 1)
    ly = np.clip((y / layout.layout_um).astype(np.int64), 0, grid.shape[0] - 1)
    return grid[ly, lx]


def _cells_in(layout: Layout, cells: Cells, classes: tuple[int, ...]) -> Cells:
    return cells.take(np.isin(_lookup(layout, layout.labels, cells.x, cells.y), classes))


def _angle_at(layout: Layout, x, y) -> np.ndarray:
    return _lookup(layout, layout.angles, x, y).astype(np.float64)


def render_region(layout: Layout, stain: Stain, x0_um: float, y0_um: float, nx: int, ny: int,
                  mpp: float, margin_um: float = 30.0) -> np.ndarray:
    """RGB uint8 (ny, nx, 3) of the slide region starting at (x0_um, y0_um) (level-0 um) at ``mpp`` um/px."""
    m = int(np.ceil(margin_um / mpp))
    cv = Canvas(x0_um - m * mpp, y0_um - m * mpp, nx + 2 * m, ny + 2 * m, mpp)
    C = class_map(layout, cv)
    present = set(np.unique(C).tolist())
    if present != {0}:
        _draw(layout, stain, cv, C, present)
    rgb = _to_rgb(cv, stain, layout, C)
    return rgb[m:m + ny, m:m + nx]


def _draw(layout: Layout, stain: Stain, cv: Canvas, C: np.ndarray, present: set[int]) -> None:
    X, Y = cv.XY
    s = layout.seed * 1000
    mk = stain.marker
    x0, y0 = cv.x0, cv.y0
    x1, y1 = x0 + cv.nx * cv.mpp, y0 + cv.ny * cv.mpp
    tissue = C > 0
    ang_px = _lookup(layout, layout.angles, X, Y).astype(np.float32)
    nuc_dab, cyto_dab, mem_dab = _compartments(mk)

    def cells_for(spacing, salt, classes, jitter=0.45):
        return _cells_in(layout, lattice(x0, y0, x1, y1, spacing, s + salt, jitter), classes)

    def add_cells(cells, tissue_name, a, b, theta, od, cyto_a=None, cyto_b=None, cyto_e=0.0, grain=0.35):
        """Nuclei (+ cytoplasm) of cells; DAB in the marker's compartment of positive cells."""
        cv.h += cv.splat(cells, a, b, theta, od, "nucleus", grain)
        dab = _positive(cells, tissue_name, mk) if mk != "HE" else np.zeros(len(cells))
        if cyto_a is not None:
            if cyto_e:
                cv.e += cv.splat(cells, cyto_a, cyto_b, theta, cyto_e, "disc")
            if cyto_dab and dab.any():
                cv.d += cv.splat(cells, cyto_a, cyto_b, theta, dab * 0.85, "disc", 0.2)
            if mem_dab and dab.any():
                cv.d += cv.splat(cells, cyto_a, cyto_b, theta, dab * 1.2, "ring")
        if nuc_dab and dab.any():
            cv.d += cv.splat(cells, a, b, theta, dab * 1.1, "disc", 0.25)

    # -- stroma (also the background of tumours) --------------------------------------------------------
    collagen = fibre_noise(X, Y, ang_px, 16.0, 3.0, s + 10).astype(np.float32)
    base_e = 0.32 * (0.55 + 0.9 * collagen)
    stromal = np.isin(C, (1, 2, 3, 4, 7, 8))
    cv.e += np.where(stromal, base_e, 0)
    cid = CLASS_ID
    if cid["fibrous_stroma"] in present:
        st = cid["fibrous_stroma"] == C
        cv.e += np.where(st, 0.18 * collagen, 0)
        fb = cells_for(24.0, 20, (cid["fibrous_stroma"],))
        add_cells(fb, "fibrous_stroma", 4.5 + 1.5 * fb.u(0), 1.1 + 0.4 * fb.u(1), _angle_at(layout, fb.x, fb.y),
                  0.75, 6.0, 1.6)
    if present & {cid["fibrous_stroma"], cid["adipose"]}:
        _vessels(layout, cv, C, s, mk)
    # -- adipose: large empty cells with thin membranes ----------------------------------------------------------
    if cid["adipose"] in present:
        fat = cid["adipose"] == C
        d1, d2 = _voronoi_gap(X, Y, 65.0, s + 30, fat)
        membrane = fat & (d2 - d1 < 2.2)
        cv.e += np.where(membrane, 0.42, 0)
        if mk != "HE":
            frac, lvl = _expr("adipose", mk)
            if frac > 0:
                cv.d += np.where(membrane, DAB_OD[lvl] * 0.9, 0)
        an = cells_for(90.0, 31, (cid["adipose"],))
        add_cells(an, "adipose", 4.0, 1.3, an.u(2) * np.pi, 0.7)
    # -- loose / myxoid stroma: pale bluish ground substance, wisps of collagen, sparse stellate cells --------
    if cid["myxoid_stroma"] in present:
        mx = cid["myxoid_stroma"] == C
        wisp = np.clip(fibre_noise(X, Y, ang_px, 30.0, 2.5, s + 110) - 0.55, 0, 1).astype(np.float32)
        cv.h += np.where(mx, 0.025 + 0.025 * value_noise(cv.xs, cv.ys, 40.0, s + 111, grid=True), 0).astype(np.float32)
        cv.e += np.where(mx, 0.04 + 0.35 * wisp, 0).astype(np.float32)
        mc = cells_for(30.0, 112, (cid["myxoid_stroma"],), 0.5)
        add_cells(mc, "myxoid_stroma", 3.5 + 2.0 * mc.u(0), 1.4 + 0.8 * mc.u(1), mc.u(2) * np.pi, 0.7, 7.0, 2.0, 0.15)
    # -- skeletal muscle: long eosinophilic fibres with peripheral nuclei -----------------------------------
    if cid["skeletal_muscle"] in present:
        mus = cid["skeletal_muscle"] == C
        across = -X * np.sin(ang_px) + Y * np.cos(ang_px)
        along = X * np.cos(ang_px) + Y * np.sin(ang_px)
        width = 48.0
        wob = (value_noise(cv.xs, cv.ys, 60.0, s + 40, grid=True) - 0.5) * 10
        phase = ((across + wob) / width) % 1.0
        fibre = mus & (phase > 0.09)
        texture = 0.85 + 0.3 * value_noise(along.ravel() / 3.0, across.ravel() / 25.0, 1.0, s + 41).reshape(X.shape)
        cv.e += np.where(fibre, 0.8 * texture, np.where(mus, 0.05, 0)).astype(np.float32)
        if mk != "HE":
            frac, lvl = _expr("skeletal_muscle", mk)
            if frac > 0:
                cv.d += np.where(fibre, DAB_OD[lvl] * (0.8 + 0.2 * texture), 0).astype(np.float32)
        mn = cells_for(22.0, 42, (cid["skeletal_muscle"],))
        if len(mn):
            a = _angle_at(layout, mn.x, mn.y)
            acr = -mn.x * np.sin(a) + mn.y * np.cos(a)
            shift = (np.round(acr / width) * width + width * 0.06 - acr)  # move to the fibre's edge
            mn = Cells(mn.x - shift * np.sin(a), mn.y + shift * np.cos(a), mn.i, mn.j, mn.salt)
            add_cells(mn, "skeletal_muscle", 5.5, 1.7, a, 1.0)
    # -- lymphoid aggregates ------------------------------------------------------------------------------------
    if cid["lymphoid"] in present:
        ly = cells_for(6.5, 50, (cid["lymphoid"],), 0.35)
        add_cells(ly, "lymphoid", 2.9 + 0.5 * ly.u(0), 2.7 + 0.4 * ly.u(1), ly.u(2) * np.pi, 1.25, 3.6, 3.4,
                  grain=0.15)
    # -- adenocarcinoma: glands and ductal nests in desmoplastic stroma ---------------------------------------
    if cid["adenocarcinoma"] in present:
        _glands(layout, cv, C, s, add_cells)
    # -- squamous carcinoma: nests of large pink cells with keratin pearls -----------------------------------------
    if cid["squamous_carcinoma"] in present:
        _squamous(layout, cv, C, s, add_cells, cells_for)
    # -- spindle-cell sarcoma: intersecting fascicles of cigar-shaped nuclei -----------------------------------
    if cid["spindle_sarcoma"] in present:
        sp = cid["spindle_sarcoma"] == C
        fas = ang_px + (value_noise(cv.xs, cv.ys, 220.0, s + 60, grid=True).astype(np.float32) - 0.5) * 2.4
        fib = fibre_noise(X, Y, fas, 18.0, 2.0, s + 61).astype(np.float32)
        cv.e += np.where(sp, 0.25 + 0.2 * fib, 0)
        sc = cells_for(9.5, 62, (cid["spindle_sarcoma"],))
        th = (_angle_at(layout, sc.x, sc.y)
              + (value_noise(sc.x, sc.y, 220.0, s + 60) - 0.5) * 2.4 + 0.15 * (sc.u(3) - 0.5))
        add_cells(sc, "spindle_sarcoma", 6.5 + 3.5 * sc.u(0), 1.7 + 1.0 * sc.u(1), th, 0.85 + 0.4 * sc.u(2),
                  13.0, 3.6, 0.12)
    # -- pleomorphic sarcoma: large bizarre nuclei, giant cells ------------------------------------------------
    if cid["pleomorphic_sarcoma"] in present:
        pl = cid["pleomorphic_sarcoma"] == C
        cv.e += np.where(pl, 0.22, 0)
        pc = cells_for(15.0, 70, (cid["pleomorphic_sarcoma"],), 0.5)
        a = np.exp(np.log(5.5) + 0.35 * (pc.u(0) - 0.5) * 3)
        add_cells(pc, "pleomorphic_sarcoma", a, a * (0.45 + 0.5 * pc.u(1)), pc.u(2) * np.pi, 0.95 + 0.7 * pc.u(3),
                  a * 1.8, a * 1.5, 0.2, grain=0.5)
        gc = cells_for(110.0, 71, (cid["pleomorphic_sarcoma"],))
        gc = gc.take(gc.u(0) < 0.6)
        for k in range(4):  # giant cells: clusters of nuclei in a wide pink cell
            g = Cells(gc.x + (gc.u(10 + k) - 0.5) * 16, gc.y + (gc.u(20 + k) - 0.5) * 16, gc.i * 5 + k, gc.j,
                      gc.salt)
            add_cells(g, "pleomorphic_sarcoma", 6 + 4 * g.u(1), 4 + 2 * g.u(2), g.u(3) * np.pi, 1.3,
                      20.0 if k == 0 else None, 16.0, 0.3)
    cv.h *= tissue
    cv.e *= tissue


def _sites(X: np.ndarray, Y: np.ndarray, spacing: float, salt: int, jitter: float):
    """Jittered lattice sites around points (X, Y): a per-call table, hashed once per site, not per pixel."""
    gx, gy = np.floor(X / spacing).astype(np.int64), np.floor(Y / spacing).astype(np.int64)
    i0, j0 = int(gx.min()) - 1, int(gy.min()) - 1
    ii = np.arange(i0, int(gx.max()) + 2)
    jj = np.arange(j0, int(gy.max()) + 2)
    ti, tj = np.meshgrid(ii, jj)
    sx = (ti + 0.5 + jitter * (2 * hash01(ti, tj, salt) - 1)) * spacing
    sy = (tj + 0.5 + jitter * (2 * hash01(ti, tj, salt + 1) - 1)) * spacing
    return gx - i0, gy - j0, sx, sy, i0, j0


def _masked(fn, X, Y, mask, fills):
    """Evaluate ``fn`` on the pixels of ``mask`` only (None: all); other pixels get ``fills``."""
    if mask is None:
        return fn(X, Y)
    outs = [np.full(X.shape, f, dtype=np.float64 if isinstance(f, float) else np.int64) for f in fills]
    if mask.any():
        for o, v in zip(outs, fn(X[mask], Y[mask]), strict=True):
            o[mask] = v
    return tuple(outs)


def _voronoi_gap(X: np.ndarray, Y: np.ndarray, spacing: float, salt: int, mask=None):
    """Distances (um) to the nearest and second-nearest jittered lattice point (cell membranes of fat)."""

    def fn(X, Y):
        ci, cj, sx, sy, _, _ = _sites(X, Y, spacing, salt, 0.4)
        d1 = np.full(X.shape, np.inf)
        d2 = np.full(X.shape, np.inf)
        for ox in (-1, 0, 1):
            for oy in (-1, 0, 1):
                d = np.hypot(X - sx[cj + oy, ci + ox], Y - sy[cj + oy, ci + ox])
                d2 = np.where(d < d1, d1, np.minimum(d2, d))
                d1 = np.minimum(d1, d)
        return d1, d2

    return _masked(fn, X, Y, mask, (1e9, 2e9))


def _nearest_site(X, Y, spacing: float, salt: int, mask=None):
    """Nearest jittered lattice site per point: (distance um, dx, dy, site i, site j)."""

    def fn(X, Y):
        ci, cj, sx, sy, i0, j0 = _sites(X, Y, spacing, salt, 0.3)
        best = np.full(X.shape, np.inf)
        bdx, bdy = np.zeros(X.shape), np.zeros(X.shape)
        bi, bj = np.zeros(X.shape, np.int64), np.zeros(X.shape, np.int64)
        for ox in (-1, 0, 1):
            for oy in (-1, 0, 1):
                dx, dy = X - sx[cj + oy, ci + ox], Y - sy[cj + oy, ci + ox]
                d = np.hypot(dx, dy)
                closer = d < best
                best = np.where(closer, d, best)
                bdx, bdy = np.where(closer, dx, bdx), np.where(closer, dy, bdy)
                bi, bj = np.where(closer, ci + ox + i0, bi), np.where(closer, cj + oy + j0, bj)
        return best, bdx, bdy, bi, bj

    return _masked(fn, X, Y, mask, (1e9, 0.0, 0.0, 0, 0))


def _glands(layout: Layout, cv: Canvas, C: np.ndarray, s: int, add_cells) -> None:
    X, Y = cv.XY
    cls = CLASS_ID["adenocarcinoma"]
    ad = cls == C
    spacing = 95.0
    d, dx, dy, gi, gj = _nearest_site(X, Y, spacing, s + 80, ad)
    lumen = 6.0 + 22.0 * hash01(gi, gj, s + 82)  # some glands nearly solid (ductal nests)
    wall = 13.0 + 7.0 * hash01(gi, gj, s + 83)
    wob = 1 + 0.22 * np.sin(np.arctan2(dy, dx) * (2 + (hash01(gi, gj, s + 84) * 4).astype(int))
                            + 6 * hash01(gi, gj, s + 85))
    dn = d / wob
    epi = ad & (dn >= lumen) & (dn < lumen + wall)
    lum = ad & (dn < lumen)
    cv.e = np.where(lum, 0.04, np.where(epi, 0.36, cv.e)).astype(np.float32)
    # epithelial cells: a dense lattice kept where it falls in a gland wall, nuclei toward the base
    x0, y0 = cv.x0, cv.y0
    cells = _cells_in(layout, lattice(x0, y0, x0 + cv.nx * cv.mpp, y0 + cv.ny * cv.mpp, 7.5, s + 86, 0.3), (cls,))
    if not len(cells):
        return
    cd, cdx, cdy, ci, cj = _nearest_site(cells.x, cells.y, spacing, s + 80)
    cl = 6.0 + 22.0 * hash01(ci, cj, s + 82)
    cw = 13.0 + 7.0 * hash01(ci, cj, s + 83)
    cwob = 1 + 0.22 * np.sin(np.arctan2(cdy, cdx) * (2 + (hash01(ci, cj, s + 84) * 4).astype(int))
                             + 6 * hash01(ci, cj, s + 85))
    cdn = cd / cwob
    keep = (cdn >= cl + 2.5) & (cdn < cl + cw - 1.0)
    cells = cells.take(keep)
    radial = np.arctan2(cdy[keep], cdx[keep])
    a = 3.8 + 1.8 * cells.u(0)
    add_cells(cells, "adenocarcinoma", a, a * (0.65 + 0.25 * cells.u(1)), radial, 0.8 + 0.35 * cells.u(2),
              a * 1.5, a * 1.25, 0.1)


def _squamous(layout: Layout, cv: Canvas, C: np.ndarray, s: int, add_cells, cells_for) -> None:
    X, Y = cv.XY
    cls = CLASS_ID["squamous_carcinoma"]
    sq = cls == C
    nest_field = value_noise(cv.xs, cv.ys, 70.0, s + 90, grid=True)
    nests = sq & (nest_field > 0.38)
    cv.e = np.where(nests, 0.55 + 0.12 * value_noise(cv.xs, cv.ys, 6.0, s + 91, grid=True), cv.e).astype(np.float32)
    cells = cells_for(12.5, 92, (cls,), 0.35)
    if len(cells):
        keep = value_noise(cells.x, cells.y, 70.0, s + 90) > 0.4
        cells = cells.take(keep)
        a = 4.0 + 2.2 * cells.u(0)
        add_cells(cells, "squamous_carcinoma", a, a * (0.7 + 0.3 * cells.u(1)), cells.u(2) * np.pi,
                  0.75 + 0.35 * cells.u(3), 7.0, 6.2, 0.12)
    # keratin pearls: concentric eosinophilic whorls inside nests
    d, dx, dy, gi, gj = _nearest_site(X, Y, 160.0, s + 93, nests)
    rad = 12.0 + 16.0 * hash01(gi, gj, s + 94)
    centre_x, centre_y = X - dx, Y - dy
    inside = value_noise(centre_x, centre_y, 70.0, s + 90) > 0.55
    pearl = nests & inside & (d < rad)
    cv.e = np.where(pearl, 0.8 + 0.25 * np.cos(d / 2.2), cv.e).astype(np.float32)
    cv.h *= np.where(pearl, 0.15, 1.0).astype(np.float32)


def _vessels(layout: Layout, cv: Canvas, C: np.ndarray, s: int, mk: str) -> None:
    X, Y = cv.XY
    host = np.isin(C, (CLASS_ID["fibrous_stroma"], CLASS_ID["adipose"]))
    d, dx, dy, gi, gj = _nearest_site(X, Y, 240.0, s + 100, host)
    exists = hash01(gi, gj, s + 101) < 0.6
    ra = 8.0 + 28.0 * hash01(gi, gj, s + 102)
    rb = ra * (0.4 + 0.5 * hash01(gi, gj, s + 103))
    th = np.pi * hash01(gi, gj, s + 104)
    u = (dx * np.cos(th) + dy * np.sin(th)) / ra
    v = (-dx * np.sin(th) + dy * np.cos(th)) / rb
    r = np.sqrt(u * u + v * v)
    lumen = host & exists & (r < 1)
    wall = host & exists & (r >= 1) & (r < 1.35)
    endo = host & exists & (r >= 0.93) & (r < 1.07)
    rbc = lumen & (value_noise(cv.xs, cv.ys, 4.0, s + 105, grid=True) > 0.55)
    cv.e = np.where(lumen, np.where(rbc, 1.0, 0.03), np.where(wall, cv.e + 0.4, cv.e)).astype(np.float32)
    cv.h += np.where(endo & (value_noise(cv.xs, cv.ys, 5.0, s + 106, grid=True) > 0.6), 0.7, 0).astype(np.float32)
    cv.h += np.where(wall & (value_noise(cv.xs, cv.ys, 4.0, s + 107, grid=True) > 0.72), 0.6, 0).astype(np.float32)
    if mk != "HE":
        for part, name in ((wall, "vessel_wall"), (endo, "endothelium")):
            frac, lvl = _expr(name, mk)
            if frac > 0:
                cv.d += np.where(part, DAB_OD[lvl], 0).astype(np.float32)


def _to_rgb(cv: Canvas, stain: Stain, layout: Layout, C: np.ndarray) -> np.ndarray:
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
            here = _lookup(layout, mask, X, Y)
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


# ---- patches for training -----------------------------------------------------------------------------------
def render_patch(fine_class: int, seed: int, mpp: float, size_px: int, marker: str = "HE") -> np.ndarray:
    """A ``size_px`` square RGB patch of one tissue class (id in :data:`CLASSES`) at ``mpp`` um/px."""
    if not 1 <= fine_class < len(CLASSES):
        raise ValueError(f"fine_class must be 1..{len(CLASSES) - 1}, got {fine_class}")
    rng = np.random.default_rng([seed, 303])
    side_um = size_px * mpp + 200
    n = int(np.ceil(side_um / 8.0)) + 2
    labels = np.full((n, n), fine_class, np.uint8)
    angles = np.full((n, n), rng.uniform(0, np.pi), np.float32)
    angles += (0.5 * _smooth_noise(rng, (n, n), n / 4)).astype(np.float32)
    layout = Layout(labels, angles, 8.0, int(seed) % 1_000_000 + 1)
    stain = Stain.for_slide(marker, seed)
    return render_region(layout, stain, 100.0, 100.0, size_px, size_px, mpp)
