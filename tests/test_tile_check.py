"""The H&E tile check (pipeline/he/tile_check.py): real H&E passes; the same tiles recoloured as DAB or stripped of
eosin, blurred, or replaced by glass, a dark field or marker ink fail, each on the check that names it."""

import numpy as np
import pytest
from PIL import Image, ImageFilter

from conftest import ROOT
from pipeline.he import tile_check as tc
from pipeline.ihc.stain import HED_REFERENCE, compose, deconvolve


@pytest.fixture(scope="module")
def he_tiles(shared_data) -> np.ndarray:
    """Real H&E at 1.0 um/px (a TCGA carcinoma region and histo.jpg): the check's own calibration never saw them."""
    from pipeline.training.labelled_images import image_tiles, load_rgb

    images = shared_data / "images"
    return np.concatenate([image_tiles(load_rgb(images / "TCGA-HE-7130-01Z-00-DX1.png"), 0.25, 1.0, 224, 1),
                           image_tiles(load_rgb(images / "histo.jpg"), 0.5, 1.0, 224, 4)])


def _recolour(tiles: np.ndarray, eosin_as_dab: bool) -> np.ndarray:
    """Haematoxylin kept; all else (eosin, and what of real eosin HED deconvolution reads as its third stain)
    turned into DAB brown (a strongly positive IHC) or dropped (a DAB-negative IHC)."""
    conc = deconvolve(tiles, HED_REFERENCE)
    rest = conc[..., 1] + conc[..., 2]
    return compose(conc[..., 0], rest if eosin_as_dab else np.zeros_like(rest))


def test_real_he_passes_and_each_counterfeit_fails_on_its_check(he_tiles):
    assert (tc.tile_check_scores(he_tiles) < 1.0).all(), tc.tile_statistics(he_tiles)
    dab = _recolour(he_tiles, eosin_as_dab=True)
    no_eosin = _recolour(he_tiles, eosin_as_dab=False)
    blurred = np.stack([np.asarray(Image.fromarray(t).filter(ImageFilter.GaussianBlur(8))) for t in he_tiles])
    glass = np.full_like(he_tiles, 238)
    dark = (255 - he_tiles) // 4  # a dark field with bright structure, as a fluorescence scan looks
    for tiles, allowed in [(dab, {"colour", "no_eosin"}), (no_eosin, {"no_eosin"}), (blurred, {"blur"}),
                           (glass, {"glass"}), (dark, {"dark", "colour", "no_eosin", "dense"})]:
        assert (tc.tile_check_scores(tiles) > 1.0).all()
        assert set(tc.tile_check_reasons(tiles)) <= allowed


def test_ihc_counterstain_of_any_shade_has_no_eosin(he_tiles):
    """Haematoxylin and DAB in any proportion, with the counterstain's shade moved along the haematoxylin-DAB plane
    (bluer, or browner), show no eosin; real H&E does, well above the threshold."""
    from pipeline.ihc.stain import _DAB, _H, stain_matrix

    params = tc.default_params()
    total = deconvolve(he_tiles, HED_REFERENCE).sum(axis=-1)
    h, dab = np.asarray(_H) / np.linalg.norm(_H), np.asarray(_DAB) / np.linalg.norm(_DAB)
    for shade in (h - 0.2 * dab, h, h + 0.3 * dab):  # bluer, reference, browner counterstain
        for dab_share in (0.0, 0.2, 0.5, 0.8):
            ihc = compose(total * (1 - dab_share), total * dab_share, stain_matrix(shade, _DAB))
            assert (tc.tile_statistics(ihc, params)["eosin"] < params["min_eosin_fraction"]).all()
            assert set(tc.tile_check_reasons(ihc)) <= {"no_eosin", "colour"}
    assert (tc.tile_statistics(he_tiles, params)["eosin"] > 2 * params["min_eosin_fraction"]).all()
    normal = tc.eosin_side_normal()
    assert abs(normal @ HED_REFERENCE[0]) < 1e-6 and abs(normal @ HED_REFERENCE[2]) < 1e-6  # H and DAB on it
    assert normal @ HED_REFERENCE[1] > np.sin(np.radians(30))  # eosin well on its side


def test_marker_ink_is_dense():
    """A red marker stroke lies where eosin does (inside the H&E colour region) but is far denser than a section."""
    tile = np.full((1, 224, 224, 3), 240, np.uint8)
    tile[0, 40:180] = (170, 30, 40)
    assert tc.tile_check_reasons(tile) == ["dense"]


def test_generated_sample_he_passes():
    """The sample cohort's H&E slides (the project's own generator) must not be flagged: they are its demo."""
    from pipeline.slides.reader import open_slide

    with open_slide(ROOT / "slides_sample" / "A-HE.svs") as slide:
        w, h = slide.dimensions
        side = round(224 * 1.0 / slide.mpp)
        tiles = np.stack([slide.read_tile(x, h // 2 - side // 2, 224, 1.0)
                          for x in np.linspace(w // 4, 3 * w // 4 - side, 4).astype(int)])
    tissue = (tiles.mean(axis=-1) < 215).mean(axis=(1, 2)) >= 0.5
    assert tissue.any()
    assert (tc.tile_check_scores(tiles[tissue]) < 1.0).all()


def test_scores_are_ratios_to_the_thresholds():
    params = tc.default_params()
    stats = {"stained": np.array([0.5]), "off_plane": np.array([0.0]), "eosin": np.array([0.9]),
             "sharpness": np.array([params["min_sharpness"] / 2]), "dark": np.array([0.0]), "dense": np.array([0.0])}
    ratios = tc.check_ratios(stats, params)[0]
    blur = list(tc.CHECKS).index("blur")
    assert ratios[blur] == pytest.approx(2.0) and (np.delete(ratios, blur) < 1).all()
    glass = np.full((1, 224, 224, 3), 238, np.uint8)  # nothing stained: threshold / 1e-6, clipped
    assert tc.tile_statistics(glass, params)["stained"][0] == 0.0
    assert tc.tile_check_scores(glass, params)[0] == pytest.approx(1e3) and tc.tile_check_reasons(glass) == ["glass"]


def test_defaults_match_the_shipped_config():
    from pipeline.config import load_config

    assert load_config(ROOT / "configs" / "config.yaml")["tile_check"] == tc.default_params()
    assert set(tc.default_params()) >= {key for _, key, _ in tc.CHECKS.values()}


@pytest.mark.parametrize("bad", [np.zeros((224, 224, 3), np.uint8), np.zeros((1, 224, 224, 3), np.float32),
                                 np.zeros((1, 8, 8, 3), np.uint8)])
def test_bad_input_is_refused(bad):
    with pytest.raises(ValueError):
        tc.tile_check_scores(bad)


def test_large_tiles_count_like_their_quarters():
    """Pixel counts are packed in 16-bit fields: a 512 px tile (262,144 pixels) must not overflow them."""
    rng = np.random.default_rng(0)
    quarters = rng.integers(60, 200, (4, 256, 256, 3), dtype=np.uint8)
    whole = np.concatenate([np.concatenate(quarters[:2], axis=1), np.concatenate(quarters[2:], axis=1)])[None]
    for key in ("stained", "off_plane", "eosin", "dark", "dense"):
        assert tc.tile_statistics(whole)[key][0] == pytest.approx(tc.tile_statistics(quarters)[key].mean())
