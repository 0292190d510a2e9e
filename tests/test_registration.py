"""Registration of an IHC slide onto its H&E slide (pipeline/ihc/registration.py, pipeline/ihc/register.py).

The sample cohort's IHC slides lie under a known rigid transform of their H&E slide (drawn by the generator and
recorded in each truth file): registering each must recover it within 50 um. A-ER's picture carried back into the
H&E frame and moved by other known rigid transforms (rotation, mirror, scale, shift) gives more cases with a known
answer;
an H&E slide against another case's tissue or noise must fail; the OS-2 pair (one Ki-67 section, two scanners)
is the real-data check.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import pytest

from pipeline.ihc import registration as reg
from pipeline.ihc.register import register_slides, registration_levels
from pipeline.slides.reader import open_slide

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "slides_sample"
COARSE_MPP, FINE_MPP = 7.5, 2.0
MAX_ERROR_UM = 50.0


def _pictures(path: Path) -> tuple[np.ndarray, float, np.ndarray, float]:
    with open_slide(path) as slide:
        coarse, coarse_mpp = slide.read_downsampled(COARSE_MPP)
        fine, fine_mpp = slide.read_downsampled(FINE_MPP)
    return coarse, coarse_mpp, fine, fine_mpp


def _levels(coarse, coarse_mpp, fine, fine_mpp) -> tuple[reg.Level, reg.Level]:
    c = reg.Level.from_rgb(coarse, coarse_mpp)
    return c, reg.Level.from_rgb(fine, fine_mpp, coarser=c)


@pytest.fixture(scope="module")
def he_levels():
    return _levels(*_pictures(SAMPLE / "A-HE.svs"))


def _truth_matrix(ihc: str) -> np.ndarray:
    """The generator's IHC level-0 px -> H&E level-0 px matrix of a sample IHC slide."""
    truth = json.loads((SAMPLE / f"{ihc}.svs.truth.json").read_text())
    return np.array(truth["registration"]["to_he_level0_px"], float)


@pytest.fixture(scope="module")
def er_fine(he_levels):
    """A-ER at FINE_MPP carried into A-HE's frame (its pixels resampled through the recorded transform)."""
    _, _, fine, mpp = _pictures(SAMPLE / "A-ER.svs")
    m = _truth_matrix("A-ER")  # level-0 px at 0.5 um/px on both slides
    to_he = reg.Rigid.from_matrix_um(np.array([[m[0, 0], m[0, 1], m[0, 2] * 0.5], [m[1, 0], m[1, 1], m[1, 2] * 0.5],
                                               [0.0, 0.0, 1.0]]))
    he_shape = he_levels[1].mask.shape
    return _move(fine, mpp, to_he, he_shape), mpp


def _tissue_points_um(level: reg.Level, n: int = 12) -> np.ndarray:
    """``n`` points spread over the tissue of ``level`` (um)."""
    rows, cols = np.nonzero(level.mask > 0.5)
    pick = np.linspace(0, len(rows) - 1, n).round().astype(int)
    return np.stack([(cols[pick] + 0.5) * level.mpp, (rows[pick] + 0.5) * level.mpp], axis=1)


def _move(rgb: np.ndarray, mpp: float, truth: reg.Rigid, out_shape) -> np.ndarray:
    """``rgb`` (glass-filled) resampled so that its point p (um) lands at truth(p): skimage, not our warp."""
    from skimage.transform import AffineTransform, warp

    to_um = np.array([[mpp, 0, 0.5 * mpp], [0, mpp, 0.5 * mpp], [0, 0, 1.0]])  # px centre (x, y) -> um
    px_matrix = np.linalg.inv(to_um) @ truth.matrix_um() @ to_um
    glass = np.median(rgb[:8, :8].reshape(-1, 3), axis=0).astype(np.float64)
    tissue = rgb.astype(np.float64) - glass
    moved = warp(tissue, AffineTransform(matrix=px_matrix).inverse, output_shape=out_shape, order=1, cval=0.0,
                 preserve_range=True)
    return np.clip(np.round(moved + glass), 0, 255).astype(np.uint8)


def _coarse_of(fine: np.ndarray, fine_mpp: float) -> tuple[np.ndarray, float]:
    from PIL import Image

    factor = COARSE_MPP / fine_mpp
    w, h = round(fine.shape[1] / factor), round(fine.shape[0] / factor)
    return np.asarray(Image.fromarray(fine).resize((w, h), Image.Resampling.BOX)), fine_mpp * fine.shape[1] / w


# ---- transforms and conventions --------------------------------------------------------------------------------

def test_rigid_matrix_round_trip_and_level0_matrix():
    rigid = reg.Rigid(123.0, True, 0.95, (250.0, -40.0))
    back = reg.Rigid.from_matrix_um(rigid.matrix_um())
    assert back.flip and back.rotation_deg == pytest.approx(123.0) and back.scale == pytest.approx(0.95)
    assert back.shift_um == pytest.approx((250.0, -40.0))
    # level-0 px of an IHC slide at 0.25 um/px onto an H&E slide at 0.5 um/px
    m = reg.level0_matrix(rigid, he_mpp=0.5, ihc_mpp=0.25)
    p_ihc_px = np.array([400.0, 1200.0])
    p_he_px = (m @ [*p_ihc_px, 1.0])[:2]
    assert p_he_px * 0.5 == pytest.approx(rigid.apply(p_ihc_px * 0.25)[0])


def test_warp_moves_content_where_the_transform_says():
    image = np.zeros((60, 80), np.float32)
    image[20, 30] = 1.0  # pixel centre at x = 30.5 px, y = 20.5 px
    rigid = reg.Rigid(90.0, False, 1.0, (50.0, -10.0))
    out = reg.warp(image, 1.0, rigid, 1.0, (80, 80))
    r, c = np.unravel_index(int(np.argmax(out)), out.shape)
    x, y = rigid.apply([[30.5, 20.5]])[0]
    assert (c + 0.5, r + 0.5) == pytest.approx((x, y), abs=1.0)


def test_patch_shifts_measure_a_known_shift(he_levels):
    _, fine = he_levels
    moved = reg.warp(fine.density, fine.mpp, reg.Rigid(shift_um=(6 * fine.mpp, -4 * fine.mpp)), fine.mpp,
                     fine.density.shape)
    centres, shifts = reg.patch_shifts(fine.density, moved, fine.mask)
    assert len(centres) >= 8
    # the moved content sits 6 px right and 4 px up: carrying it back onto the original is (-6, +4)
    assert np.median(shifts, axis=0) == pytest.approx((-6.0, 4.0), abs=0.3)


# ---- synthetic: the sample cohort ---------------------------------------------------------------------------------

def test_sample_ihc_carried_into_the_he_frame_registers_as_the_identity(he_levels, er_fine):
    fine, fine_mpp = er_fine
    ihc = _levels(*_coarse_of(fine, fine_mpp), fine, fine_mpp)
    rigid, quality = reg.register_images(*he_levels[:1], ihc[0], he_levels[1], ihc[1])
    points = _tissue_points_um(he_levels[0])
    error = np.linalg.norm(rigid.apply(points) - points, axis=1).max()
    print(f"A-ER carried onto A-HE (identity): max error {error:.2f} um, quality {quality}")
    assert quality["status"] == "ok" and error <= MAX_ERROR_UM and not rigid.flip


SAMPLE_PAIRS = [("A-HE", "A-ER"), ("A-HE", "A-CK_AE1AE3"), ("A-HE", "A-desmin"), ("B-HE", "B-p40"),
                ("B-HE", "B-CK_AE1AE3"), ("C-HE", "C-desmin"), ("C-HE", "C-CK_AE1AE3")]


@pytest.mark.parametrize("he, ihc", SAMPLE_PAIRS)
def test_every_sample_ihc_slide_registers_within_50_um_of_the_drawn_transform(he, ihc):
    """Slide level (reader, levels, record): each sample IHC slide lies rotated (any angle), shifted and perhaps
    mirrored on its glass; the transform found maps the H&E tissue within 50 um of where the generator put it."""
    record = register_slides(SAMPLE / f"{he}.svs", SAMPLE / f"{ihc}.svs")
    truth = _truth_matrix(ihc)
    found = np.array(record["transform"]["matrix_level0_px"]) if record["status"] == "ok" else np.zeros((3, 3))
    he_mask = np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(SAMPLE / f"{he}.svs.truth.png"))
    with open_slide(SAMPLE / f"{he}.svs") as slide:
        he_size, he_mpp = slide.dimensions, slide.mpp
    rows, cols = np.nonzero(he_mask > 0)  # tissue of the H&E truth map, its pixels scaled to level 0
    pick = np.linspace(0, len(rows) - 1, 40).round().astype(int)
    sx, sy = he_size[0] / he_mask.shape[1], he_size[1] / he_mask.shape[0]
    he_pts = np.stack([(cols[pick] + 0.5) * sx, (rows[pick] + 0.5) * sy, np.ones(len(pick))], axis=1)
    ihc_pts = he_pts @ np.linalg.inv(truth).T  # where that tissue lies on the IHC slide
    error_um = np.linalg.norm((ihc_pts @ found.T - he_pts)[:, :2], axis=1).max() * he_mpp
    print(f"{ihc} onto {he}: {record['status']}, max error over 40 tissue points {error_um:.2f} um, "
          f"score {record['quality']['score']}, {record['timings_s']}")
    assert record["status"] == "ok" and error_um <= MAX_ERROR_UM


CASES = [  # rotation_deg, flip, scale, offset_um: where the slide's centre lands relative to the canvas centre
    (0.0, False, 1.0, (300.0, -200.0)),
    (37.0, False, 1.0, (-150.0, 100.0)),
    (123.0, True, 1.0, (200.0, 150.0)),
    (250.0, False, 0.95, (-100.0, -250.0)),
    (250.0, True, 1.0, (120.0, -60.0)),
    (37.0, True, 0.95, (-200.0, 180.0)),
]
CANVAS_PX = 2200  # 4400 um at 2 um/px: the 3000 x 2400 um sample slide fits at any angle


@pytest.mark.parametrize("rotation_deg, flip, scale, offset_um", CASES)
def test_known_rigid_transforms_of_a_dab_slide_are_recovered(he_levels, er_fine, rotation_deg, flip, scale,
                                                               offset_um):
    """A-ER (DAB + haematoxylin) moved by a known transform, registered onto A-HE (H&E): a different-stain pair."""
    fine, fine_mpp = er_fine
    slide_centre = np.array(fine.shape[1::-1]) * fine_mpp / 2.0
    linear = reg.Rigid(rotation_deg, flip, scale).linear()
    shift_um = CANVAS_PX * fine_mpp / 2.0 + np.asarray(offset_um) - linear @ slide_centre
    truth = reg.Rigid(rotation_deg, flip, scale, tuple(shift_um))  # A-ER / A-HE um -> moved um
    moved_fine = _move(fine, fine_mpp, truth, (CANVAS_PX, CANVAS_PX))
    ihc = _levels(*_coarse_of(moved_fine, fine_mpp), moved_fine, fine_mpp)
    started = time.perf_counter()
    rigid, quality = reg.register_images(he_levels[0], ihc[0], he_levels[1], ihc[1])
    seconds = time.perf_counter() - started
    he_points = _tissue_points_um(he_levels[0])
    moved_points = truth.apply(he_points)  # the same tissue on the moved slide
    error = np.linalg.norm(rigid.apply(moved_points) - he_points, axis=1)
    print(f"case rot {rotation_deg} flip {flip} scale {scale}: max error {error.max():.2f} um, found "
          f"rot {rigid.rotation_deg:.2f} flip {rigid.flip} scale {rigid.scale:.4f}, score {quality['score']}, "
          f"residual p95 {quality['residual_p95_um']} um, {seconds:.2f} s")
    assert quality["status"] == "ok", quality
    assert rigid.flip == flip
    assert error.max() <= MAX_ERROR_UM


def _deformed(rgb: np.ndarray, max_px: float, seed: int) -> np.ndarray:
    """``rgb`` bent by a smooth random displacement of up to ``max_px``, its top-left ninth cut away (a piece lost
    on the serial section) and pixel noise added: what differs between two serial sections."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    h, w = rgb.shape[:2]
    d = [ndimage.gaussian_filter(rng.normal(size=(h, w)), 80) for _ in range(2)]
    d = [v * max_px / np.abs(v).max() for v in d]
    rows, cols = np.mgrid[0:h, 0:w]
    out = np.stack([ndimage.map_coordinates(rgb[..., k], [rows + d[0], cols + d[1]], order=1, mode="nearest")
                    for k in range(3)], axis=-1)
    out[: h // 3, : w // 3] = np.median(rgb[:8, :8].reshape(-1, 3), axis=0)
    return np.clip(out + rng.normal(0, 6, out.shape), 0, 255).astype(np.uint8)


def test_a_deformed_partial_section_is_registered_with_an_honest_residual(he_levels, er_fine):
    """A mirrored, turned, 3 % larger section bent by up to 14 um with a piece missing: still within 50 um, and
    the residual error reports the bending (above 1 um, below 50 um)."""
    fine, fine_mpp = er_fine
    bent = _deformed(fine, max_px=7.0, seed=0)
    linear = reg.Rigid(200.0, True, 1.03).linear()
    centre = np.array(fine.shape[1::-1]) * fine_mpp / 2.0
    truth = reg.Rigid(200.0, True, 1.03, tuple(CANVAS_PX * fine_mpp / 2.0 - linear @ centre))
    moved = _move(bent, fine_mpp, truth, (CANVAS_PX, CANVAS_PX))
    ihc = _levels(*_coarse_of(moved, fine_mpp), moved, fine_mpp)
    rigid, quality = reg.register_images(he_levels[0], ihc[0], he_levels[1], ihc[1])
    he_points = _tissue_points_um(he_levels[0])
    error = np.linalg.norm(rigid.apply(truth.apply(he_points)) - he_points, axis=1)
    print(f"deformed partial section: max error {error.max():.2f} um, quality {quality}")
    assert quality["status"] == "ok" and error.max() <= MAX_ERROR_UM
    assert 1.0 < quality["residual_p95_um"] < MAX_ERROR_UM


# ---- failures: never a confident wrong transform ----------------------------------------------------------------

def test_unrelated_tissue_fails(he_levels):
    other = _levels(*_pictures(SAMPLE / "C-HE.svs"))
    _, quality = reg.register_images(he_levels[0], other[0], he_levels[1], other[1])
    print("A-HE vs C-HE:", quality)
    assert quality["status"] == "failed" and "score" in quality["reason"]


def test_noise_fails(he_levels):
    rng = np.random.default_rng(3)
    fine = rng.integers(90, 250, size=he_levels[1].density.shape + (3,), dtype=np.uint8)
    noise = _levels(*_coarse_of(fine, FINE_MPP), fine, FINE_MPP)
    _, quality = reg.register_images(he_levels[0], noise[0], he_levels[1], noise[1])
    print("A-HE vs noise:", quality)
    assert quality["status"] == "failed"


def test_blank_slide_fails(he_levels):
    blank = np.full(he_levels[1].density.shape + (3,), 242, np.uint8)
    glass = _levels(*_coarse_of(blank, FINE_MPP), blank, FINE_MPP)
    _, quality = reg.register_images(he_levels[0], glass[0], he_levels[1], glass[1])
    assert quality["status"] == "failed" and quality["reason"] == "no tissue found on the IHC slide"


# ---- the slide-level function and the verb ---------------------------------------------------------------------

def test_registration_levels_follow_the_slide_size():
    assert registration_levels(3000.0, (0.5, 0.5)) == pytest.approx((7.5, 2.0))
    assert registration_levels(30000.0, (0.25, 0.5)) == pytest.approx((16.0, 4.0))
    assert registration_levels(500.0, (0.227, 0.346)) == pytest.approx((1.25, 1.0))


def test_verb_writes_the_record_without_paths(tmp_path):
    from pipeline.__main__ import main

    out = tmp_path / "registration.json"
    started = time.perf_counter()
    assert main(["register-ihc", "--he", str(SAMPLE / "A-HE.svs"), "--ihc", str(SAMPLE / "A-ER.svs"),
                 "--he-id", "A-HE", "--ihc-id", "A-ER", "--out", str(out)]) == 0
    print(f"register-ihc A-HE / A-ER: {time.perf_counter() - started:.2f} s wall")
    text = out.read_text()
    record = json.loads(text)
    assert record["status"] == "ok" and record["ihc_slide_id"] == "A-ER"
    matrix = np.array(record["transform"]["matrix_level0_px"])
    centre = _truth_matrix("A-ER") @ [3500.0, 3500.0, 1.0]  # the IHC slide's centre, on the H&E slide
    assert matrix @ [3500.0, 3500.0, 1.0] == pytest.approx(centre, abs=MAX_ERROR_UM / 0.5)
    assert np.array(record["transform"]["inverse_matrix_level0_px"]) @ matrix == pytest.approx(np.eye(3), abs=1e-4)
    assert "timings_s" not in record and "machine" not in record  # byte-identical on a rerun
    assert "slides_sample" not in text and ".svs" not in text


def test_verb_records_an_unreadable_slide_as_failed(tmp_path):
    from pipeline.__main__ import main

    bad = tmp_path / "S-12345-secret.svs"
    bad.write_bytes(b"not a slide")
    out = tmp_path / "registration.json"
    assert main(["register-ihc", "--he", str(SAMPLE / "A-HE.svs"), "--ihc", str(bad), "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["status"] == "failed" and record["transform"] is None
    assert "S-12345" not in out.read_text() and "<slide file>" in record["reason"]


# ---- real data: one Ki-67 section from two scanners --------------------------------------------------------------

def test_os2_scanner_pair_registers_within_50_um(shared_data):
    ndpi, vsi = shared_data / "slides" / "OS-2-ndpi.ome.tif", shared_data / "slides" / "OS-2-vsi.ome.tif"
    started = time.perf_counter()
    record = register_slides(ndpi, vsi)
    seconds = time.perf_counter() - started
    quality = record["quality"]
    print(f"OS-2 vsi onto ndpi: {record['status']}, score {quality['score']}, residual median "
          f"{quality['residual_median_um']} um, p95 {quality['residual_p95_um']} um over {quality['patches']} "
          f"patches of {quality['patch_um']} um at {quality['level_mpp']} um/px; {seconds:.2f} s "
          f"{record['timings_s']}; transform {record['transform']}")
    assert record["status"] == "ok"
    assert quality["patches"] >= 8 and 1.0 <= quality["level_mpp"] <= 2.0
    assert quality["residual_p95_um"] <= MAX_ERROR_UM
    # one section: no mirror, no turn, and a level-0 scale equal to the two scanners' um/px ratio
    transform = record["transform"]
    assert not transform["flip"] and min(transform["rotation_deg"], 360 - transform["rotation_deg"]) < 1.0
    matrix = np.array(transform["matrix_level0_px"])
    ratio = record["slides_mpp"]["ihc"] / record["slides_mpp"]["he"]
    assert math.sqrt(abs(np.linalg.det(matrix[:2, :2]))) == pytest.approx(ratio, rel=0.01)


def _patch_at(slide, centre_px: np.ndarray, size_um: float, out_px: int) -> np.ndarray:
    """The haematoxylin density of a ``size_um`` square of ``slide`` centred on level-0 ``centre_px``, at
    ``out_px`` pixels (read with Slide.read_region, resized with PIL: independent of the registration's warp)."""
    from PIL import Image

    side = round(size_um / slide.mpp)
    corner = np.round(centre_px - side / 2).astype(int)
    rgb = slide.read_region((int(corner[0]), int(corner[1])), 0, (side, side))
    small = np.asarray(Image.fromarray(rgb).resize((out_px, out_px), Image.Resampling.BOX))
    return reg.nuclear_density(small)


def test_os2_matrix_checked_on_patches_it_never_saw(shared_data):
    """The level-0 matrix of the record, applied by hand: 64 um patches at 1 um/px read from both slides around
    matched points (a grid offset from the registration's own patches) agree within a few um."""
    from skimage.registration import phase_cross_correlation

    ndpi, vsi = shared_data / "slides" / "OS-2-ndpi.ome.tif", shared_data / "slides" / "OS-2-vsi.ome.tif"
    record = register_slides(ndpi, vsi)
    inverse = np.array(record["transform"]["inverse_matrix_level0_px"])
    errors = []
    with open_slide(ndpi) as he, open_slide(vsi) as ihc:
        for fx in (0.2, 0.4, 0.6, 0.8):
            for fy in (0.25, 0.5, 0.75):
                he_px = np.array(he.dimensions, float) * (fx, fy)
                ihc_px = (inverse @ [*he_px, 1.0])[:2]
                a, b = _patch_at(he, he_px, 64.0, 64), _patch_at(ihc, ihc_px, 64.0, 64)
                if a.std() < 0.02 or b.std() < 0.02:
                    continue
                shift, _, _ = phase_cross_correlation(a - a.mean(), b - b.mean(), upsample_factor=4)
                errors.append(float(np.hypot(*shift)) * 1.0)  # 1 um/px
    print(f"OS-2 held-out patches: {len(errors)}, error median {np.median(errors):.2f} um, "
          f"max {max(errors):.2f} um")
    assert len(errors) >= 8 and np.percentile(errors, 95) <= MAX_ERROR_UM
