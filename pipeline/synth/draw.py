"""Histology drawn onto a canvas: per tissue class, its cells, fibres and spaces as optical densities.

:func:`draw` paints every class present in a region onto the haematoxylin, eosin and DAB layers of a
:class:`~pipeline.synth.cells.Canvas`, one named step per tissue (stroma and vessels, fat, skeletal muscle,
lymphoid aggregates, glands, squamous nests, spindle-cell fascicles, pleomorphic cells). Cells come from hashed
lattices, so nuclear size is physical (7-12 um across for tumour nuclei; spindle nuclei 12-22 um long) and an
IHC slide of a case shows exactly the cells of its H&E slide; positive cells get DAB in the marker's compartment
(:data:`pipeline.synth.classes.COMPARTMENT`) as often and as strongly as :data:`~pipeline.synth.classes.EXPRESSION`
says.
"""

from __future__ import annotations

import numpy as np

from pipeline.synth import populations as pop
from pipeline.synth.cells import Canvas, Cells, lattice
from pipeline.synth.classes import CLASS_ID, COMPARTMENT, DAB_OD, expression
from pipeline.synth.colour import Stain
from pipeline.synth.layout import Layout, angle_at, cells_in, lookup
from pipeline.synth.noise import fibre_noise, hash01, nearest_site, value_noise, voronoi_gap


def _positive(cells: Cells, tissue: str, marker: str) -> np.ndarray:
    """DAB optical density per cell for ``marker`` in ``tissue`` (0 for negative cells)."""
    frac, _ = expression(tissue, marker)
    if frac <= 0 or len(cells) == 0:
        return np.zeros(len(cells))
    pos, lvl = pop.positivity(cells, tissue, marker)
    return pos * np.array([DAB_OD[int(v)] for v in range(4)])[lvl]


def _compartments(marker: str) -> tuple[bool, bool, bool]:
    comp = COMPARTMENT.get(marker, "")
    return "nuclear" in comp, "cytoplasmic" in comp, comp == "membranous"


class _Painter:
    """One region being drawn: the canvas, its class map ``C``, the layout and the stain's marker."""

    def __init__(self, layout: Layout, stain: Stain, cv: Canvas, C: np.ndarray):
        self.layout, self.cv, self.C = layout, cv, C
        self.s = layout.seed * 1000  # salt of this slide's hashed numbers
        self.mk = stain.marker
        self.nuc_dab, self.cyto_dab, self.mem_dab = _compartments(self.mk)
        X, Y = cv.XY
        self.ang_px = lookup(layout, layout.angles, X, Y).astype(np.float32)

    def cells_for(self, spacing: float, salt: int, classes: tuple[int, ...], jitter: float = 0.45) -> Cells:
        """Lattice cells of the region whose centres lie in ``classes``."""
        x0, y0, x1, y1 = self.cv.bounds_um()
        return cells_in(self.layout, lattice(x0, y0, x1, y1, spacing, self.s + salt, jitter), classes)

    def add_cells(self, cells: Cells, tissue_name: str, a, b, theta, od, cyto_a=None, cyto_b=None,
                  cyto_e: float = 0.0, grain: float = 0.35) -> None:
        """Nuclei (+ cytoplasm) of cells; DAB in the marker's compartment of positive cells."""
        cv = self.cv
        cv.h += cv.splat(cells, a, b, theta, od, "nucleus", grain)
        dab = _positive(cells, tissue_name, self.mk) if self.mk != "HE" else np.zeros(len(cells))
        if cyto_a is not None:
            if cyto_e:
                cv.e += cv.splat(cells, cyto_a, cyto_b, theta, cyto_e, "disc")
            if self.cyto_dab and dab.any():
                cv.d += cv.splat(cells, cyto_a, cyto_b, theta, dab * 0.85, "disc", 0.2)
            if self.mem_dab and dab.any():
                cv.d += cv.splat(cells, cyto_a, cyto_b, theta, dab * 1.2, "ring")
        if self.nuc_dab and dab.any():
            cv.d += cv.splat(cells, a, b, theta, dab * 1.1, "disc", 0.25)

    def dab_level(self, tissue_name: str) -> float | None:
        """DAB optical density of ``tissue_name`` for this slide's marker (None: H&E or not expressed)."""
        if self.mk == "HE":
            return None
        frac, lvl = expression(tissue_name, self.mk)
        return DAB_OD[lvl] if frac > 0 else None


def draw(layout: Layout, stain: Stain, cv: Canvas, C: np.ndarray, present: set[int]) -> None:
    """Paint the tissue classes ``present`` in the class map ``C`` onto ``cv`` (glass stays empty)."""
    p = _Painter(layout, stain, cv, C)
    _stroma(p, present)
    for name, step in _CLASS_STEPS:
        if CLASS_ID[name] in present:
            step(p)
    tissue = C > 0
    cv.h *= tissue
    cv.e *= tissue


# ---- stroma (also the background of tumours) and vessels ------------------------------------------------
def _stroma(p: _Painter, present: set[int]) -> None:
    cv, C, s = p.cv, p.C, p.s
    X, Y = cv.XY
    collagen = fibre_noise(X, Y, p.ang_px, 16.0, 3.0, s + 10).astype(np.float32)
    base_e = 0.32 * (0.55 + 0.9 * collagen)
    stromal = np.isin(C, (1, 2, 3, 4, 7, 8))
    cv.e += np.where(stromal, base_e, 0)
    cid = CLASS_ID
    if cid["fibrous_stroma"] in present:
        st = cid["fibrous_stroma"] == C
        cv.e += np.where(st, 0.18 * collagen, 0)
        fb = pop.fibroblasts(p.cells_for, p.layout, s)
        p.add_cells(fb, "fibrous_stroma", 4.5 + 1.5 * fb.u(0), 1.1 + 0.4 * fb.u(1), angle_at(p.layout, fb.x, fb.y),
                    0.75, 6.0, 1.6)
    if present & {cid["fibrous_stroma"], cid["adipose"]}:
        _vessels(p)


def _vessels(p: _Painter) -> None:
    cv, C, s = p.cv, p.C, p.s
    X, Y = cv.XY
    host = np.isin(C, (CLASS_ID["fibrous_stroma"], CLASS_ID["adipose"]))
    d, dx, dy, gi, gj = nearest_site(X, Y, 240.0, s + 100, host)
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
    rbc = lumen & (cv.noise(4.0, s + 105) > 0.55)
    cv.e = np.where(lumen, np.where(rbc, 1.0, 0.03), np.where(wall, cv.e + 0.4, cv.e)).astype(np.float32)
    cv.h += np.where(endo & (cv.noise(5.0, s + 106) > 0.6), 0.7, 0).astype(np.float32)
    cv.h += np.where(wall & (cv.noise(4.0, s + 107) > 0.72), 0.6, 0).astype(np.float32)
    for part, name in ((wall, "vessel_wall"), (endo, "endothelium")):
        od = p.dab_level(name)
        if od is not None:
            cv.d += np.where(part, od, 0).astype(np.float32)


# ---- non-tumour tissue ------------------------------------------------------------------------------------
def _adipose(p: _Painter) -> None:
    """Large empty cells with thin membranes."""
    cv = p.cv
    X, Y = cv.XY
    fat = CLASS_ID["adipose"] == p.C
    d1, d2 = voronoi_gap(X, Y, 65.0, p.s + 30, fat)
    membrane = fat & (d2 - d1 < 2.2)
    cv.e += np.where(membrane, 0.42, 0)
    od = p.dab_level("adipose")
    if od is not None:
        cv.d += np.where(membrane, od * 0.9, 0)
    an = pop.fat_nuclei(p.cells_for, p.layout, p.s)
    p.add_cells(an, "adipose", 4.0, 1.3, an.u(2) * np.pi, 0.7)


def _myxoid_stroma(p: _Painter) -> None:
    """Loose / myxoid stroma: pale bluish ground substance, wisps of collagen, sparse stellate cells."""
    cv, s = p.cv, p.s
    X, Y = cv.XY
    mx = CLASS_ID["myxoid_stroma"] == p.C
    wisp = np.clip(fibre_noise(X, Y, p.ang_px, 30.0, 2.5, s + 110) - 0.55, 0, 1).astype(np.float32)
    cv.h += np.where(mx, 0.025 + 0.025 * cv.noise(40.0, s + 111), 0).astype(np.float32)
    cv.e += np.where(mx, 0.04 + 0.35 * wisp, 0).astype(np.float32)
    mc = pop.myxoid_cells(p.cells_for, p.layout, s)
    p.add_cells(mc, "myxoid_stroma", 3.5 + 2.0 * mc.u(0), 1.4 + 0.8 * mc.u(1), mc.u(2) * np.pi, 0.7, 7.0, 2.0, 0.15)


def _skeletal_muscle(p: _Painter) -> None:
    """Long eosinophilic fibres with peripheral nuclei."""
    cv, s, ang_px = p.cv, p.s, p.ang_px
    X, Y = cv.XY
    mus = CLASS_ID["skeletal_muscle"] == p.C
    across = -X * np.sin(ang_px) + Y * np.cos(ang_px)
    along = X * np.cos(ang_px) + Y * np.sin(ang_px)
    width = pop.MUSCLE_FIBRE_UM
    wob = (cv.noise(60.0, s + 40) - 0.5) * 10
    phase = ((across + wob) / width) % 1.0
    fibre = mus & (phase > 0.09)
    texture = 0.85 + 0.3 * value_noise(along.ravel() / 3.0, across.ravel() / 25.0, 1.0, s + 41).reshape(X.shape)
    cv.e += np.where(fibre, 0.8 * texture, np.where(mus, 0.05, 0)).astype(np.float32)
    od = p.dab_level("skeletal_muscle")
    if od is not None:
        cv.d += np.where(fibre, od * (0.8 + 0.2 * texture), 0).astype(np.float32)
    mn, a = pop.muscle_nuclei_and_angles(p.cells_for, p.layout, s)  # nuclei at the fibres' edges
    if len(mn):
        p.add_cells(mn, "skeletal_muscle", 5.5, 1.7, a, 1.0)


def _lymphoid(p: _Painter) -> None:
    """Aggregates of small round dark nuclei."""
    ly = pop.lymphocytes(p.cells_for, p.layout, p.s)
    p.add_cells(ly, "lymphoid", 2.9 + 0.5 * ly.u(0), 2.7 + 0.4 * ly.u(1), ly.u(2) * np.pi, 1.25, 3.6, 3.4,
                grain=0.15)


# ---- carcinomas -------------------------------------------------------------------------------------------
def _glands(p: _Painter) -> None:
    """Adenocarcinoma: glands and ductal nests in desmoplastic stroma."""
    cv, s = p.cv, p.s
    X, Y = cv.XY
    cls = CLASS_ID["adenocarcinoma"]
    ad = cls == p.C
    d, dx, dy, gi, gj = nearest_site(X, Y, pop.GLAND_SPACING_UM, s + 80, ad)
    dn, lumen, wall = pop.gland_radius(d, dx, dy, gi, gj, s)
    epi = ad & (dn >= lumen) & (dn < lumen + wall)
    lum = ad & (dn < lumen)
    cv.e = np.where(lum, 0.04, np.where(epi, 0.36, cv.e)).astype(np.float32)
    # epithelial cells: a dense lattice kept where it falls in a gland wall, nuclei toward the base
    cells, radial = pop.gland_cells_and_radial(p.cells_for, p.layout, s)
    if not len(cells):
        return
    a = 3.8 + 1.8 * cells.u(0)
    p.add_cells(cells, "adenocarcinoma", a, a * (0.65 + 0.25 * cells.u(1)), radial, 0.8 + 0.35 * cells.u(2),
                a * 1.5, a * 1.25, 0.1)


def _squamous(p: _Painter) -> None:
    """Squamous carcinoma: nests of large pink cells with keratin pearls."""
    cv, s = p.cv, p.s
    X, Y = cv.XY
    cls = CLASS_ID["squamous_carcinoma"]
    sq = cls == p.C
    nest_field = cv.noise(70.0, s + 90)
    nests = sq & (nest_field > 0.38)
    cv.e = np.where(nests, 0.55 + 0.12 * cv.noise(6.0, s + 91), cv.e).astype(np.float32)
    cells = pop.squamous_cells(p.cells_for, p.layout, s)
    if len(cells):
        a = 4.0 + 2.2 * cells.u(0)
        p.add_cells(cells, "squamous_carcinoma", a, a * (0.7 + 0.3 * cells.u(1)), cells.u(2) * np.pi,
                    0.75 + 0.35 * cells.u(3), 7.0, 6.2, 0.12)
    # keratin pearls: concentric eosinophilic whorls inside nests
    d, dx, dy, gi, gj = nearest_site(X, Y, 160.0, s + 93, nests)
    rad = 12.0 + 16.0 * hash01(gi, gj, s + 94)
    centre_x, centre_y = X - dx, Y - dy
    inside = value_noise(centre_x, centre_y, 70.0, s + 90) > 0.55
    pearl = nests & inside & (d < rad)
    cv.e = np.where(pearl, 0.8 + 0.25 * np.cos(d / 2.2), cv.e).astype(np.float32)
    cv.h *= np.where(pearl, 0.15, 1.0).astype(np.float32)


# ---- sarcomas ---------------------------------------------------------------------------------------------
def _spindle_sarcoma(p: _Painter) -> None:
    """Intersecting fascicles of cigar-shaped nuclei."""
    cv, s = p.cv, p.s
    X, Y = cv.XY
    sp = CLASS_ID["spindle_sarcoma"] == p.C
    fas = p.ang_px + (cv.noise(220.0, s + 60).astype(np.float32) - 0.5) * 2.4
    fib = fibre_noise(X, Y, fas, 18.0, 2.0, s + 61).astype(np.float32)
    cv.e += np.where(sp, 0.25 + 0.2 * fib, 0)
    sc = pop.spindle_cells(p.cells_for, p.layout, s)
    th = (angle_at(p.layout, sc.x, sc.y)
          + (value_noise(sc.x, sc.y, 220.0, s + 60) - 0.5) * 2.4 + 0.15 * (sc.u(3) - 0.5))
    p.add_cells(sc, "spindle_sarcoma", 6.5 + 3.5 * sc.u(0), 1.7 + 1.0 * sc.u(1), th, 0.85 + 0.4 * sc.u(2),
                13.0, 3.6, 0.12)


def _pleomorphic_sarcoma(p: _Painter) -> None:
    """Large bizarre nuclei and multinucleated giant cells."""
    cv = p.cv
    cls = CLASS_ID["pleomorphic_sarcoma"]
    pl = cls == p.C
    cv.e += np.where(pl, 0.22, 0)
    pc = pop.pleomorphic_cells(p.cells_for, p.layout, p.s)
    a = np.exp(np.log(5.5) + 0.35 * (pc.u(0) - 0.5) * 3)
    p.add_cells(pc, "pleomorphic_sarcoma", a, a * (0.45 + 0.5 * pc.u(1)), pc.u(2) * np.pi, 0.95 + 0.7 * pc.u(3),
                a * 1.8, a * 1.5, 0.2, grain=0.5)
    for k, g in enumerate(pop.giant_cell_nuclei(p.cells_for, p.layout, p.s)):  # clusters in a wide pink cell
        p.add_cells(g, "pleomorphic_sarcoma", 6 + 4 * g.u(1), 4 + 2 * g.u(2), g.u(3) * np.pi, 1.3,
                    20.0 if k == 0 else None, 16.0, 0.3)


# the drawing order of the classes after the stroma (later classes paint over earlier ones)
_CLASS_STEPS = (
    ("adipose", _adipose),
    ("myxoid_stroma", _myxoid_stroma),
    ("skeletal_muscle", _skeletal_muscle),
    ("lymphoid", _lymphoid),
    ("adenocarcinoma", _glands),
    ("squamous_carcinoma", _squamous),
    ("spindle_sarcoma", _spindle_sarcoma),
    ("pleomorphic_sarcoma", _pleomorphic_sarcoma),
)
