"""Tissue detection on thumbnails: H&E and pale IHC are tissue; glass, shadows and pen ink are not."""

import numpy as np
import pytest

from pipeline.slides.tissue import optical_density, pen_ink_mask, tissue_mask

GLASS, HE_PINK, IHC_BLUE, DAB = (242, 242, 242), (210, 130, 180), (175, 185, 215), (150, 105, 60)


def _canvas(colour_by_region):
    img = np.full((200, 200, 3), GLASS, np.uint8)
    for (y0, y1, x0, x1), colour in colour_by_region.items():
        img[y0:y1, x0:x1] = colour
    return img


def test_he_and_pale_ihc_are_tissue_glass_is_not():
    img = _canvas({(20, 80, 20, 80): HE_PINK, (120, 180, 20, 80): IHC_BLUE, (120, 180, 120, 180): DAB})
    mask = tissue_mask(img, mpp=4.0)
    assert mask[50, 50] and mask[150, 50] and mask[150, 150]
    assert not mask[5, 5] and not mask[50, 150]


def test_pen_ink_and_dark_shadow_are_not_tissue():
    img = _canvas({(20, 80, 20, 80): (40, 160, 60), (120, 180, 20, 80): (30, 50, 170),
                   (120, 180, 120, 180): (20, 20, 20)})
    assert pen_ink_mask(img)[50, 50] and pen_ink_mask(img)[150, 50] and pen_ink_mask(img)[150, 150]
    assert not tissue_mask(img, mpp=4.0).any()


def test_dust_removed_and_small_holes_filled():
    img = _canvas({(20, 180, 20, 180): HE_PINK, (2, 4, 190, 192): HE_PINK})
    img[95:100, 95:100] = GLASS  # a 5 x 5 px lumen at 4 um/px = 400 um2 < min_hole_um2
    mask = tissue_mask(img, mpp=4.0, min_object_um2=2500, min_hole_um2=2500)
    assert mask[97, 97] and not mask[3, 191]


def test_optical_density_of_glass_is_low():
    assert optical_density(np.full((2, 2, 3), 242, np.uint8)).max() < 0.05
    assert optical_density(np.full((2, 2, 3), 60, np.uint8)).min() > 0.5


def test_bad_input_raises_value_error():
    with pytest.raises(ValueError):
        tissue_mask(np.zeros((10, 10), np.uint8), mpp=1.0)
    with pytest.raises(ValueError):
        tissue_mask(np.zeros((10, 10, 3), np.uint8), mpp=0)
