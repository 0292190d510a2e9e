"""The exact outline of a union of grid squares (tiles), as polygons with holes (pure numpy).

:func:`squares_outline` merges unit squares on an integer grid: every square contributes its four edges, turning
one way; an edge two neighbouring squares share appears once each way and cancels; what is left are the outline's
edges, which chain into closed rings. A ring that turns the squares' way is an exterior, the other way a hole (it
is put in the smallest exterior around it). Where two squares touch only at a corner the ring turns towards the
square it runs along, so such squares are separate pieces (4-connected, as :func:`scipy.ndimage.label` counts
them). Collinear points are dropped: a rectangle is four corners.

Coordinates are grid units (column, row) with y down; :func:`tile_outline_level0` scales them to level-0 pixels of
a tile grid laid as ``x = round(column * tile_level0)`` (:func:`pipeline.slides.tiling.tile_grid`).
"""

from __future__ import annotations

import numpy as np

# The edges of the unit square at (c, r), in the order (x, y) -> (x, y): right, down, left, up on screen (y down).
_SQUARE = (((0, 0), (1, 0)), ((1, 0), (1, 1)), ((1, 1), (0, 1)), ((0, 1), (0, 0)))


def _signed_area(ring: list[tuple[int, int]]) -> float:
    x, y = np.array(ring, float).T
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))


def _chain(edges: dict[tuple[int, int], list[tuple[int, int]]]) -> list[list[tuple[int, int]]]:
    """Closed rings (first point repeated last) from directed edges ``start -> [ends]``, each edge used once. A
    ring starts at the smallest point left and closes when it is back there; at a point with two ways on (squares
    touching at a corner) it takes the sharpest right turn on screen, along the square it came by."""
    rings = []
    while edges:
        start = min(edges)
        ring, here, heading = [start], start, None
        while True:
            ends = edges[here]
            if heading is not None and len(ends) > 1:
                # right turn on screen (y down) of heading (dx, dy) is (-dy, dx); prefer right, straight, left
                order = {(-heading[1], heading[0]): 0, heading: 1, (heading[1], -heading[0]): 2}
                ends.sort(key=lambda e: order.get((e[0] - here[0], e[1] - here[1]), 3))
            nxt = ends.pop(0)
            if not ends:
                del edges[here]
            heading = (nxt[0] - here[0], nxt[1] - here[1])
            ring.append(nxt)
            here = nxt
            if here == start:
                break
        rings.append(_drop_collinear(ring))
    return rings


def _drop_collinear(ring: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The ring's corners only (closed: first point last)."""
    pts = ring[:-1]
    n = len(pts)
    keep = []
    for i in range(n):
        a, b, c = pts[i - 1], pts[i], pts[(i + 1) % n]
        if (b[0] - a[0]) * (c[1] - b[1]) - (b[1] - a[1]) * (c[0] - b[0]) != 0:
            keep.append(b)
    return keep + keep[:1]


def _inside(point: tuple[float, float], ring: list[tuple[int, int]]) -> bool:
    """Even-odd rule: whether ``point`` lies inside the closed ``ring`` (never on it: callers pass cell centres)."""
    x, y = point
    inside = False
    for (x0, y0), (x1, y1) in zip(ring[:-1], ring[1:], strict=True):
        if (y0 > y) != (y1 > y) and x < x0 + (y - y0) * (x1 - x0) / (y1 - y0):
            inside = not inside
    return inside


def squares_outline(columns, rows) -> list[list[list[tuple[int, int]]]]:
    """Polygons (exterior ring, then its holes; rings closed, grid units) of the union of the unit squares whose
    top-left corners are (``columns[i]``, ``rows[i]``). Duplicated squares count once. Exteriors turn clockwise on
    screen (positive shoelace area with y down), holes the other way."""
    cells = {(int(c), int(r)) for c, r in zip(columns, rows, strict=True)}
    edges: dict[tuple[int, int], list[tuple[int, int]]] = {}
    directed = set()
    for c, r in cells:
        for (ax, ay), (bx, by) in _SQUARE:
            e = ((c + ax, r + ay), (c + bx, r + by))
            if (e[1], e[0]) in directed:
                directed.discard((e[1], e[0]))
            else:
                directed.add(e)
    for a, b in sorted(directed):
        edges.setdefault(a, []).append(b)
    rings = _chain(edges)
    exteriors = [ring for ring in rings if _signed_area(ring) > 0]
    holes = [ring for ring in rings if _signed_area(ring) < 0]
    polygons = [[ring] for ring in sorted(exteriors, key=lambda ring: (-_signed_area(ring), ring[0]))]
    for hole in holes:
        (x0, y0), (x1, y1) = hole[0], hole[1]
        # a point half a cell to the left of the hole's first edge (walking it): a cell of the hole, not the region
        dx, dy = x1 - x0, y1 - y0
        length = abs(dx) + abs(dy)
        probe = ((x0 + x1) / 2 + 0.5 * dy / length, (y0 + y1) / 2 - 0.5 * dx / length)
        around = [p for p in polygons if _inside(probe, p[0])]
        if around:
            min(around, key=lambda p: _signed_area(p[0])).append(hole)
    return polygons


def tile_outline_level0(xs, ys, tile_level0: float) -> list[list[np.ndarray]]:
    """:func:`squares_outline` of grid tiles given by their level-0 top-left corners (``xs``, ``ys``) on a grid of
    ``tile_level0`` px squares starting at 0, in level-0 px (each ring (n, 2) x, y float, closed)."""
    xs, ys = np.asarray(xs, np.float64), np.asarray(ys, np.float64)
    if tile_level0 <= 0:
        raise ValueError(f"tile_level0 must be > 0, got {tile_level0}")
    columns, rows = np.round(xs / tile_level0).astype(np.int64), np.round(ys / tile_level0).astype(np.int64)
    return [[np.round(np.array(ring, np.float64) * tile_level0) for ring in polygon]
            for polygon in squares_outline(columns, rows)]
