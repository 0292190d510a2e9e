"""Seamless noise and jittered-lattice distance fields: pure functions of absolute positions (um) and a salt.

The same point gets the same value whichever band, tile or patch it is evaluated in, so regions render without
seams. Public: :func:`hash01` (a uniform number per integer pair), :func:`value_noise`, :func:`fibre_noise`,
:func:`smooth_noise` (a normalised Gaussian-filtered field on a grid, from a random generator),
:func:`voronoi_gap` (distances to the nearest two lattice sites) and :func:`nearest_site`.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

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


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma_px: float) -> np.ndarray:
    n = ndi.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma_px, mode="reflect")
    return (n - n.mean()) / max(float(n.std()), 1e-6)


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


def voronoi_gap(X: np.ndarray, Y: np.ndarray, spacing: float, salt: int, mask=None):
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


def nearest_site(X, Y, spacing: float, salt: int, mask=None):
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
