"""Serial-section registration of an IHC slide onto its H&E slide (pure numpy/scipy/scikit-image/OpenCV; no slide I/O).

Job: find the rigid transform (rotation, optional mirror, small isotropic scale change, translation) that maps a
point of the IHC slide onto the same tissue of the H&E slide, say how well it fits, and say ``failed`` with a
reason when it cannot be trusted: never a confident wrong transform.

Frames and units: each image comes with its own um/px. A point is (x, y) in um from the image's top-left corner,
which is the slide's level-0 top-left corner (``x_um = x_level0_px * slide mpp``), so slides from different
scanners and pyramids meet in um. A transform (:class:`Rigid`) maps IHC um to H&E um:
``p_he = scale * R(rotation_deg) @ F(flip) @ p_ihc + shift_um``, F mirrors x (x -> -x) and R turns by
``rotation_deg`` in the image frame (y down: positive angles turn clockwise on screen);
:func:`level0_matrix` gives the same transform as a 3x3 matrix in level-0 pixels of each slide.

Stain-independent picture (:func:`nuclear_density`): H&E and IHC share haematoxylin, which absorbs red light,
while eosin hardly does and DAB less; the red-channel optical density above the slide's own glass shows nuclei
and cellular tissue on both stains alike. The tissue mask (``pipeline.slides.tissue.tissue_mask``) gives outlines.

Method (:func:`register_images`):
1. :func:`coarse_search` at <= ``search_px`` across: every rotation in ``angle_step_deg`` steps, with and without
   mirror, at the scale the tissue areas suggest (clipped to +-10 %); translation by FFT cross-correlation of
   mask x density; the best candidates are refined to 1 degree.
2. :func:`refine` at the coarse, then the fine level: the IHC picture is warped onto the H&E grid, the local shift
   of each tissue patch is measured by phase correlation (:func:`patch_shifts`) and a similarity transform fitted
   to the consistent shifts corrects the transform; a few iterations.
3. :func:`assess` at the fine level: the quality score is the normalised cross-correlation (NCC, clipped to
   [0, 1]) of the density pictures over the tissue both share; the residual error is the median and 95th
   percentile of the patch shifts left after refinement, in um. ``failed`` when the score is below
   ``min_score``, the 95th percentile above ``max_residual_um``, or fewer than ``min_patches`` patches.

Public: :class:`Rigid`, :class:`RegistrationParams`, :class:`Level` (one resolution of one slide),
:func:`nuclear_density`, :func:`warp`,
:func:`coarse_search`, :func:`patch_shifts`, :func:`refine`, :func:`assess`, :func:`register_images`,
:func:`level0_matrix`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from pipeline import opencv
from pipeline.ihc.patch_shifts import patch_shifts

_FLIP = np.diag([-1.0, 1.0])


@dataclass(frozen=True)
class Rigid:
    """IHC um -> H&E um: ``scale * R(rotation_deg) @ F(flip) @ p + shift_um`` (see the module docstring)."""

    rotation_deg: float = 0.0
    flip: bool = False
    scale: float = 1.0
    shift_um: tuple[float, float] = (0.0, 0.0)

    def linear(self) -> np.ndarray:
        t = math.radians(self.rotation_deg)
        rot = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
        return self.scale * (rot @ _FLIP if self.flip else rot)

    def matrix_um(self) -> np.ndarray:
        m = np.eye(3)
        m[:2, :2], m[:2, 2] = self.linear(), self.shift_um
        return m

    @classmethod
    def from_matrix_um(cls, m: np.ndarray) -> Rigid:
        """The nearest rigid + scale transform to a 3x3 um matrix (its linear part's sign, scale and angle)."""
        a = np.asarray(m, float)[:2, :2]
        flip = bool(np.linalg.det(a) < 0)
        a = a @ _FLIP if flip else a
        scale = math.sqrt(abs(np.linalg.det(a)))
        angle = math.degrees(math.atan2(a[1, 0] - a[0, 1], a[0, 0] + a[1, 1])) % 360.0
        return cls(angle, flip, scale, (float(m[0, 2]), float(m[1, 2])))

    def apply(self, points_um) -> np.ndarray:
        """(n, 2) x, y points in IHC um -> H&E um."""
        p = np.atleast_2d(np.asarray(points_um, float))
        return p @ self.linear().T + np.asarray(self.shift_um)


@dataclass(frozen=True)
class RegistrationParams:
    """Registration settings; the defaults are documented in README ("Registration")."""

    angle_step_deg: float = 4.0  # coarse rotation search step (then refined to 1 degree, then by patches)
    search_px: int = 160  # longest side of the tissue at the search level
    max_scale_change: float = 0.10  # |scale - 1| allowed
    patch_px: int = 48  # side of a residual / refinement patch at each level
    max_patches: int = 64
    iterations: int = 3  # patch-fit refinements per level
    min_score: float = 0.2  # NCC of the density pictures over shared tissue, below it: failed
    max_residual_um: float = 50.0  # 95th percentile of the residual patch shifts, above it: failed
    min_patches: int = 8  # fewer measurable tissue patches: failed (too little tissue to check)


def nuclear_density(rgb: np.ndarray) -> np.ndarray:
    """Red-channel optical density above the picture's glass, scaled to [0, 1] (OD 1.5 -> 1): haematoxylin
    (both stains), DAB in part, eosin hardly. Glass is ~0."""
    from pipeline.slides.tissue import glass_colour

    if rgb.ndim != 3 or rgb.shape[-1] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB array, got {rgb.shape} {rgb.dtype}")
    cv2 = opencv.cv2()
    glass_red = float(glass_colour(rgb)[0])
    lut = np.clip(np.log10((glass_red + 1.0) / (np.arange(256, dtype=np.float32) + 1.0)) / 1.5, 0.0, 1.0)
    return cv2.LUT(cv2.extractChannel(np.ascontiguousarray(rgb), 0), lut.astype(np.float32))


def warp(image: np.ndarray, mpp_in: float, rigid: Rigid, mpp_out: float, out_shape, order: int = 1) -> np.ndarray:
    """A 2-D picture of the IHC slide (``mpp_in`` um/px) resampled onto an H&E grid of ``out_shape`` at
    ``mpp_out`` through ``rigid`` (``order`` 1: bilinear, 0: nearest); outside the picture is 0 (within half a
    pixel of its edge: the edge pixel blended with 0, or the edge pixel when nearest). Pixel (row, col) centres sit
    at ((i + 0.5) * mpp). Returns float32; OpenCV's warp, whose sample positions are rounded to 1/32 px."""
    cv2 = opencv.cv2()
    if order not in (0, 1):
        raise ValueError(f"order must be 0 (nearest) or 1 (bilinear), got {order}")
    inv = np.linalg.inv(rigid.matrix_um())
    lin, off = inv[:2, :2], inv[:2, 2]
    # output px (x, y) -> input px (x, y), pixel centres at integers: cv2's inverse map
    a_xy = lin * (mpp_out / mpp_in)
    b_xy = (lin @ np.full(2, 0.5 * mpp_out) + off) / mpp_in - 0.5
    rows, cols = (int(n) for n in out_shape)
    flags = (cv2.INTER_LINEAR if order == 1 else cv2.INTER_NEAREST) | cv2.WARP_INVERSE_MAP
    return cv2.warpAffine(np.asarray(image, np.float32), np.hstack([a_xy, b_xy[:, None]]), (cols, rows),
                          flags=flags, borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)


def _centroid_um(image: np.ndarray, mpp: float) -> np.ndarray:
    rows, cols = np.indices(image.shape)
    total = float(image.sum()) or 1.0
    return np.array([((cols + 0.5) * image).sum(), ((rows + 0.5) * image).sum()]) * mpp / total


def _cross_correlate(fixed_fft: np.ndarray, moving: np.ndarray) -> tuple[float, np.ndarray]:
    """Best circular shift (x, y px) of ``moving`` onto the fixed picture and its Dice-like score."""
    from scipy import fft

    cc = fft.irfft2(fixed_fft * np.conj(fft.rfft2(moving)), s=moving.shape, workers=-1)
    r, c = np.unravel_index(int(np.argmax(cc)), cc.shape)
    n_r, n_c = cc.shape
    shift = np.array([c - n_c if c > n_c // 2 else c, r - n_r if r > n_r // 2 else r], float)
    return float(cc[r, c]), shift


def coarse_search(he: np.ndarray, ihc: np.ndarray, mpp: float, scale: float = 1.0,
                  angle_step_deg: float = 4.0, keep: int = 3) -> list[tuple[float, Rigid]]:
    """Global search of two feature pictures at the same ``mpp`` (glass 0): every rotation in ``angle_step_deg``
    steps, both mirrors; translation by FFT cross-correlation around the tissue centroids. The ``keep`` best
    distinct candidates, each refined to 1 degree, as (score in [0, 1], Rigid), best first."""
    from scipy import fft

    c_he, c_ihc = _centroid_um(he, mpp), _centroid_um(ihc, mpp)
    side = fft.next_fast_len(int(1.3 * math.hypot(*max(he.shape, ihc.shape, key=sum))) + 8)
    centre = np.full(2, side * mpp / 2.0)
    fixed = warp(he, mpp, Rigid(shift_um=tuple(centre - c_he)), mpp, (side, side))
    fixed_fft, fixed_energy = fft.rfft2(fixed), float((fixed ** 2).sum())

    def score(angle: float, flip: bool) -> tuple[float, Rigid]:
        lin = Rigid(angle, flip, scale).linear()
        moving = warp(ihc, mpp, Rigid(angle, flip, scale, tuple(centre - lin @ c_ihc)), mpp, (side, side))
        peak, shift_px = _cross_correlate(fixed_fft, moving)
        value = 2.0 * peak / max(fixed_energy + float((moving ** 2).sum()), 1e-9)
        return value, Rigid(angle % 360.0, flip, scale, tuple(c_he + shift_px * mpp - lin @ c_ihc))

    found = [score(a, f) for f in (False, True) for a in np.arange(0.0, 360.0, angle_step_deg)]
    found.sort(key=lambda item: -item[0])
    best: list[tuple[float, Rigid]] = []
    for value, rigid in found:
        if all(r.flip != rigid.flip or _angle_gap(r.rotation_deg, rigid.rotation_deg) > 2 * angle_step_deg
               for _, r in best):
            best.append((value, rigid))
        if len(best) == keep:
            break
    refined = []
    for _, rigid in best:
        angles = rigid.rotation_deg + np.arange(-angle_step_deg + 1, angle_step_deg, 1.0)
        refined.append(max((score(a, rigid.flip) for a in angles), key=lambda item: item[0]))
    return sorted(refined, key=lambda item: -item[0])


def _angle_gap(a: float, b: float) -> float:
    return abs((a - b + 180.0) % 360.0 - 180.0)


def _similarity_fit(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, scale, translation; Umeyama 1991) src -> dst as a 3x3 matrix."""
    mu_s, mu_d = src.mean(axis=0), dst.mean(axis=0)
    s, d = src - mu_s, dst - mu_d
    u, sig, vt = np.linalg.svd(d.T @ s / len(src))
    sign = np.diag([1.0, np.sign(np.linalg.det(u @ vt)) or 1.0])
    rot = u @ sign @ vt
    scale = float(np.trace(np.diag(sig) @ sign) / max(s.var(axis=0).sum(), 1e-12))
    m = np.eye(3)
    m[:2, :2], m[:2, 2] = scale * rot, mu_d - scale * rot @ mu_s
    return m


def _consistent(shifts: np.ndarray, tolerance_px: float) -> np.ndarray:
    """Shifts that agree with the median shift (within 3 robust SDs, at least ``tolerance_px``)."""
    dev = np.linalg.norm(shifts - np.median(shifts, axis=0), axis=1)
    return dev <= max(3.0 * 1.4826 * float(np.median(dev)), tolerance_px)


@dataclass
class Level:
    """One resolution of one slide: nuclear density, tissue mask (float 0/1) and um/px."""

    density: np.ndarray
    mask: np.ndarray
    mpp: float

    @classmethod
    def from_rgb(cls, rgb: np.ndarray, mpp: float, coarser: Level | None = None, density_min: float = 0.015,
                 smooth_um: float = 20.0) -> Level:
        """Density and mask of an RGB picture at ``mpp`` um/px. The mask is the tissue mask, or where the
        density smoothed over ``smooth_um`` reaches ``density_min`` (pale haematoxylin-only fields that the
        tissue mask misses); with ``coarser``, that level's mask enlarged (the tissue mask is the slow part)."""
        density = nuclear_density(rgb)
        if coarser is not None:
            return cls(density, _nearest_resize(np.asarray(coarser.mask, np.float32), density.shape), mpp)
        from scipy import ndimage

        from pipeline.slides.tissue import tissue_mask

        dense = ndimage.gaussian_filter(density, smooth_um / mpp) >= density_min
        return cls(density, (tissue_mask(rgb, mpp) | dense).astype(np.float32), mpp)


def _nearest_resize(picture: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``picture`` resampled to ``shape`` over the same extent, nearest neighbour: each output pixel takes the
    input pixel under its centre (index ``floor((i + 0.5) * n_in / n_out)``, OpenCV's ``INTER_NEAREST_EXACT``)."""
    cv2 = opencv.cv2()
    return cv2.resize(np.ascontiguousarray(picture), (int(shape[1]), int(shape[0])),
                      interpolation=cv2.INTER_NEAREST_EXACT)


def refine(he: Level, ihc: Level, rigid: Rigid, params: RegistrationParams) -> Rigid:
    """``rigid`` corrected by similarity fits to the local patch shifts at this level (``params.iterations``)."""
    for _ in range(params.iterations):
        moving = warp(ihc.density, ihc.mpp, rigid, he.mpp, he.density.shape)
        shared = he.mask * warp(ihc.mask, ihc.mpp, rigid, he.mpp, he.density.shape, order=0)
        centres, shifts = patch_shifts(he.density, moving, shared, params.patch_px, params.max_patches)
        if len(centres) < 3:
            break
        keep = _consistent(shifts, 1.0)
        if keep.sum() < 3:
            break
        correction = _similarity_fit(centres[keep] * he.mpp, (centres[keep] + shifts[keep]) * he.mpp)
        new = Rigid.from_matrix_um(correction @ rigid.matrix_um())
        lo, hi = 1.0 - params.max_scale_change, 1.0 + params.max_scale_change
        rigid = replace(new, scale=float(np.clip(new.scale, lo, hi)), flip=rigid.flip)
        if np.abs(shifts[keep]).max() < 0.25:
            break
    return rigid


def assess(he: Level, ihc: Level, rigid: Rigid, params: RegistrationParams) -> dict:
    """Quality of ``rigid`` at this level: score (NCC over shared tissue, [0, 1]), residual patch shifts in um
    (median, 95th percentile, count), tissue overlap (Dice of the masks), and ``status`` with ``reason``."""
    moving = warp(ihc.density, ihc.mpp, rigid, he.mpp, he.density.shape)
    moved_mask = warp(ihc.mask, ihc.mpp, rigid, he.mpp, he.density.shape, order=0) > 0.5
    shared = (he.mask > 0.5) & moved_mask
    ncc = _ncc(he.density[shared], moving[shared])
    dice = 2.0 * shared.sum() / max(float((he.mask > 0.5).sum() + moved_mask.sum()), 1.0)
    _, shifts = patch_shifts(he.density, moving, shared, params.patch_px, params.max_patches)
    residual = np.linalg.norm(shifts, axis=1) * he.mpp
    quality = {
        "score": round(max(ncc, 0.0), 4), "tissue_dice": round(float(dice), 4), "patches": int(len(residual)),
        "residual_median_um": round(float(np.median(residual)), 2) if len(residual) else None,
        "residual_p95_um": round(float(np.percentile(residual, 95)), 2) if len(residual) else None,
        "level_mpp": round(he.mpp, 4), "patch_um": round(params.patch_px * he.mpp, 1),
    }
    reason = None
    if quality["score"] < params.min_score:
        reason = f"quality score {quality['score']:.2f} below {params.min_score:g}: the tissues do not match"
    elif len(residual) < params.min_patches:
        reason = f"only {len(residual)} tissue patches to check the fit (need {params.min_patches})"
    elif quality["residual_p95_um"] > params.max_residual_um:
        reason = (f"residual error {quality['residual_p95_um']:.0f} um (95th percentile) above "
                  f"{params.max_residual_um:g} um")
    return {**quality, "status": "failed" if reason else "ok", "reason": reason}


def _ncc(a: np.ndarray, b: np.ndarray) -> float:
    """Normalised cross-correlation of two equal-length 1-D arrays (0 for 16 values or fewer, or no variance):
    float64 sums of the values and of their products, no float64 copies."""
    n = a.size
    if n <= 16:
        return 0.0
    sum_a, sum_b = float(a.sum(dtype=np.float64)), float(b.sum(dtype=np.float64))
    sum_ab, sum_aa, sum_bb = (float(np.einsum("i,i->", x, y, dtype=np.float64)) for x, y in ((a, b), (a, a), (b, b)))
    var_a, var_b = sum_aa - sum_a * sum_a / n, sum_bb - sum_b * sum_b / n
    norm = math.sqrt(var_a * var_b) if var_a > 0 and var_b > 0 else 0.0
    return (sum_ab - sum_a * sum_b / n) / norm if norm > 0 else 0.0


def _search_picture(level: Level, mpp: float) -> tuple[np.ndarray, np.ndarray]:
    """``level``'s mask x (0.25 + 0.75 density) over its tissue's bounding box, resampled to ``mpp`` (the search
    picture), and the box's top-left corner in um."""
    from skimage.transform import resize

    rows, cols = np.flatnonzero(level.mask.any(axis=1)), np.flatnonzero(level.mask.any(axis=0))
    box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    feature = level.mask[box] * (0.25 + 0.75 * level.density[box])
    shape = tuple(max(8, round(n * level.mpp / mpp)) for n in feature.shape)
    corner_um = np.array([cols[0], rows[0]], float) * level.mpp
    return resize(feature, shape, order=1, anti_aliasing=True).astype(np.float32), corner_um


def register_images(he_coarse: Level, ihc_coarse: Level, he_fine: Level, ihc_fine: Level,
                    params: RegistrationParams | None = None) -> tuple[Rigid, dict]:
    """The IHC -> H&E transform from two resolutions of each slide, and its :func:`assess` record (plus the
    coarse search's best score). Each Level holds its own um/px; the four may all differ."""
    params = params or RegistrationParams()
    if not (he_coarse.mask.any() and ihc_coarse.mask.any()):
        which = "H&E" if not he_coarse.mask.any() else "IHC"
        return Rigid(), {"status": "failed", "reason": f"no tissue found on the {which} slide", "score": 0.0}
    tissue_um = max(_tissue_extent_um(he_coarse), _tissue_extent_um(ihc_coarse))
    search_mpp = max(he_coarse.mpp, ihc_coarse.mpp, tissue_um / params.search_px)
    (he_search, he_corner), (ihc_search, ihc_corner) = (_search_picture(lv, search_mpp)
                                                        for lv in (he_coarse, ihc_coarse))
    candidates = [(score, replace(r, shift_um=tuple(np.asarray(r.shift_um) + he_corner - r.linear() @ ihc_corner)))
                  for score, r in coarse_search(he_search, ihc_search, search_mpp, 1.0, params.angle_step_deg)]
    coarse = []
    for search_score, rigid in candidates:
        rigid = refine(he_coarse, ihc_coarse, rigid, params)
        coarse.append((assess(he_coarse, ihc_coarse, rigid, params)["score"], search_score, rigid))
    _, search_score, rigid = max(coarse, key=lambda item: item[0])
    rigid = refine(he_fine, ihc_fine, rigid, params)
    quality = assess(he_fine, ihc_fine, rigid, params)
    return rigid, {**quality, "search_score": round(search_score, 4),
                   "coarse_scores": [round(score, 4) for score, _, _ in coarse]}


def _tissue_extent_um(level: Level) -> float:
    rows, cols = np.flatnonzero(level.mask.any(axis=1)), np.flatnonzero(level.mask.any(axis=0))
    return max(rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1) * level.mpp if len(rows) else 0.0


def level0_matrix(rigid: Rigid, he_mpp: float, ihc_mpp: float) -> np.ndarray:
    """``rigid`` as a 3x3 matrix from IHC level-0 px to H&E level-0 px (each slide's own level-0 um/px)."""
    return np.diag([1.0 / he_mpp, 1.0 / he_mpp, 1.0]) @ rigid.matrix_um() @ np.diag([ihc_mpp, ihc_mpp, 1.0])


def map_points(matrix, x, y) -> tuple[np.ndarray, np.ndarray]:
    """Points (``x``, ``y``: arrays of level-0 px) through a 3x3 rigid matrix such as :func:`level0_matrix`'s."""
    m = np.asarray(matrix, np.float64)
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    return m[0, 0] * x + m[0, 1] * y + m[0, 2], m[1, 0] * x + m[1, 1] * y + m[1, 2]
