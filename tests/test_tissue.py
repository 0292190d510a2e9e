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


# ---- pale tissue and fat kept; glass, shadows, dust and the gaps between pieces still out ----------------------
MYXOID = (222, 214, 228)  # pale bluish-pink ground substance: below the stained thresholds


def _fat(img, y0, y1, x0, x1, cell_px=16, membrane=(200, 120, 190)):
    """Clear cells ``cell_px`` wide with 1-px pink membranes (a honeycomb of adipocytes)."""
    img[y0:y1, x0:x1][::cell_px] = membrane
    img[y0:y1, x0:x1][:, ::cell_px] = membrane
    img[y1 - 1, x0:x1] = membrane
    img[y0:y1, x1 - 1] = membrane
    return img


def test_fat_and_myxoid_stroma_are_tissue():
    img = _fat(_canvas({(20, 180, 110, 180): MYXOID}), 20, 180, 20, 100)  # 4 um/px: 64 um cells
    mask = tissue_mask(img, mpp=4.0)
    assert mask[20:180, 20:100].mean() > 0.95 and mask[20:180, 110:180].mean() > 0.95
    assert not mask[:10].any() and not mask[190:].any()


def test_fat_cut_open_at_the_tissue_edge_is_tissue():
    img = _canvas({(20, 180, 60, 180): HE_PINK})
    _fat(img, 20, 180, 20, 60)
    img[20:180, 20] = GLASS  # the outer membrane torn off: the outer cells open onto the glass
    mask = tissue_mask(img, mpp=4.0)
    assert mask[20:180, 21:60].mean() > 0.9
    assert not mask[:, :12].any()


def test_tinted_glass_grey_shadow_and_dust_are_not_tissue():
    img = _canvas({(40, 160, 40, 160): HE_PINK})
    img[:] = np.where(img == GLASS, np.array((236, 240, 248), np.uint8), img)  # bluish white balance
    img[:, 185:] = (120, 122, 126)  # a grey shadow band along the edge
    img[:, 180:185] = (60, 62, 68)  # and its dark rim, with a bluish cast
    rng = np.random.default_rng(0)
    for y, x in rng.integers(0, 30, size=(12, 2)):  # a cluster of dust specks 1-2 px (4-8 um)
        img[165 + y // 3: 167 + y // 3, 2 + x * 5: 3 + x * 5] = (90, 80, 85)
    mask = tissue_mask(img, mpp=4.0)
    assert mask[40:160, 40:160].all()
    assert not mask[:, 180:].any() and not mask[163:, :].any() and not mask[:35].any()


def test_grey_shadow_with_a_colour_cast_on_neutral_glass_is_not_tissue():
    img = _canvas({(40, 160, 40, 160): HE_PINK})
    img[:, 175:] = np.linspace(200, 90, 25).astype(np.uint8)[None, :, None] + np.array((0, 2, 7), np.uint8)
    mask = tissue_mask(img, mpp=4.0)
    assert mask[40:160, 40:160].all() and not mask[:, 170:].any()


def test_separate_pieces_stay_separate_and_large_lumens_stay_out():
    img = _canvas({(20, 180, 20, 90): HE_PINK, (20, 180, 110, 180): HE_PINK})  # 20 px = 80 um apart at 4 um/px
    img[70:130, 40:75] = GLASS  # a 240 x 140 um lumen: 33,600 um2, above min_hole_um2
    mask = tissue_mask(img, mpp=4.0)
    assert not mask[20:180, 92:108].any()
    assert not mask[80:120, 45:70].any()


def test_pen_ink_halo_is_not_tissue():
    img = _canvas({(20, 180, 20, 90): HE_PINK})
    img[20:180, 130:140] = (40, 160, 60)  # green ink stroke on the glass ...
    img[20:180, 127:130] = img[20:180, 140:143] = (215, 232, 218)  # ... with its pale halo
    mask = tissue_mask(img, mpp=4.0)
    assert mask[30:170, 30:80].all() and not mask[:, 100:].any()


def test_opencv_primitives_match_scipy_and_skimage():
    """tissue_mask's distance transform and small-object removal give what scipy / scikit-image give."""
    from scipy import ndimage
    from skimage import morphology

    from pipeline.filters import edt, remove_small

    rng = np.random.default_rng(11)
    for shape in [(80, 120), (7, 5)]:
        mask = ndimage.gaussian_filter(rng.random(shape), 2.0) > 0.5
        if mask.all() or not mask.any():
            continue
        assert np.allclose(edt(mask), ndimage.distance_transform_edt(mask), atol=1e-4)
        for size in (1, 5, 40):
            assert np.array_equal(remove_small(mask, size), morphology.remove_small_objects(mask, max_size=size))
            assert np.array_equal(~remove_small(~mask, size), morphology.remove_small_holes(mask, max_size=size))
