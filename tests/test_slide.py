"""Slide reading: MPP resolution, level choice, the direct tile path vs OpenSlide, refusals."""

import numpy as np
import pytest

from conftest import blob_image, write_pyramid_tiff
from pipeline.errors import SlideError
from pipeline.slide import open_slide, safe_properties


def test_generic_tiff_mpp_and_levels(small_slide):
    with open_slide(small_slide) as s:
        assert s.mpp == pytest.approx(0.5)
        assert s.mpp_source == "slide"
        assert s.dimensions == (1536, 1024)
        assert s.level_dimensions[1] == (384, 256)
        assert s.level_mpp(1) == pytest.approx(2.0)


def test_best_level_is_closest_not_coarser(small_svs):
    with open_slide(small_svs) as s:  # levels at 0.5, 2.0, 8.0 um/px
        assert s.best_level_for_mpp(2.0) == 1
        assert s.best_level_for_mpp(1.9) == 0  # level 1 would be coarser than asked
        assert s.best_level_for_mpp(7.9) == 1
        assert s.best_level_for_mpp(100) == 2
        level, region_px, effective = s.tile_geometry(224, 4.0)
        assert (level, region_px, effective) == (1, 448, pytest.approx(4.0))
        assert s.tile_geometry(224, 1.0) == (0, 448, pytest.approx(1.0))


def test_read_tile_has_requested_size_and_content(small_svs):
    with open_slide(small_svs) as s:
        centre = s.read_tile(1024 - 112, 768 - 112, 112, 1.0)  # 224 level-0 px around the centre
        corner = s.read_tile(0, 0, 112, 1.0)
    assert centre.shape == (112, 112, 3) and centre.dtype == np.uint8
    assert centre.mean() < 200 < corner.mean()  # stained blob vs white glass


def test_direct_tile_path_matches_openslide(small_svs):
    fast = open_slide(small_svs)
    slow = open_slide(small_svs, reader="openslide")
    assert type(fast).__name__ == "TiffSlide" and type(slow).__name__ == "OpenSlideSlide"
    for level in range(fast.level_count):
        a = fast.read_region((300, 200), level, (200, 150)).astype(int)
        b = slow.read_region((300, 200), level, (200, 150)).astype(int)
        assert np.abs(a - b).max() <= 2  # same JPEG bytes; only decoder rounding may differ


def test_missing_mpp_is_refused_then_overridden(tmp_path):
    path = write_pyramid_tiff(tmp_path / "nompp.svs", blob_image(512, 512), mpp=None, levels=1, aperio=True)
    with pytest.raises(SlideError, match="`mpp` column"):
        open_slide(path)
    with open_slide(path, mpp=0.5) as s:
        assert s.mpp == 0.5 and s.mpp_source == "override"


@pytest.mark.parametrize("bad_mpp", [0.0, -1.0, 1e6, float("nan")])
def test_absurd_mpp_override_is_refused(small_slide, bad_mpp):
    with pytest.raises(SlideError, match="outside"):
        open_slide(small_slide, mpp=bad_mpp)


def test_not_a_file_empty_and_garbage(tmp_path):
    with pytest.raises(SlideError, match="no such file"):
        open_slide(tmp_path / "missing.svs")
    with pytest.raises(SlideError, match="not a regular file"):
        open_slide(tmp_path)
    (tmp_path / "empty.svs").write_bytes(b"")
    with pytest.raises(SlideError, match="empty file"):
        open_slide(tmp_path / "empty.svs")
    (tmp_path / "text.svs").write_text("this is not a slide\n" * 100)
    with pytest.raises(SlideError, match="not a whole-slide image"):
        open_slide(tmp_path / "text.svs")


def test_sixteen_bit_and_grey_images_are_out_of_scope(tmp_path):
    import tifffile

    tifffile.imwrite(tmp_path / "u16.tif", np.zeros((512, 512, 3), np.uint16), tile=(256, 256))
    tifffile.imwrite(tmp_path / "fluo.tif", np.zeros((3, 512, 512), np.uint8), tile=(256, 256),
                     photometric="minisblack")
    for name in ("u16.tif", "fluo.tif"):
        with pytest.raises(SlideError, match="brightfield"):
            open_slide(tmp_path / name, mpp=0.5)


def test_safe_properties_drop_identifying_keys():
    props = {"openslide.vendor": "aperio", "openslide.mpp-x": "0.5", "aperio.Filename": "CMU-1",
             "aperio.User": "someone", "aperio.Date": "12/29/09", "tiff.ImageDescription": "Aperio|Filename = x",
             "openslide.level[0].width": "100", "openslide.comment": "Filename = x"}
    assert safe_properties(props) == {"openslide.level[0].width": "100", "openslide.mpp-x": "0.5",
                                      "openslide.vendor": "aperio"}


# ---- real files (../shared/data) --------------------------------------------------------------------
def test_real_slides_open_with_their_mpp(shared_data):
    expected = {"cmu_small_region.svs": 0.499, "OS-1-detail.ome.tif": 0.227, "OS-2-vsi.ome.tif": 0.346,
                "boxes_0.dcm": 0.499, "small.svs": 0.499}
    for name, mpp in expected.items():
        with open_slide(shared_data / "slides" / name) as s:
            assert s.mpp == pytest.approx(mpp, abs=0.001), name


def test_real_slide_without_mpp_names_the_override(shared_data):
    path = shared_data / "slides" / "tcga-cr-7395-01a-01-ts1.svs"
    with pytest.raises(SlideError, match="`mpp` column"):
        open_slide(path)
    with open_slide(path, mpp=1.0) as s:  # JPEG 2000 SVS: read through OpenSlide
        assert s.read_tile(2000, 1500, 224, 1.0).shape == (224, 224, 3)


@pytest.mark.parametrize("name,reason", [
    ("broken.svs", "not a whole-slide image"),
    ("unopenable.tiff", "OpenSlide cannot open it"),
    ("small_dicom.dcm", "OpenSlide cannot open it"),
    ("small_vectra.qptiff", "not an 8-bit RGB brightfield"),
])
def test_bad_files_are_refused_with_one_line(shared_data, name, reason):
    with pytest.raises(SlideError, match=reason) as info:
        open_slide(shared_data / "bad" / name)
    assert "\n" not in str(info.value) and name in str(info.value)


def test_unreadable_pixels_are_a_slide_error(shared_data):
    with open_slide(shared_data / "bad" / "unreadable.svs") as s, pytest.raises(SlideError, match="decode"):
        s.read_region((0, 0), 0, (16, 16))


def test_read_downsampled_reports_its_scale(small_svs):
    with open_slide(small_svs) as s:
        thumb, mpp = s.read_downsampled(2.0, chunk_px=200)  # small chunks exercise the stitching
        assert thumb.shape == (384, 512, 3) and mpp == pytest.approx(2.0)
        thumb3, mpp3 = s.read_downsampled(3.0)
        assert mpp3 == pytest.approx(3.0, rel=0.01) and thumb3.shape[1] == round(2048 * 0.5 / 3.0)
        # stitched chunks equal a one-shot read of the same level
        assert np.abs(thumb.astype(int) - s.read_downsampled(2.0)[0].astype(int)).max() == 0
