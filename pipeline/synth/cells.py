"""Cells on hashed lattices and the optical-density canvas they are stamped on.

* :class:`Cells`: cell centres (um, absolute) with lattice ids, from which every per-cell random number is hashed;
* :func:`lattice`: the jittered lattice points of a rectangle;
* :class:`Canvas`: haematoxylin, eosin and DAB optical-density layers of a region; :meth:`Canvas.splat` stamps
  elliptical nuclei, discs (cytoplasm) or rings (membranes) of cells onto a layer.

A canvas with a :class:`~pipeline.synth.placement.Placement` is a region of a slide whose section lies rotated,
shifted or mirrored: its pixel grid is in the slide frame, while the positions it hands to the drawing
(:attr:`Canvas.XY`, :meth:`Canvas.noise`, :meth:`Canvas.bounds_um`) and the cells it stamps are in the layout
frame. Without a placement every path is the plain axis-aligned one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from pipeline.synth.noise import hash01, value_noise

if TYPE_CHECKING:
    from pipeline.synth.placement import Placement


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
    """Optical-density layers of a region (haematoxylin, eosin, DAB) at ``mpp`` um/px, absolute um coordinates.

    ``x0_um``, ``y0_um``, ``xs`` and ``ys`` are in the slide frame; with a ``placement`` the layout-frame
    positions of the pixels are ``placement.to_layout`` of them."""

    def __init__(self, x0_um: float, y0_um: float, nx: int, ny: int, mpp: float,
                 placement: Placement | None = None):
        self.x0, self.y0, self.nx, self.ny, self.mpp = x0_um, y0_um, nx, ny, mpp
        self.placement = placement
        self.xs = x0_um + (np.arange(nx) + 0.5) * mpp
        self.ys = y0_um + (np.arange(ny) + 0.5) * mpp
        self.h = np.zeros((ny, nx), np.float32)
        self.e = np.zeros((ny, nx), np.float32)
        self.d = np.zeros((ny, nx), np.float32)
        self._XY = None

    @property
    def XY(self) -> tuple[np.ndarray, np.ndarray]:
        """Layout-frame positions (um) of every pixel centre, two (ny, nx) arrays."""
        if self._XY is None:
            X = np.broadcast_to(self.xs[None, :], (self.ny, self.nx))
            Y = np.broadcast_to(self.ys[:, None], (self.ny, self.nx))
            self._XY = (X, Y) if self.placement is None else self.placement.to_layout(X, Y)
        return self._XY

    def noise(self, scale_um: float, salt: int) -> np.ndarray:
        """Value noise (:func:`~pipeline.synth.noise.value_noise`) at every pixel, from layout-frame positions."""
        if self.placement is None:
            return value_noise(self.xs, self.ys, scale_um, salt, grid=True)
        X, Y = self.XY
        return value_noise(X, Y, scale_um, salt)

    def bounds_um(self) -> tuple[float, float, float, float]:
        """(x0, y0, x1, y1): the layout-frame rectangle (um) that holds the canvas."""
        x1, y1 = self.x0 + self.nx * self.mpp, self.y0 + self.ny * self.mpp
        if self.placement is None:
            return self.x0, self.y0, x1, y1
        cx, cy = self.placement.to_layout(np.array([self.x0, x1, self.x0, x1]), np.array([self.y0, self.y0, y1, y1]))
        return float(cx.min()), float(cy.min()), float(cx.max()), float(cy.max())

    def splat(self, cells: Cells, a_um, b_um, theta, weight, profile: str = "nucleus",
              grain: float = 0.0) -> np.ndarray:
        """Sum of elliptical stamps (semi-axes a, b um; angle theta) weighted per cell, as a (ny, nx) array.

        Cells, axes and angles are in the layout frame; with a placement each stamp is drawn where its cell lands
        on the slide, turned (and mirrored) with the section."""
        out = np.zeros(self.ny * self.nx, np.float64)
        n = len(cells)
        if n == 0:
            return out.reshape(self.ny, self.nx).astype(np.float32)
        a_um = np.broadcast_to(np.asarray(a_um, np.float64), (n,))
        b_um = np.broadcast_to(np.asarray(b_um, np.float64), (n,))
        theta = np.broadcast_to(np.asarray(theta, np.float64), (n,))
        weight = np.broadcast_to(np.asarray(weight, np.float64), (n,))
        sx, sy = (cells.x, cells.y) if self.placement is None else self.placement.to_slide(cells.x, cells.y)
        lin = None if self.placement is None else self.placement.linear
        reach = 1.3 if profile != "ring" else 1.25
        r = int(np.ceil(float(max(a_um.max(), b_um.max())) * reach / self.mpp)) + 1
        for lo in range(0, n, max(1, 400_000 // (2 * r + 1) ** 2)):  # bounded temporary arrays
            sl = slice(lo, lo + max(1, 400_000 // (2 * r + 1) ** 2))
            px = (sx[sl] - self.x0) / self.mpp - 0.5
            py = (sy[sl] - self.y0) / self.mpp - 0.5
            cx, cy = np.rint(px).astype(np.int64), np.rint(py).astype(np.int64)
            off = np.arange(-r, r + 1)
            gx = cx[:, None, None] + off[None, None, :]
            gy = cy[:, None, None] + off[None, :, None]
            dx, dy = (gx - px[:, None, None]) * self.mpp, (gy - py[:, None, None]) * self.mpp
            if lin is not None:  # slide-frame offsets back into the layout frame (the transpose is the inverse)
                dx, dy = lin[0, 0] * dx + lin[1, 0] * dy, lin[0, 1] * dx + lin[1, 1] * dy
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
