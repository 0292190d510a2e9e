"""Procedural H&E-like tissue textures for training: morphology in many stain colours.

The real labelled patches confound class with source (carcinoma: colorectal, purple, 0.5 um/px; sarcoma: one
osteosarcoma case, pink, ~1 um/px), so a model can learn colour instead of morphology. These textures give each
class its defining morphology -- carcinoma: glands, solid nests, squamous nests with keratin pearls; sarcoma:
spindle-cell fascicles, pleomorphic sheets, atypical cells in osteoid; non-tumour: fat, muscle, collagenous
stroma, lymphocytes, vessels, necrotic debris -- under random haematoxylin/eosin strengths, so colour carries no
class information. They complement pipeline.synth.render's patches (used as well).

Rendering: haematoxylin and eosin optical-density maps (um-scaled geometry, drawn at ``mpp`` um/px) turned into
RGB with the Beer-Lambert law and the Ruifrok & Johnston stain vectors.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

# kind -> model class; the kinds of a class are drawn in turn
KINDS: dict[str, str] = {
    "glands": "carcinoma", "solid_nests": "carcinoma", "squamous_nests": "carcinoma",
    "spindle_fascicles": "sarcoma", "pleomorphic": "sarcoma", "osteoid": "sarcoma",
    "fat": "non_tumour", "muscle": "non_tumour", "stroma": "non_tumour", "lymphocytes": "non_tumour",
    "vessels": "non_tumour", "necrosis": "non_tumour",
}
_H = np.array([0.65, 0.70, 0.29])
_E = np.array([0.07, 0.99, 0.11])
_H, _E = _H / np.linalg.norm(_H), _E / np.linalg.norm(_E)


class _Canvas:
    """H and E optical-density maps of ``size`` px at ``mpp`` um/px with um-based drawing helpers."""

    def __init__(self, size: int, mpp: float, rng: np.random.Generator):
        self.size, self.mpp, self.rng = size, mpp, rng
        self.h = np.zeros((size, size))
        self.e = np.zeros((size, size))
        self.yy, self.xx = np.mgrid[0:size, 0:size].astype(np.float64)

    def px(self, um: float) -> float:
        return um / self.mpp

    def noise(self, sigma_um: float, aniso: float = 1.0, angle: float = 0.0) -> np.ndarray:
        """Smooth noise in [0, 1]; ``aniso`` > 1 stretches it along ``angle`` (fibres)."""
        n = self.rng.normal(size=(self.size, self.size))
        s = max(0.5, self.px(sigma_um))
        if aniso != 1.0:
            n = ndi.rotate(ndi.gaussian_filter(ndi.rotate(n, -np.degrees(angle), reshape=False, mode="wrap"),
                                               (s, s * aniso), mode="wrap"), np.degrees(angle), reshape=False,
                           mode="wrap")
        else:
            n = ndi.gaussian_filter(n, s, mode="wrap")
        n -= n.min()
        return n / max(n.max(), 1e-9)

    def stroma(self, strength: float = 0.45, angle: float | None = None):
        angle = self.rng.uniform(0, np.pi) if angle is None else angle
        fibres = self.noise(1.5, aniso=6.0, angle=angle)
        self.e += strength * (0.8 + 0.6 * fibres) * (0.8 + 0.2 * self.noise(20))

    def nucleus(self, cy: float, cx: float, a_um: float, b_um: float, theta: float, od: float,
                chromatin: float = 0.3):
        """An elliptical nucleus (semi-axes in um) with a soft edge and granular chromatin."""
        a, b = self.px(a_um), self.px(b_um)
        r = int(np.ceil(max(a, b))) + 2
        y0, y1 = int(max(0, cy - r)), int(min(self.size, cy + r + 1))
        x0, x1 = int(max(0, cx - r)), int(min(self.size, cx + r + 1))
        if y1 <= y0 or x1 <= x0:
            return
        dy, dx = self.yy[y0:y1, x0:x1] - cy, self.xx[y0:y1, x0:x1] - cx
        c, s = np.cos(theta), np.sin(theta)
        u, v = (dx * c + dy * s) / max(a, 0.5), (-dx * s + dy * c) / max(b, 0.5)
        d = np.sqrt(u * u + v * v)
        mask = np.clip(1.5 - d * 1.2, 0, 1) ** 0.7
        grain = 1 + chromatin * self.rng.normal(size=mask.shape)
        self.h[y0:y1, x0:x1] += od * mask * grain
        self.e[y0:y1, x0:x1] *= 1 - 0.5 * mask

    def scatter(self, spacing_um: float, region: np.ndarray | None = None, jitter: float = 0.45):
        """Cell centres on a jittered grid of ``spacing_um`` inside ``region`` (bool mask)."""
        step = self.px(spacing_um)
        g = np.arange(-step, self.size + step, step)
        cy, cx = (a.ravel() for a in np.meshgrid(g, g, indexing="ij"))
        cy = cy + self.rng.uniform(-jitter, jitter, cy.shape) * step
        cx = cx + self.rng.uniform(-jitter, jitter, cx.shape) * step
        inside = (cy >= -step) & (cy < self.size + step) & (cx >= -step) & (cx < self.size + step)
        cy, cx = cy[inside], cx[inside]
        if region is not None:
            iy, ix = np.clip(cy.astype(int), 0, self.size - 1), np.clip(cx.astype(int), 0, self.size - 1)
            keep = region[iy, ix]
            cy, cx = cy[keep], cx[keep]
        return cy, cx

    def blobs(self, scale_um: float, fraction: float) -> np.ndarray:
        n = self.noise(scale_um)
        return n > np.quantile(n, 1 - fraction)


# ---- kinds ----------------------------------------------------------------------------------------------------
def _glands(c: _Canvas):
    r = c.rng
    c.stroma(0.35)
    for _ in range(r.integers(3, 8)):
        cy, cx = r.uniform(0, c.size, 2)
        lumen, wall = r.uniform(8, 30), r.uniform(10, 18)
        wobble = 1 + 0.25 * np.sin(np.arctan2(c.yy - cy, c.xx - cx) * r.integers(2, 6) + r.uniform(0, 6))
        d = np.hypot(c.yy - cy, c.xx - cx) * c.mpp / wobble
        epi = (d >= lumen) & (d < lumen + wall)
        c.e[d < lumen + wall] = 0.0
        c.e[epi] += 0.5
        c.h[d < lumen] = 0.0
        n = int(2 * np.pi * (lumen + wall / 2) / r.uniform(4, 6))
        for k in range(n):
            ang = 2 * np.pi * k / n + r.normal(0, 0.05)
            rad = (lumen + wall * r.uniform(0.25, 0.8)) * (1 + 0.25 * np.sin(ang * 3))
            c.nucleus(cy + c.px(rad) * np.sin(ang), cx + c.px(rad) * np.cos(ang), r.uniform(4, 7),
                      r.uniform(2, 3.5), ang, r.uniform(0.7, 1.1))


def _solid_nests(c: _Canvas, squamous: bool = False):
    r = c.rng
    c.stroma(0.35)
    nests = c.blobs(r.uniform(15, 30), r.uniform(0.4, 0.7))
    c.e[nests] = 0.75 if squamous else 0.45
    c.e[nests] *= 0.8 + 0.4 * c.noise(3)[nests]
    spacing = r.uniform(14, 20) if squamous else r.uniform(9, 13)
    for y, x in zip(*c.scatter(spacing, nests), strict=True):
        a = r.uniform(3.5, 7.0)
        c.nucleus(y, x, a, a * r.uniform(0.6, 1.0), r.uniform(0, np.pi), r.uniform(0.7, 1.3), 0.4)
    if squamous:  # keratin pearls: concentric eosinophilic whorls
        lab, n = ndi.label(nests)
        for i in range(1, min(n, 4) + 1):
            ys, xs = np.nonzero(lab == i)
            if len(ys) < 400:
                continue
            cy, cx = ys.mean(), xs.mean()
            d = np.hypot(c.yy - cy, c.xx - cx) * c.mpp
            rad = r.uniform(10, 25)
            pearl = d < rad
            c.e[pearl] = 0.9 + 0.3 * np.cos(d[pearl] / 2.0)
            c.h[pearl] *= 0.2


def _spindle_fascicles(c: _Canvas):
    r = c.rng
    base = r.uniform(0, np.pi)
    field = base + (c.noise(60) - 0.5) * r.uniform(0.5, 2.0)
    c.stroma(0.3, angle=base)
    c.e += 0.15
    for y, x in zip(*c.scatter(r.uniform(7, 10)), strict=True):
        th = field[int(np.clip(y, 0, c.size - 1)), int(np.clip(x, 0, c.size - 1))]
        c.nucleus(y, x, r.uniform(6, 12), r.uniform(1.8, 3.5), th + r.normal(0, 0.1), r.uniform(0.8, 1.3), 0.35)


def _pleomorphic(c: _Canvas):
    r = c.rng
    c.stroma(0.25)
    c.e += 0.25
    for y, x in zip(*c.scatter(r.uniform(10, 15), jitter=0.5), strict=True):
        a = r.lognormal(np.log(6), 0.35)
        c.nucleus(y, x, a, a * r.uniform(0.4, 1.0), r.uniform(0, np.pi), r.uniform(0.9, 1.6), 0.5)
    for _ in range(r.integers(0, 3)):  # bizarre giant cells
        y, x = r.uniform(0, c.size, 2)
        for _ in range(r.integers(2, 6)):
            c.nucleus(y + r.normal(0, c.px(6)), x + r.normal(0, c.px(6)), r.uniform(6, 12), r.uniform(4, 8),
                      r.uniform(0, np.pi), 1.3)


def _osteoid(c: _Canvas):
    r = c.rng
    lace = c.noise(r.uniform(4, 8))
    matrix = (lace > 0.45) & (lace < 0.65)
    c.e += 0.3
    c.e[matrix] += 0.6
    for y, x in zip(*c.scatter(r.uniform(9, 13), ~matrix), strict=True):
        a = r.lognormal(np.log(5.5), 0.3)
        c.nucleus(y, x, a, a * r.uniform(0.5, 1.0), r.uniform(0, np.pi), r.uniform(0.9, 1.5), 0.5)


def _fat(c: _Canvas):
    r = c.rng
    n = int((c.size * c.mpp / r.uniform(40, 90)) ** 2) + 2
    pts = r.uniform(0, c.size, (n, 2))
    from scipy.spatial import cKDTree

    d, _ = cKDTree(pts).query(np.c_[c.yy.ravel(), c.xx.ravel()], k=2)
    edge = (d[:, 1] - d[:, 0]).reshape(c.size, c.size) < c.px(1.5)
    c.e[edge] = 0.5
    ey, ex = np.nonzero(edge)
    for i in r.choice(len(ey), size=min(len(ey), r.integers(2, 8)), replace=False):
        c.nucleus(ey[i], ex[i], 4, 1.5, r.uniform(0, np.pi), 0.8)


def _muscle(c: _Canvas):
    r = c.rng
    ang = r.uniform(0, np.pi)
    proj = (c.xx * np.cos(ang) + c.yy * np.sin(ang)) * c.mpp
    width = r.uniform(8, 20)
    phase = (proj / width) % 1.0
    c.e += 0.7 * (phase > 0.08) * (0.85 + 0.15 * c.noise(2, aniso=4, angle=ang + np.pi / 2))
    along = -c.xx * np.sin(ang) + c.yy * np.cos(ang)
    c.e *= 1 + 0.08 * np.sin(along * c.mpp * 2 * np.pi / 2.5)  # faint cross striation
    for y, x in zip(*c.scatter(r.uniform(25, 45)), strict=True):
        c.nucleus(y, x, r.uniform(5, 8), r.uniform(1.5, 2.2), ang + np.pi / 2, 0.8)


def _stroma(c: _Canvas):
    r = c.rng
    c.stroma(r.uniform(0.5, 0.8))
    for y, x in zip(*c.scatter(r.uniform(20, 35)), strict=True):
        c.nucleus(y, x, r.uniform(3, 6), r.uniform(1, 1.8), r.uniform(0, np.pi), 0.8)


def _lymphocytes(c: _Canvas):
    r = c.rng
    c.stroma(0.25)
    dense = c.blobs(30, r.uniform(0.6, 1.0)) if r.random() < 0.5 else np.ones((c.size, c.size), bool)
    for y, x in zip(*c.scatter(r.uniform(5.5, 8), dense, jitter=0.35), strict=True):
        a = r.uniform(2.5, 3.5)
        c.nucleus(y, x, a, a * r.uniform(0.85, 1.0), 0.0, r.uniform(1.2, 1.6), 0.15)


def _vessels(c: _Canvas):
    r = c.rng
    c.stroma(0.45)
    for _ in range(r.integers(2, 6)):
        cy, cx = r.uniform(0, c.size, 2)
        ra, rb, th = r.uniform(8, 40), r.uniform(5, 20), r.uniform(0, np.pi)
        u = ((c.xx - cx) * np.cos(th) + (c.yy - cy) * np.sin(th)) * c.mpp / ra
        v = (-(c.xx - cx) * np.sin(th) + (c.yy - cy) * np.cos(th)) * c.mpp / rb
        d = np.sqrt(u * u + v * v)
        c.e[d < 1] = 0.0
        c.e[(d >= 1) & (d < 1.25)] += 0.5
        rbc = (d < 1) & (r.random((c.size, c.size)) < 0.5) & (c.noise(3) > 0.5)
        c.e[rbc] = 1.4
        for k in range(int(2 * np.pi * max(ra, rb) / 15)):
            a = 2 * np.pi * k / max(1, int(2 * np.pi * max(ra, rb) / 15))
            y = cy + c.px(ra) * 1.1 * np.sin(a) * np.cos(th) + c.px(rb) * 1.1 * np.cos(a) * np.sin(th)
            x = cx + c.px(ra) * 1.1 * np.cos(a) * np.cos(th) - c.px(rb) * 1.1 * np.sin(a) * np.sin(th)
            c.nucleus(y, x, 5, 1.3, a + np.pi / 2 + th, 0.8)


def _necrosis(c: _Canvas):
    r = c.rng
    c.e += 0.5 + 0.4 * c.noise(4)
    c.e *= 0.7 + 0.3 * (r.random((c.size, c.size)) < 0.7)
    for y, x in zip(*c.scatter(r.uniform(6, 10), jitter=0.5), strict=True):  # karyorrhectic dust
        a = r.uniform(0.6, 1.8)
        c.nucleus(y, x, a, a, 0.0, r.uniform(0.8, 1.5), 0.2)


_DRAW = {"glands": _glands, "solid_nests": _solid_nests, "squamous_nests": lambda c: _solid_nests(c, True),
         "spindle_fascicles": _spindle_fascicles, "pleomorphic": _pleomorphic, "osteoid": _osteoid,
         "fat": _fat, "muscle": _muscle, "stroma": _stroma, "lymphocytes": _lymphocytes, "vessels": _vessels,
         "necrosis": _necrosis}


def render_texture(kind: str, seed: int, size_px: int, mpp: float = 1.0) -> np.ndarray:
    """A ``size_px`` square H&E-like RGB uint8 patch of tissue ``kind`` at ``mpp`` um/px (deterministic per seed)."""
    if kind not in _DRAW:
        raise ValueError(f"unknown texture kind {kind!r}; known: {', '.join(_DRAW)}")
    rng = np.random.default_rng(seed)
    c = _Canvas(size_px, mpp, rng)
    _DRAW[kind](c)
    if rng.random() < 0.15:  # an edge of glass: glass is not a class cue
        edge = c.noise(40) < rng.uniform(0.1, 0.3)
        c.h[edge] = 0.0
        c.e[edge] = 0.0
    h_strength, e_strength = rng.uniform(0.5, 1.4), rng.uniform(0.5, 1.4)
    od = (np.clip(c.h, 0, 3)[..., None] * h_strength * _H + np.clip(c.e, 0, 3)[..., None] * e_strength * _E)
    od = ndi.gaussian_filter(od, (0.6, 0.6, 0)) + rng.normal(0, 0.015, od.shape)
    glass = rng.uniform(235, 250, 3)
    return np.clip(glass * np.exp(-od * 1.2), 0, 255).astype(np.uint8)
