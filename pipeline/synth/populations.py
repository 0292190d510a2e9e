"""The cells each tissue class draws and which of them are positive: shared by the drawing and the per-cell truth.

A population is a pure function of a lattice source ``cells_for(spacing_um, salt, classes, jitter)`` (the hashed
lattice cells of a region whose centres lie in ``classes``), the layout and the slide's salt ``s``: the drawing
(:mod:`pipeline.synth.draw`) asks it for the cells of the region it paints, :mod:`pipeline.synth.cell_truth`
for the cells of the whole slide, so the truth counts exactly the cells that were drawn.

* :func:`positivity`: which cells of a tissue are positive for a marker, and at which intensity (1-3);
* one function per population (fibroblasts, fat nuclei, myxoid cells, muscle nuclei, lymphocytes, gland
  epithelium, squamous cells, spindle cells, pleomorphic cells, giant-cell nuclei);
* :data:`POPULATIONS`: per tissue class, its populations and whether their cells have a drawn cytoplasm.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from pipeline.synth.cells import Cells
from pipeline.synth.classes import CLASS_ID, expression
from pipeline.synth.layout import Layout, angle_at
from pipeline.synth.noise import hash01, nearest_site, value_noise

CellsFor = Callable[..., Cells]  # (spacing_um, salt, classes, jitter=0.45) -> lattice cells in those classes

GLAND_SPACING_UM = 95.0
MUSCLE_FIBRE_UM = 48.0


def positivity(cells: Cells, tissue: str, marker: str, k: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """(positive?, intensity 1-3) per cell for ``marker`` in ``tissue``; a quarter of cells one level weaker."""
    frac, level = expression(tissue, marker)
    if frac <= 0 or len(cells) == 0:
        return np.zeros(len(cells), bool), np.zeros(len(cells), np.int64)
    pos = cells.u(k) < frac
    lvl = np.clip(level + np.where(cells.u(k + 1) < 0.25, -1, 0), 1, 3)
    return pos, lvl


def fibroblasts(cells_for: CellsFor, lay: Layout, s: int) -> Cells:
    return cells_for(24.0, 20, (CLASS_ID["fibrous_stroma"],))


def fat_nuclei(cells_for: CellsFor, lay: Layout, s: int) -> Cells:
    return cells_for(90.0, 31, (CLASS_ID["adipose"],))


def myxoid_cells(cells_for: CellsFor, lay: Layout, s: int) -> Cells:
    return cells_for(30.0, 112, (CLASS_ID["myxoid_stroma"],), 0.5)


def muscle_nuclei_and_angles(cells_for: CellsFor, lay: Layout, s: int) -> tuple[Cells, np.ndarray]:
    """Muscle nuclei moved to the edge of their fibre, and the fibre direction at each (before the move)."""
    mn = cells_for(22.0, 42, (CLASS_ID["skeletal_muscle"],))
    if not len(mn):
        return mn, np.zeros(0)
    a = angle_at(lay, mn.x, mn.y)
    acr = -mn.x * np.sin(a) + mn.y * np.cos(a)
    shift = (np.round(acr / MUSCLE_FIBRE_UM) * MUSCLE_FIBRE_UM + MUSCLE_FIBRE_UM * 0.06 - acr)
    return Cells(mn.x - shift * np.sin(a), mn.y + shift * np.cos(a), mn.i, mn.j, mn.salt), a


def lymphocytes(cells_for: CellsFor, lay: Layout, s: int) -> Cells:
    return cells_for(6.5, 50, (CLASS_ID["lymphoid"],), 0.35)


def gland_radius(d, dx, dy, gi, gj, s: int):
    """Wobbled distance to the gland centre and the gland's lumen radius and wall width (um)."""
    lumen = 6.0 + 22.0 * hash01(gi, gj, s + 82)  # some glands nearly solid (ductal nests)
    wall = 13.0 + 7.0 * hash01(gi, gj, s + 83)
    wob = 1 + 0.22 * np.sin(np.arctan2(dy, dx) * (2 + (hash01(gi, gj, s + 84) * 4).astype(int))
                            + 6 * hash01(gi, gj, s + 85))
    return d / wob, lumen, wall


def gland_cells_and_radial(cells_for: CellsFor, lay: Layout, s: int) -> tuple[Cells, np.ndarray]:
    """Gland epithelium: a dense lattice kept where it falls in a gland wall; each cell's direction from the centre."""
    cells = cells_for(7.5, 86, (CLASS_ID["adenocarcinoma"],), 0.3)
    if not len(cells):
        return cells, np.zeros(0)
    cd, cdx, cdy, ci, cj = nearest_site(cells.x, cells.y, GLAND_SPACING_UM, s + 80)
    cdn, cl, cw = gland_radius(cd, cdx, cdy, ci, cj, s)
    keep = (cdn >= cl + 2.5) & (cdn < cl + cw - 1.0)
    return cells.take(keep), np.arctan2(cdy[keep], cdx[keep])


def squamous_cells(cells_for: CellsFor, lay: Layout, s: int) -> Cells:
    cells = cells_for(12.5, 92, (CLASS_ID["squamous_carcinoma"],), 0.35)
    if len(cells):
        cells = cells.take(value_noise(cells.x, cells.y, 70.0, s + 90) > 0.4)  # inside the nests
    return cells


def spindle_cells(cells_for: CellsFor, lay: Layout, s: int) -> Cells:
    return cells_for(9.5, 62, (CLASS_ID["spindle_sarcoma"],))


def pleomorphic_cells(cells_for: CellsFor, lay: Layout, s: int) -> Cells:
    return cells_for(15.0, 70, (CLASS_ID["pleomorphic_sarcoma"],), 0.5)


def giant_cell_nuclei(cells_for: CellsFor, lay: Layout, s: int) -> list[Cells]:
    """The four nuclei of each multinucleated giant cell (the first with the giant cell's cytoplasm)."""
    gc = cells_for(110.0, 71, (CLASS_ID["pleomorphic_sarcoma"],))
    gc = gc.take(gc.u(0) < 0.6)
    return [Cells(gc.x + (gc.u(10 + k) - 0.5) * 16, gc.y + (gc.u(20 + k) - 0.5) * 16, gc.i * 5 + k, gc.j, gc.salt)
            for k in range(4)]


def _first(fn):
    return lambda cells_for, lay, s: [fn(cells_for, lay, s)[0]]


def _one(fn):
    return lambda cells_for, lay, s: [fn(cells_for, lay, s)]


# tissue class -> [(cells of the class as lists of Cells, True where those cells have a drawn cytoplasm)]
POPULATIONS: dict[str, list[tuple[Callable[[CellsFor, Layout, int], list[Cells]], bool]]] = {
    "fibrous_stroma": [(_one(fibroblasts), True)],
    "adipose": [(_one(fat_nuclei), False)],
    "myxoid_stroma": [(_one(myxoid_cells), True)],
    "skeletal_muscle": [(_first(muscle_nuclei_and_angles), False)],
    "lymphoid": [(_one(lymphocytes), True)],
    "adenocarcinoma": [(_first(gland_cells_and_radial), True)],
    "squamous_carcinoma": [(_one(squamous_cells), True)],
    "spindle_sarcoma": [(_one(spindle_cells), True)],
    "pleomorphic_sarcoma": [(_one(pleomorphic_cells), True),
                            (lambda cf, lay, s: giant_cell_nuclei(cf, lay, s)[:1], True),
                            (lambda cf, lay, s: giant_cell_nuclei(cf, lay, s)[1:], False)],
}
