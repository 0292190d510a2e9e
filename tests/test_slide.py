"""Slide reading: MPP resolution, level choice, the direct tile path vs OpenSlide, refusals."""

from collections import OrderedDict

import numpy as np
import pytest

from conftest import blob_image, write_pyramid_tiff
from pipeline.errors import SlideError
from pipeline.slides.reader import open_slide
from pipeline.slides.resolution import MPP_COARSER_TOLERANCE, check_resolution, ome_mpp, resolution_problem
from pipeline.slides.slide import safe_properties


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


# ---- resolution honesty: never enlarged, never a print DPI ------------------------------------------------
@pytest.mark.parametrize("slide_mpp,refused", [(0.25, False), (1.0, False), (1.1, False), (1.12, True), (2.0, True)])
def test_slides_coarser_than_asked_beyond_the_tolerance_are_refused(slide_mpp, refused):
    assert MPP_COARSER_TOLERANCE == 0.10
    problem = resolution_problem(slide_mpp, 1.0, "the tile classifier")
    assert (problem is not None) == refused
    if refused:
        assert problem.startswith(f"scanned at {slide_mpp:g} um/px, coarser than the 1 um/px the tile classifier")
        assert "never enlarged" in problem and "\n" not in problem


def test_coarse_slide_error_names_the_file(tmp_path):
    path = write_pyramid_tiff(tmp_path / "coarse.tif", blob_image(512, 512), mpp=2.0, levels=1)
    with open_slide(path) as s, pytest.raises(SlideError, match=r"coarse\.tif: scanned at 2 um/px"):
        check_resolution(s, 1.0, "the tile classifier")


def test_effective_mpp_is_the_resolution_actually_read(tmp_path, small_svs):
    path = write_pyramid_tiff(tmp_path / "s105.tif", blob_image(512, 512), mpp=1.05, levels=1)
    with open_slide(path) as s:  # within the tolerance: read, but its tiles hold 1.05 um/px of detail, not 1.0
        assert s.tile_geometry(224, 1.0) == (0, 213, pytest.approx(1.05))
    with open_slide(small_svs) as s:  # finer slides are downsampled to the asked scale
        assert s.tile_geometry(224, 1.0) == (0, 448, pytest.approx(1.0))


def _resolution_tiff(path, unit: str, per_unit: float, tiled: bool):
    import tifffile

    kwargs = {"tile": (256, 256), "compression": "jpeg"} if tiled else {}  # tiled: OpenSlide's generic-tiff path
    tifffile.imwrite(path, blob_image(512, 512), photometric="rgb", resolution=(per_unit, per_unit),
                     resolutionunit=unit, metadata=None, **kwargs)
    return path


@pytest.mark.parametrize("tiled", [True, False])
@pytest.mark.parametrize("dpi", [600, 50800])  # a print setting (42 um/px) and a plausible-looking 0.5 um/px
def test_tiff_with_only_dpi_needs_the_sheet_mpp(tmp_path, tiled, dpi):
    path = _resolution_tiff(tmp_path / "dpi.tif", "INCH", dpi, tiled)
    with pytest.raises(SlideError, match="dots per inch") as info:
        open_slide(path)
    message = str(info.value)
    assert "dpi.tif" in message and "`mpp` column" in message and "\n" not in message
    with open_slide(path, mpp=0.5) as s:
        assert s.mpp == 0.5 and s.mpp_source == "override"


@pytest.mark.parametrize("tiled", [True, False])
def test_tiff_resolution_in_centimetres_is_a_pixel_size(tmp_path, tiled):
    with open_slide(_resolution_tiff(tmp_path / "cm.tif", "CENTIMETER", 20000, tiled)) as s:
        assert s.mpp == pytest.approx(0.5) and s.mpp_source == "slide"


@pytest.mark.parametrize("attrs,expected", [
    ('PhysicalSizeX="0.25" PhysicalSizeY="0.25"', 0.25),  # no unit: micrometres, the OME default
    ('PhysicalSizeX="250" PhysicalSizeXUnit="nm" PhysicalSizeY="0.00025" PhysicalSizeYUnit="mm"', 0.25),
    ('PhysicalSizeX="0.25" PhysicalSizeXUnit="pixel" PhysicalSizeY="0.25"', "not a length unit"),
    ('PhysicalSizeX="0.25" PhysicalSizeY="0.5"', "not square"),
    ('PhysicalSizeX="0.25"', "PhysicalSizeY is missing"),
    ('PhysicalSizeX="abc" PhysicalSizeY="0.25"', "not a number"),
])
def test_ome_physical_sizes_are_checked_for_unit_and_squareness(attrs, expected):
    mpp, why = ome_mpp(f'<OME><Image ID="Image:0"><Pixels ID="Pixels:0" SizeX="8" SizeY="8" {attrs}/></Image></OME>')
    if isinstance(expected, float):
        assert mpp == pytest.approx(expected) and why == ""
    else:
        assert mpp is None and expected in why


def test_ome_tiff_with_a_bad_unit_needs_the_sheet_mpp(tmp_path):
    import tifffile

    path = tmp_path / "bad.ome.tif"
    tifffile.imwrite(path, blob_image(256, 256), photometric="rgb", ome=True,
                     metadata={"PhysicalSizeX": 0.5, "PhysicalSizeXUnit": "pixel", "PhysicalSizeY": 0.5})
    with pytest.raises(SlideError, match="not a length unit.*`mpp` column"):
        open_slide(path)


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


# ---- the direct tile path: batches, threads, pixels ---------------------------------------------------
def _tile_corners(slide, tile_px, target_mpp, overhang=True):
    """Level-0 corners of a regular grid of tiles, plus tiles running past the right and bottom edges."""
    size0 = round(tile_px * target_mpp / slide.mpp)
    w, h = slide.dimensions
    xs, ys = np.meshgrid(np.arange(0, w - size0 + 1, size0 // 2 + 7), np.arange(0, h - size0 + 1, size0 // 2 + 5))
    xs, ys = list(xs.ravel()), list(ys.ravel())
    if overhang:
        xs += [w - size0 // 3, 0, w - 10]
        ys += [0, h - size0 // 2, h - 10]
    return np.array(xs, np.int64), np.array(ys, np.int64)


@pytest.mark.parametrize("target_mpp", [1.0, 2.0, 0.5])  # level 0 resized, level 1 exact, level 0 exact
def test_read_tiles_equals_read_tile_and_openslide(small_svs, target_mpp):
    fast = open_slide(small_svs)
    slow = open_slide(small_svs, reader="openslide")
    xs, ys = _tile_corners(fast, 112, target_mpp)
    batch = fast.read_tiles(xs, ys, 112, target_mpp)
    assert batch.shape == (len(xs), 112, 112, 3) and batch.dtype == np.uint8
    for i, (x0, y0) in enumerate(zip(xs, ys, strict=True)):
        assert np.array_equal(batch[i], fast.read_tile(int(x0), int(y0), 112, target_mpp))
    reference = slow.read_tiles(xs, ys, 112, target_mpp)
    assert np.abs(batch.astype(int) - reference.astype(int)).max() <= 2  # same JPEG bytes, decoder rounding
    assert (batch[-1, -5:, -5:] == 255).all()  # past the slide's edge: white glass
    out = np.zeros_like(batch)
    assert fast.read_tiles(xs, ys, 112, target_mpp, out=out) is out and np.array_equal(out, batch)
    with pytest.raises(ValueError, match="out must be"):
        fast.read_tiles(xs, ys, 112, target_mpp, out=out[:-1])


class _LockCheckedDict(OrderedDict):
    """The segment cache, failing any read or change made without the slide's lock held."""

    def __init__(self, lock):
        super().__init__()
        self.lock = lock

    def _check(self):
        if not self.lock.locked():
            raise AssertionError("segment cache touched without the lock")

    def get(self, *args):
        self._check()
        return super().get(*args)

    def __setitem__(self, key, value):
        self._check()
        super().__setitem__(key, value)

    def move_to_end(self, *args, **kwargs):
        self._check()
        super().move_to_end(*args, **kwargs)

    def pop(self, *args):
        self._check()
        return super().pop(*args)

    def popitem(self, *args, **kwargs):
        self._check()
        return super().popitem(*args, **kwargs)

    def __iter__(self):
        self._check()
        return super().__iter__()


def test_one_tiff_reader_shared_by_threads_gives_single_thread_pixels(small_svs):
    """Many threads read through one TiffSlide whose small segment cache evicts all the time."""
    from concurrent.futures import ThreadPoolExecutor

    with open_slide(small_svs) as s:
        xs, ys = _tile_corners(s, 64, 0.5, overhang=False)
        pick = np.random.default_rng(0).choice(len(xs), 48, replace=False)  # 48 tiles all over the slide
        xs, ys = xs[pick], ys[pick]
        expected = s.read_tiles(xs, ys, 64, 0.5)
        s._CACHE_SEGMENTS = 3  # fewer than one tile may need: constant eviction while others read
        s._cache = _LockCheckedDict(s._lock)

        def hammer(seed):
            order = np.random.default_rng(seed).permutation(len(xs))
            for _ in range(2):
                for i in order:
                    if not np.array_equal(s.read_tile(int(xs[i]), int(ys[i]), 64, 0.5), expected[i]):
                        return False
                batch = s.read_tiles(xs[order], ys[order], 64, 0.5)
                if not np.array_equal(batch, expected[order]):
                    return False
            return True

        with ThreadPoolExecutor(8) as pool:
            assert all(pool.map(hammer, range(16)))
        assert len(s._cache) <= 3 and not s._pins  # every segment unpinned after its copy


@pytest.mark.parametrize("workers,prefetch", [(1, 0), (2, 0), (1, 2), (3, 4)])
def test_thread_tile_reader_batches_in_grid_order(small_svs, workers, prefetch):
    """Scoring's reader threads (overlapped or in turn with inference) give exactly the slide's tiles."""
    from pipeline.he.tile_readers import ThreadTileReader

    with open_slide(small_svs) as s:
        xs, ys = _tile_corners(s, 112, 2.0, overhang=False)
        expected = s.read_tiles(xs, ys, 112, 2.0)
    reader = ThreadTileReader(small_svs, None, 112, 2.0, workers, prefetch)
    try:
        batches = [b.copy() for b in reader.iter_batches(xs, ys, 5)]  # a batch is valid until the next one
    finally:
        reader.close()
    assert [len(b) for b in batches] == [5] * (len(xs) // 5) + ([len(xs) % 5] if len(xs) % 5 else [])
    assert np.array_equal(np.concatenate(batches), expected)
    assert len(reader._opened) == 0


def test_reader_plan_overlaps_only_with_a_free_core_or_a_gpu(monkeypatch):
    from pipeline.he import tile_readers as scoring

    monkeypatch.setattr(scoring, "available_cpus", lambda: 2)
    assert scoring.reader_plan("cpu", threads=2) == (2, 0)  # inference fills both cores: read, then infer
    assert scoring.reader_plan("cpu", threads=1) == (1, 2)  # one core free: one reader, overlapped
    assert scoring.reader_plan("cpu", threads=2, readers=1, prefetch=3) == (1, 3)  # asked for: as asked
    monkeypatch.setattr(scoring, "available_cpus", lambda: 16)
    assert scoring.reader_plan("cpu", threads=2) == (4, 5)
    assert scoring.reader_plan("cuda", threads=2) == (8, 9)


def test_decode_buffers_avoid_32_byte_alignment():
    """libjpeg-turbo decodes measurably slower into 32-byte-aligned buffers; ours start 16 bytes past 64."""
    from pipeline.slides.tiff_slide import decode_buffer

    for shape in [(256, 256, 3), (240, 512, 3), (1, 1, 3)]:
        buf = decode_buffer(shape)
        assert buf.shape == shape and buf.dtype == np.uint8 and buf.flags.c_contiguous and buf.flags.writeable
        assert buf.ctypes.data % 64 == 16
