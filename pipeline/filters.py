"""Image primitives on OpenCV, each equal to the scipy.ndimage / scikit-image call it replaces (arrays in, arrays
out): :func:`gaussian`, :func:`laplace`, :func:`maximum`, :func:`open_cross`, :func:`label4`, :func:`block_mean`,
:func:`lookup`, :func:`edt`, :func:`remove_small`. Used by the IHC stage (nuclei, tissue pixels) and by the slides'
tissue mask (QC, registration).

Why: a tile of the tumour region runs about ten of these; scipy's separable filters took 12 ms of a 50 ms tile
(448 px float32, 2 cores) where OpenCV's vectorised ones take about 1.5 ms. Borders reflect as scipy's default
``mode="reflect"`` does (``dcba|abcd``, OpenCV's ``BORDER_REFLECT``) and Gaussian kernels reach 4 sigma as scipy's
``truncate=4.0`` does, so results agree to float32 rounding (tests/test_ihc.py checks each against scipy).
"""

from __future__ import annotations

import numpy as np

from pipeline import opencv

TRUNCATE = 4.0  # scipy.ndimage.gaussian_filter's default kernel reach, in sigmas


def gaussian(image: np.ndarray, sigma_px: float) -> np.ndarray:
    """``scipy.ndimage.gaussian_filter(image, sigma_px)`` of a 2-D float32 image (reflected border)."""
    cv2 = opencv.cv2()
    k = 2 * int(TRUNCATE * float(sigma_px) + 0.5) + 1
    return cv2.GaussianBlur(np.ascontiguousarray(image, np.float32), (k, k), float(sigma_px),
                            sigmaY=float(sigma_px), borderType=cv2.BORDER_REFLECT)


def laplace(image: np.ndarray) -> np.ndarray:
    """``scipy.ndimage.laplace`` (5-point stencil, reflected border) of a 2-D float32 image."""
    cv2 = opencv.cv2()
    return cv2.Laplacian(np.ascontiguousarray(image, np.float32), cv2.CV_32F, ksize=1, borderType=cv2.BORDER_REFLECT)


def maximum(image: np.ndarray, size_px: int) -> np.ndarray:
    """``scipy.ndimage.maximum_filter(image, size=size_px)`` (square window, reflected border)."""
    cv2 = opencv.cv2()
    return cv2.dilate(np.ascontiguousarray(image), np.ones((size_px, size_px), np.uint8),
                      borderType=cv2.BORDER_REFLECT)


def open_cross(mask: np.ndarray) -> np.ndarray:
    """``scipy.ndimage.binary_opening(mask, iterations=1)``: 3 x 3 cross, outside the image = background."""
    cv2 = opencv.cv2()
    cross = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))
    m = np.ascontiguousarray(mask, bool).view(np.uint8)
    eroded = cv2.erode(m, cross, borderType=cv2.BORDER_CONSTANT, borderValue=0)
    return cv2.dilate(eroded, cross, borderType=cv2.BORDER_CONSTANT, borderValue=0).view(bool)


def label4(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """``scipy.ndimage.label(mask)`` (4-connected components, int32 labels 1..n; 0 = background) and n."""
    cv2 = opencv.cv2()
    n, labels = cv2.connectedComponents(np.ascontiguousarray(mask, bool).view(np.uint8), connectivity=4,
                                        ltype=cv2.CV_32S)
    return labels, n - 1


def block_mean(image: np.ndarray, block_px: int) -> np.ndarray:
    """Means of ``block_px`` x ``block_px`` blocks of a 2-D float32 image, the last row/column of blocks taking
    the edge pixels again where the size is not a multiple (``edge`` padding)."""
    cv2 = opencv.cv2()
    h, w = image.shape
    ph, pw = -h % block_px, -w % block_px
    padded = np.pad(image, ((0, ph), (0, pw)), mode="edge") if ph or pw else image
    return cv2.resize(np.ascontiguousarray(padded, np.float32), ((w + pw) // block_px, (h + ph) // block_px),
                      interpolation=cv2.INTER_AREA)


def lookup(rgb: np.ndarray, table: np.ndarray) -> np.ndarray:
    """``table[rgb]`` of an (H, W, 3) uint8 picture, ``table`` 256 values (the same values, without the gather)."""
    return opencv.cv2().LUT(np.ascontiguousarray(rgb), table)


def edt(mask: np.ndarray) -> np.ndarray:
    """``scipy.ndimage.distance_transform_edt(mask)``: each True pixel's Euclidean distance (px) to the nearest
    False one, exact (OpenCV's precise mask; float32)."""
    cv2 = opencv.cv2()
    return cv2.distanceTransform(np.ascontiguousarray(mask, bool).view(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)


def remove_small(mask: np.ndarray, max_size: int) -> np.ndarray:
    """``skimage.morphology.remove_small_objects(mask, max_size=max_size)``: 4-connected components of at most
    ``max_size`` px dropped (``~remove_small(~mask, n)`` is ``remove_small_holes(mask, max_size=n)``)."""
    cv2 = opencv.cv2()
    _, labels, stats, _ = cv2.connectedComponentsWithStats(np.ascontiguousarray(mask, bool).view(np.uint8),
                                                           connectivity=4, ltype=cv2.CV_32S)
    small = stats[:, cv2.CC_STAT_AREA] <= max_size
    small[0] = False
    return mask & ~small[labels]
