"""DAB quantification: deconvolution, pixel classes and H-score, nuclei, marker results, stain check, CLI,
and the real Ki-67 scanner pair (OS-2 NDPI vs VSI)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, write_pyramid_tiff
from pipeline.ihc import stain
from pipeline.ihc.markers import load_markers
from pipeline.ihc.measure import derived_metrics, quantify_tile
from pipeline.ihc.nuclei import nucleus_classes
from pipeline.ihc.params import IhcParams
from pipeline.ihc.quantify import quantify_ihc
from pipeline.ihc.reading import distribution, marker_result
from pipeline.ihc.stain import Deconvolver
from pipeline.ihc.stain_check import STAIN_CHECK_REFERENCES, stain_check

PARAMS = IhcParams()


@pytest.fixture(scope="module")
def kb():
    return load_markers(ROOT / "configs" / "markers.yaml")


# ---- deconvolution ---------------------------------------------------------------------------------------
def test_deconvolution_recovers_known_h_dab_mixes():
    h_grid, dab_grid = np.meshgrid(np.linspace(0, 1.2, 13), np.linspace(0, 1.2, 13))
    rgb = stain.compose(h_grid, dab_grid)
    h, dab = stain.hdab(rgb)
    # uint8 quantisation limits the round trip; darker mixes (more OD) lose more precision
    light = (h_grid + dab_grid) <= 1.2
    assert np.abs(h - h_grid)[light].max() < 0.03 and np.abs(dab - dab_grid)[light].max() < 0.03
    assert np.abs(h - h_grid).max() < 0.1 and np.abs(dab - dab_grid).max() < 0.1
    # pure haematoxylin (first row: dab_grid 0) gives no DAB, pure DAB (first column: h_grid 0) no haematoxylin
    assert np.all(dab_grid[0] == 0) and np.all(h_grid[:, 0] == 0)
    assert dab[0].max() < 0.02 and h[:, 0].max() < 0.02
    assert stain.hdab(stain.compose(np.full((4, 4), 0.6), np.zeros((4, 4))))[1].max() < 0.02
    assert stain.hdab(stain.compose(np.zeros((4, 4)), np.full((4, 4), 0.6)))[0].max() < 0.02


def test_background_is_divided_out():
    glass = np.array([228.0, 226.0, 237.0])  # the OS-2 NDPI glass
    rgb = stain.compose(np.full((64, 64), 0.3), np.full((64, 64), 0.4), background=glass)
    rgb[:16] = glass.astype(np.uint8)  # a strip of empty glass
    bg = stain.estimate_background(rgb)
    assert np.allclose(bg, glass, atol=1.5)
    h, dab = stain.hdab(rgb, background=bg)
    assert abs(float(np.median(dab[32:])) - 0.4) < 0.02 and float(dab[:16].max()) < 0.01
    # no glass in view (all tissue): white, never a tissue colour
    assert np.array_equal(stain.estimate_background(rgb[32:]), [255.0, 255.0, 255.0])


def test_estimated_vectors_fall_back_without_dab():
    rgb = stain.compose(np.random.default_rng(0).uniform(0.1, 0.8, (64, 64)), np.zeros((64, 64)))
    matrix, info = stain.estimate_hdab_vectors(rgb)
    assert info["used"] == "reference" and np.array_equal(matrix, stain.HDAB_REFERENCE)
    rng = np.random.default_rng(1)
    rgb = stain.compose(rng.uniform(0.1, 0.8, (64, 64)) * (rng.random((64, 64)) < 0.5),
                        rng.uniform(0.1, 0.8, (64, 64)) * (rng.random((64, 64)) < 0.5))
    matrix, info = stain.estimate_hdab_vectors(rgb)
    assert info["used"] == "estimated" and info["shift_h_deg"] < 5 and info["shift_dab_deg"] < 5


# ---- pixel level ---------------------------------------------------------------------------------------
def mixed_tile(fractions: dict[float, float], size: int = 200, seed: int = 0) -> np.ndarray:
    """All-tissue tile: each DAB OD level covers its fraction of pixels (randomly placed), the rest is
    haematoxylin-only; every pixel carries some haematoxylin."""
    rng = np.random.default_rng(seed)
    n = size * size
    dab = np.zeros(n)
    start = 0
    for od, frac in fractions.items():
        k = int(round(frac * n))
        dab[start:start + k] = od
        start += k
    dab = rng.permutation(dab).reshape(size, size)
    h = np.full((size, size), 0.25)
    return stain.compose(h, dab)


def test_area_fraction_and_h_score_on_known_mixes():
    rgb = mixed_tile({0.3: 0.30, 0.5: 0.20, 0.8: 0.10})  # 1+ 30 %, 2+ 20 %, 3+ 10 %, 0 40 %
    counts = quantify_tile(rgb, 0.5, PARAMS, nuclear=False)
    m = derived_metrics(counts)
    assert m["tissue_pct"] == 100.0
    assert m["area_positive_pct"] == pytest.approx(60.0, abs=0.5)
    assert (m["pct_1plus"], m["pct_2plus"], m["pct_3plus"]) == pytest.approx((30.0, 20.0, 10.0), abs=0.5)
    assert m["h_score"] == pytest.approx(30 + 40 + 30, abs=1.5)
    negative = derived_metrics(quantify_tile(mixed_tile({}), 0.5, PARAMS, nuclear=False))
    assert negative["area_positive_pct"] == 0.0 and negative["h_score"] == 0.0


@pytest.mark.parametrize("fraction", [0.0, 0.05, 0.25, 0.5, 0.9])
def test_positive_fraction_tracks_truth(fraction):
    rgb = mixed_tile({0.45: fraction}, seed=int(fraction * 100))
    m = derived_metrics(quantify_tile(rgb, 0.5, PARAMS, nuclear=False))
    assert m["area_positive_pct"] == pytest.approx(100 * fraction, abs=0.5)


def test_glass_is_not_tissue():
    rgb = np.full((200, 200, 3), 240, np.uint8)
    rgb[:, :100] = mixed_tile({0.5: 0.5}, size=200)[:, :100]
    # glass at 240 is empty once the slide's own glass colour is divided out (as quantify_ihc does)
    deconvolver = Deconvolver(background=stain.estimate_background(rgb))
    m = derived_metrics(quantify_tile(rgb, 0.5, PARAMS, nuclear=False, deconvolver=deconvolver))
    assert m["tissue_pct"] == pytest.approx(50.0, abs=3.0)
    assert m["area_positive_pct"] == pytest.approx(50.0, abs=3.0)


# ---- cell level ----------------------------------------------------------------------------------------
def nuclei_tile(n_side: int = 8, positive_every: int = 4, mpp: float = 0.5, radius_um: float = 3.5,
                touching: bool = False, seed: int = 0):
    """Grid of disc nuclei on pale cytoplasm; every ``positive_every``-th nucleus is DAB-positive (brown).
    Returns (rgb, n_nuclei, n_positive)."""
    rng = np.random.default_rng(seed)
    spacing = 2 * radius_um / mpp * (1.0 if touching else 1.8)
    size = int(spacing * (n_side + 1))
    yy, xx = np.mgrid[0:size, 0:size]
    h = np.full((size, size), 0.04)
    dab = np.zeros((size, size))
    r = radius_um / mpp
    k = 0
    positives = 0
    for i in range(n_side):
        for j in range(n_side):
            cy, cx = spacing * (i + 1), spacing * (j + 1)
            rr = r * rng.uniform(0.85, 1.15)
            disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= rr * rr
            if k % positive_every == 0:
                h[disc], dab[disc] = 0.15, rng.uniform(0.3, 0.9)
                positives += 1
            else:
                h[disc] = rng.uniform(0.3, 0.6)
            k += 1
    return stain.compose(h, dab), n_side * n_side, positives


@pytest.mark.parametrize("positive_every", [1, 2, 4, 10, 1000])
def test_percent_positive_nuclei(positive_every):
    rgb, n, pos = nuclei_tile(positive_every=positive_every)
    counts = quantify_tile(rgb, 0.5, PARAMS, nuclear=True)
    m = derived_metrics(counts)
    assert counts["nuclei"] == n
    assert m["nuclei_positive_pct"] == pytest.approx(100.0 * pos / n, abs=0.01)


def test_touching_nuclei_are_split():
    rgb, n, pos = nuclei_tile(touching=True, positive_every=3)
    counts = quantify_tile(rgb, 0.5, PARAMS, nuclear=True)
    assert abs(counts["nuclei"] - n) <= 0.1 * n
    assert derived_metrics(counts)["nuclei_positive_pct"] == pytest.approx(100.0 * pos / n, abs=5.0)


def test_nucleus_size_follows_mpp():
    # the same nuclei drawn at 0.25 um/px are still found once each
    rgb, n, _ = nuclei_tile(mpp=0.25, positive_every=2)
    assert quantify_tile(rgb, 0.25, PARAMS, nuclear=True)["nuclei"] == n


def test_brown_not_blue_rule():
    h = np.array([0.40, 0.20, 0.15, 0.02])
    dab = np.array([0.05, 0.15, 0.70, 0.04])
    # blue nucleus with faint DAB bleed: negative; weak brown: 1+; strong brown: 3+; pale speck: negative
    assert nucleus_classes(h, dab).tolist() == [0, 1, 3, 0]


# ---- slide-level result ----------------------------------------------------------------------------------
def test_marker_result_rules(kb):
    er = kb["markers"]["ER"]
    ok = {"nuclei": 1000}
    assert marker_result({**ok, "nuclei_positive_pct": 40.0}, er, PARAMS, 1.0)["call"] == "positive"
    low = marker_result({**ok, "nuclei_positive_pct": 4.0}, er, PARAMS, 1.0)
    assert low["call"] == "positive" and low["qualifier"].startswith("low positive")
    assert marker_result({**ok, "nuclei_positive_pct": 0.7}, er, PARAMS, 1.0)["call"] == "equivocal"
    assert marker_result({**ok, "nuclei_positive_pct": 0.1}, er, PARAMS, 1.0)["call"] == "negative"
    few = marker_result({"nuclei": 50, "nuclei_positive_pct": 40.0}, er, PARAMS, 1.0)
    assert few["call"] == "equivocal" and "50 nuclei" in few["reason"]
    assert marker_result({**ok, "nuclei_positive_pct": 40.0}, er, PARAMS, 0.001)["call"] == "not_evaluable"
    ck = kb["markers"]["CK_AE1AE3"]
    res = marker_result({"area_positive_pct": 30.0}, ck, PARAMS, 1.0)
    assert res["call"] == "positive" and res["metric"] == "area_positive_pct" and res["cutoff"] == 5.0


def test_distribution_focal_vs_diffuse():
    assert distribution(np.array([0, 0, 0, 50, 0, 0, 0, 0, 0, 0.0]), 10, 30)["pattern"] == "focal"
    assert distribution(np.array([20, 30, 40, 50, 0.0]), 10, 30)["pattern"] == "diffuse"
    assert distribution(np.array([np.nan]), 10, 30)["pattern"] == "none"


# ---- stain check ---------------------------------------------------------------------------------------
def eosin_image(size: int = 96) -> np.ndarray:
    """Synthetic H&E: eosin-pink stroma with haematoxylin nuclei, on glass."""
    rng = np.random.default_rng(3)
    e_vec = STAIN_CHECK_REFERENCES["eosin"]
    h_vec = STAIN_CHECK_REFERENCES["haematoxylin"]
    e = rng.uniform(0.2, 0.6, (size, size))
    h = np.where(rng.random((size, size)) < 0.2, 0.5, 0.02)
    od = e[..., None] * e_vec + h[..., None] * h_vec
    rgb = np.clip(255 * 10 ** (-od), 0, 255).astype(np.uint8)
    rgb[:10] = 245
    return rgb


def test_stain_check_flags_mislabels():
    dab_image = mixed_tile({0.6: 0.5}, size=96)
    flagged = stain_check(dab_image, "HE")
    assert flagged["probable_mislabel"] and flagged["looks_like"] == "IHC" and flagged["status"] == "warn"
    assert not stain_check(dab_image, "CK_AE1AE3")["probable_mislabel"]
    he_image = eosin_image()
    flagged = stain_check(he_image, "desmin")
    assert flagged["probable_mislabel"] and flagged["looks_like"] == "HE"
    assert not stain_check(he_image, "HE")["probable_mislabel"]
    # a negative IHC (haematoxylin only, no eosin) is not a mislabel
    assert not stain_check(mixed_tile({}, size=96), "desmin")["probable_mislabel"]
    assert stain_check(np.full((32, 32, 3), 250, np.uint8), "HE")["status"] == "not_evaluable"


def test_stain_check_on_real_images(shared_data):
    from PIL import Image

    ihc_png = np.asarray(Image.open(shared_data / "images" / "ihc.png").convert("RGB"))
    histo = np.asarray(Image.open(shared_data / "images" / "histo.jpg").convert("RGB"))
    assert stain_check(ihc_png, "HE")["probable_mislabel"]
    assert not stain_check(ihc_png, "CK_AE1AE3")["probable_mislabel"]
    assert stain_check(histo, "CK_AE1AE3")["probable_mislabel"]
    assert not stain_check(histo, "HE")["probable_mislabel"]


# ---- slides end to end ----------------------------------------------------------------------------------
def _grid_files(tmp_path, slide_path, slide_id, qc_status="ok", tile_um=224.0):
    from pipeline.slides.reader import open_slide
    from pipeline.slides.tiling import TileGrid, write_tile_grid

    with open_slide(slide_path) as slide:
        w, h = slide.dimensions
        size0 = tile_um / slide.mpp
        xs = np.round(np.arange(int(w // size0)) * size0).astype(np.int64)
        ys = np.round(np.arange(int(h // size0)) * size0).astype(np.int64)
        gx, gy = (a.ravel() for a in np.meshgrid(xs, ys))
        meta = {"slide_id": slide_id, "status": "ok", "reason": "", "mpp": slide.mpp, "target_mpp": 1.0,
                "tile_px": int(tile_um)}
    tiles = tmp_path / f"{slide_id}.tiles.parquet"
    write_tile_grid(tiles, TileGrid(gx, gy, np.ones(len(gx), np.float32), meta))
    qc = tmp_path / f"{slide_id}.qc.json"
    qc.write_text(json.dumps({"status": qc_status, "reasons": [] if qc_status == "ok" else ["no tissue"]}))
    return tiles, qc


def _run_cli(*args):
    return subprocess.run([sys.executable, "-m", "pipeline", "quantify-ihc", *map(str, args),
                           "--config", ROOT / "configs" / "config.yaml"], capture_output=True, text=True, cwd=ROOT)


@pytest.fixture
def nuclear_slide(tmp_path):
    """A 1344 x 1344 px slide at 0.5 um/px: nuclei with every 4th positive (25 %)."""
    tile, n, pos = nuclei_tile(n_side=8, positive_every=4)
    reps = int(np.ceil(1344 / tile.shape[0]))
    image = np.tile(tile, (reps, reps, 1))[:1344, :1344]
    return write_pyramid_tiff(tmp_path / "er.tif", image, mpp=0.5, levels=2, compression="zlib")


def test_cli_on_a_generated_slide(tmp_path, nuclear_slide):
    import pyarrow.parquet as pq

    tiles, qc = _grid_files(tmp_path, nuclear_slide, "er1")
    out, out_tiles, sheet = tmp_path / "ihc.json", tmp_path / "ihc.parquet", tmp_path / "sheet.png"
    proc = _run_cli("--slide", nuclear_slide, "--marker", "ER", "--tiles", tiles, "--qc", qc, "--out", out,
                    "--out-tiles", out_tiles, "--threads", 2, "--contact-sheet", sheet)
    assert proc.returncode == 0, proc.stderr
    record = json.loads(out.read_text())
    assert record["status"] == "ok" and record["marker"] == "ER" and record["compartment"] == "nuclear"
    assert record["metrics"]["nuclei_positive_pct"] == pytest.approx(25.0, abs=2.0)
    assert record["result"]["call"] == "positive" and record["result"]["cutoff"] == 1.0
    assert record["tiles"]["quantified"] == 9 and record["stain_check"]["probable_mislabel"] is False
    table = pq.read_table(out_tiles)
    assert table.num_rows == 9 and {"x", "y", "area_positive_pct", "h_score", "nuclei_positive_pct"} <= set(
        table.column_names)
    assert sheet.stat().st_size > 0
    # byte-stable output: a second run writes the same ihc.json
    first = out.read_bytes()
    assert _run_cli("--slide", nuclear_slide, "--marker", "ER", "--tiles", tiles, "--qc", qc, "--out", out,
                    "--out-tiles", out_tiles).returncode == 0
    assert out.read_bytes() == first


def test_cli_failed_qc_and_mislabel(tmp_path, nuclear_slide):
    tiles, qc = _grid_files(tmp_path, nuclear_slide, "er2", qc_status="failed")
    out, out_tiles = tmp_path / "ihc.json", tmp_path / "ihc.parquet"
    proc = _run_cli("--slide", nuclear_slide, "--marker", "ER", "--tiles", tiles, "--qc", qc, "--out", out,
                    "--out-tiles", out_tiles)
    assert proc.returncode == 0, proc.stderr
    record = json.loads(out.read_text())
    assert record["status"] == "failed" and record["result"]["call"] == "not_evaluable"
    assert "QC failed" in record["reason"]
    # an H&E-looking slide labelled desmin is flagged and not scored
    he_path = write_pyramid_tiff(tmp_path / "he.tif", np.tile(eosin_image(96)[10:], (12, 12, 1))[:1000, :1000],
                                 mpp=0.5, levels=1, compression="zlib")
    tiles, qc = _grid_files(tmp_path, he_path, "he1")
    proc = _run_cli("--slide", he_path, "--marker", "desmin", "--tiles", tiles, "--qc", qc, "--out", out,
                    "--out-tiles", out_tiles)
    assert proc.returncode == 0, proc.stderr
    record = json.loads(out.read_text())
    assert record["status"] == "warn" and record["result"]["call"] == "not_evaluable"
    assert any("mislabel" in w for w in record["warnings"])


def test_cli_refuses_a_slide_coarser_than_quantification(tmp_path):
    tile, _, _ = nuclei_tile(n_side=4, positive_every=2, mpp=1.0)
    coarse = write_pyramid_tiff(tmp_path / "coarse.tif", np.tile(tile, (6, 6, 1))[:672, :672], mpp=1.0, levels=1,
                                compression="zlib")
    tiles, qc = _grid_files(tmp_path, coarse, "c1")
    out, out_tiles = tmp_path / "ihc.json", tmp_path / "ihc.parquet"
    proc = _run_cli("--slide", coarse, "--marker", "ER", "--tiles", tiles, "--qc", qc, "--out", out,
                    "--out-tiles", out_tiles)
    assert proc.returncode == 0, proc.stderr  # one bad slide is a failed record, not a crashed cohort
    record = json.loads(out.read_text())
    assert record["status"] == "failed" and record["result"]["call"] == "not_evaluable"
    assert "scanned at 1 um/px, coarser than the 0.5 um/px IHC quantification" in record["reason"]


def test_cli_records_the_um_per_px_actually_read(tmp_path, nuclear_slide):
    tiles, qc = _grid_files(tmp_path, nuclear_slide, "er3")
    out = tmp_path / "ihc.json"
    assert _run_cli("--slide", nuclear_slide, "--marker", "ER", "--tiles", tiles, "--qc", qc, "--out", out,
                    "--out-tiles", tmp_path / "ihc.parquet").returncode == 0
    assert json.loads(out.read_text())["effective_mpp"] == pytest.approx(0.5)


def test_image_needs_its_mpp_and_is_never_enlarged(tmp_path):
    from PIL import Image

    image = tmp_path / "ki67.png"
    Image.fromarray(nuclei_tile(n_side=4, positive_every=2)[0]).save(image)
    proc = _run_cli("--image", image, "--contact-sheet", tmp_path / "sheet.png")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "ki67.png: --image needs --mpp" in proc.stderr and not (tmp_path / "sheet.png").exists()
    proc = _run_cli("--image", image, "--mpp", "1.0", "--contact-sheet", tmp_path / "sheet.png")
    assert proc.returncode == 2 and "coarser than the 0.5 um/px" in proc.stderr
    proc = _run_cli("--image", image, "--mpp", "0.5", "--contact-sheet", tmp_path / "sheet.png")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "sheet.png").is_file()


def test_contact_sheet_command(tmp_path, shared_data):
    from PIL import Image

    out = tmp_path / "sheet.png"
    proc = _run_cli("--image", shared_data / "images" / "ihc.png", "--mpp", "0.5", "--marker", "CK_AE1AE3",
                    "--contact-sheet", out)
    assert proc.returncode == 0, proc.stderr
    sheet = Image.open(out)
    assert sheet.width > 5 * 500 and sheet.height > 500


def test_ki67_agrees_between_scanners(tmp_path, shared_data, kb):
    """OS-2: the same Ki-67 tissue scanned by two scanners (NDPI 0.227 um/px, VSI 0.346 um/px).

    Measured (whole-slide grid of 224 um tiles): NDPI 25.0 %, VSI 26.0 % positive nuclei (difference 1.0 pp).
    A fixed 0.2 OD nuclear cut gave 20.2 % vs 10.1 %: the VSI scan renders every OD about 0.55x.
    """
    from pipeline.slides.reader import open_slide

    values = {}
    for name in ("OS-2-ndpi.ome.tif", "OS-2-vsi.ome.tif"):
        path = shared_data / "slides" / name
        with open_slide(path) as slide:
            size0 = 224.0 / slide.mpp
            xs = np.round(np.arange(int(slide.dimensions[0] // size0)) * size0).astype(np.int64)
            ys = np.round(np.arange(int(slide.dimensions[1] // size0)) * size0).astype(np.int64)
            gx, gy = (a.ravel() for a in np.meshgrid(xs, ys))
            thumb, _ = slide.read_downsampled(PARAMS.thumb_mpp)
            _, summary = quantify_ihc(slide, gx, gy, 224.0, kb["markers"]["Ki67"], PARAMS, 2, thumb)
        values[name] = summary["metrics"]["nuclei_positive_pct"]
        assert summary["metrics"]["nuclei"] > 500
    print(f"OS-2 Ki-67 index: {values}")
    ndpi, vsi = values.values()
    assert 15.0 < ndpi < 40.0 and abs(ndpi - vsi) <= 5.0


def test_nucleus_shortcuts_match_scipy_and_skimage():
    """The shortcuts in detect_nuclei give what the library calls they replace (random masks, no ties)."""
    from scipy import ndimage as ndi
    from skimage.segmentation import watershed

    from pipeline.ihc.nuclei import flood, max_positions

    rng = np.random.default_rng(3)
    for _ in range(10):
        values = ndi.gaussian_filter(rng.random((61, 47)), 1.5).astype(np.float32)
        mask = values > np.median(values)
        components, n = ndi.label(mask)
        ids = np.arange(1, n + 1)
        expected = [tuple(map(int, p)) for p in ndi.maximum_position(values, components, ids)]
        assert [tuple(map(int, p)) for p in zip(*max_positions(values, components, ids), strict=True)] == expected
        markers = np.zeros(mask.shape, np.int32)
        markers[max_positions(values, components, ids)] = ids  # one seed per component ...
        extra = (values >= ndi.maximum_filter(values, size=5)) & mask & (markers == 0)
        markers[extra] = np.arange(n + 1, n + 1 + int(extra.sum()))  # ... and more in some
        assert np.array_equal(flood(-values, markers, components), watershed(-values, markers, mask=mask))


def test_opencv_filters_match_scipy():
    """pipeline.filters gives what the scipy.ndimage calls it replaces (float32 rounding apart)."""
    from scipy import ndimage as ndi

    from pipeline import filters

    rng = np.random.default_rng(5)
    for shape in [(64, 48), (7, 5), (3, 2)]:
        img = ndi.gaussian_filter(rng.random(shape), 1.0).astype(np.float32)
        for sigma in (0.6, 2.0, 3.46):
            assert np.allclose(filters.gaussian(img, sigma), ndi.gaussian_filter(img, sigma), atol=1e-6)
        assert np.allclose(filters.laplace(img), ndi.laplace(img), atol=1e-6)
        for size in (3, 13):
            assert np.array_equal(filters.maximum(img, size), ndi.maximum_filter(img, size=size))
        mask = img > np.median(img)
        assert np.array_equal(filters.open_cross(mask), ndi.binary_opening(mask, iterations=1))
        labels, n = filters.label4(mask)
        expected, n_expected = ndi.label(mask)
        assert n == n_expected and np.array_equal(labels, expected)
        padded = np.pad(img, ((0, shape[0] % 2), (0, shape[1] % 2)), mode="edge")
        blocks = padded.reshape(padded.shape[0] // 2, 2, padded.shape[1] // 2, 2).mean(axis=(1, 3))
        assert np.allclose(filters.block_mean(img, 2), blocks, atol=1e-6)


def test_block_flood_keeps_components_and_seeds():
    """flood on 2 px blocks: every mask pixel goes to a seed of its own component, every seed keeps its pixel, and
    nearly all pixels get the label the pixel flood gives."""
    from scipy import ndimage as ndi

    from pipeline.ihc.nuclei import flood

    rng = np.random.default_rng(7)
    agree = []
    for _ in range(10):
        values = ndi.gaussian_filter(rng.random((90, 71)), 2.0).astype(np.float32)
        mask = values > np.quantile(values, 0.4)
        components, n = ndi.label(mask)
        markers = np.zeros(mask.shape, np.int32)
        peaks = (values >= ndi.maximum_filter(values, size=7)) & mask
        markers[peaks] = np.arange(1, int(peaks.sum()) + 1)
        seeded = np.zeros(n + 1, bool)
        seeded[components[peaks]] = True
        lonely = np.flatnonzero(~seeded[1:]) + 1
        for i, c in enumerate(lonely):  # one seed in each component without a peak
            ys, xs = np.nonzero(components == c)
            markers[ys[0], xs[0]] = int(peaks.sum()) + 1 + i
        exact = flood(-values, markers, components)
        coarse = flood(-values, markers.copy(), components, block_px=2)
        comp_of = np.zeros(int(markers.max()) + 1, np.int64)
        comp_of[markers[markers > 0]] = components[markers > 0]
        assert np.array_equal(coarse > 0, mask)
        assert np.array_equal(comp_of[coarse[mask]], components[mask])
        assert np.array_equal(coarse[markers > 0], markers[markers > 0])
        agree.append(np.mean(coarse[mask] == exact[mask]))
    assert np.mean(agree) > 0.9


def test_tissue_pixels_odd_shapes():
    from pipeline.ihc.measure import tissue_pixels

    od = np.zeros((45, 33, 3), np.float32)
    od[10:30, 5:25] = 0.2
    mask = tissue_pixels(od, 0.5)
    assert mask.shape == (45, 33) and mask[20, 15] and not mask[0, 0] and not mask[44, 32]
