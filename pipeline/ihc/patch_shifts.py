"""Local shifts between two pictures of the same tissue, patch by patch (pure numpy/scipy/OpenCV): the measurement
:mod:`pipeline.ihc.registration` refines and scores a transform with. Public: :func:`patch_shifts`."""

from __future__ import annotations

import math

import numpy as np

from pipeline import opencv


def patch_shifts(fixed: np.ndarray, moving: np.ndarray, mask: np.ndarray, patch_px: int = 48,
                 max_patches: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Local misalignment of two pictures on one grid: at up to ``max_patches`` patches (``patch_px`` square,
    on a regular grid) that ``mask`` covers for at least 80 % and that have texture in both pictures, the shift
    (x, y px) that carries ``moving``'s content onto ``fixed``'s (phase correlation, 1/4 px). Returns
    (centres (n, 2) x, y px, shifts (n, 2) x, y px)."""
    if patch_px % 2:
        raise ValueError(f"patch_px must be even, got {patch_px}")
    window = np.outer(np.hanning(patch_px), np.hanning(patch_px)).astype(np.float32)
    half = patch_px // 2
    rows = np.arange(0, fixed.shape[0] - patch_px + 1, half)
    cols = np.arange(0, fixed.shape[1] - patch_px + 1, half)
    if not len(rows) or not len(cols):
        return np.zeros((0, 2)), np.zeros((0, 2))
    covered = _box_means(mask, rows, cols, patch_px) >= 0.8 - 1e-6  # float32 sums: a 0/1 mask's exact 80 % counts
    for picture in (fixed, moving):
        var = (_box_means(picture, rows, cols, patch_px, squared=True)
               - _box_means(picture, rows, cols, patch_px) ** 2)
        covered &= var > 0.02 ** 2
    chosen = [(int(rows[i]), int(cols[j])) for i, j in zip(*np.nonzero(covered), strict=True)]
    if len(chosen) > max_patches:
        chosen = [chosen[i] for i in np.linspace(0, len(chosen) - 1, max_patches).round().astype(int)]
    if not chosen:
        return np.zeros((0, 2)), np.zeros((0, 2))
    stacks = [np.stack([(p - p.mean()) * window for p in (picture[r:r + patch_px, c:c + patch_px]
                                                          for r, c in chosen)]) for picture in (fixed, moving)]
    shifts_rc = _phase_shifts(*stacks, upsample=4)
    centres = np.array([(c + patch_px / 2.0, r + patch_px / 2.0) for r, c in chosen], float)
    return centres, shifts_rc[:, ::-1].astype(float)


def _phase_shifts(fixed: np.ndarray, moving: np.ndarray, upsample: int = 4) -> np.ndarray:
    """For each pair of equal-size windows ``fixed[i]``, ``moving[i]`` (stacks (n, h, w)), the (row, col) shift in
    px, to 1 / ``upsample`` px, that carries ``moving[i]``'s content onto ``fixed[i]``'s: the peak of their
    (unnormalised) cross-correlation, then of its DFT upsampled around that peak (Guizar-Sicairos et al. 2008;
    skimage's ``phase_cross_correlation(..., normalization=None)``, the whole stack at once)."""
    from scipy import fft

    n, h, w = fixed.shape
    product = fft.fft2(fixed) * fft.fft2(moving).conj()
    peak = np.abs(fft.ifft2(product)).reshape(n, -1).argmax(axis=1)
    size = np.array([h, w])
    shift = np.stack(np.unravel_index(peak, (h, w)), axis=1).astype(np.float64)
    shift = np.where(shift > size // 2, shift - size, shift)
    region = math.ceil(1.5 * upsample)
    centre = float(region // 2)
    offset = centre - shift * upsample  # (n, 2): where the coarse peak lies on the upsampled grid
    kernels = [np.exp(-2j * np.pi * (np.arange(region)[None, :, None] - offset[:, axis, None, None])
                      * fft.fftfreq(length, upsample)[None, None, :]).astype(product.dtype)
               for axis, length in enumerate((h, w))]
    upsampled = np.abs(kernels[0] @ product.conj() @ kernels[1].transpose(0, 2, 1))  # (n, region, region)
    fine = np.stack(np.unravel_index(upsampled.reshape(n, -1).argmax(axis=1), (region, region)), axis=1)
    return shift + (fine - centre) / upsample


def _box_means(picture: np.ndarray, rows: np.ndarray, cols: np.ndarray, size: int,
               squared: bool = False) -> np.ndarray:
    """Mean of ``picture`` (of its square with ``squared``) over the ``size`` squares whose top-left corners are
    ``rows`` x ``cols``, which step by ``size // 2`` from 0: means of half-size blocks, four blocks a square
    (``size`` even). Read in bands of block rows, so no picture-sized temporary is made."""
    cv2 = opencv.cv2()
    half = size // 2
    n_r, n_c = len(rows) + 1, len(cols) + 1
    blocks = np.empty((n_r, n_c), np.float32)
    step = max(1, (1 << 20) // (n_c * half * half))  # block rows a band: about 1 M pixels
    for i in range(0, n_r, step):
        j = min(i + step, n_r)
        band = np.asarray(picture[i * half:j * half, :n_c * half], np.float32)
        # means of the half-size blocks: an area resize by a whole factor (float32 sums)
        blocks[i:j] = cv2.resize(band * band if squared else band, (n_c, j - i), interpolation=cv2.INTER_AREA)
    blocks = blocks.astype(np.float64)
    return (blocks[:-1, :-1] + blocks[1:, :-1] + blocks[:-1, 1:] + blocks[1:, 1:]) / 4.0
