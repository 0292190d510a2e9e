"""The deep-zoom viewer (``python -m pipeline view``): its routes refuse what they must, its tiles are right, and a
case view works in a real headless browser (Debian chromium) with OpenSeadragon.

The server runs in a thread of this process on a free port, over the mini cohort of test_summary (two openable
slides and a broken one) whose results/config.yaml names a sample sheet, as a workflow run records it. Its IHC slide
S2 gets a registration.json onto S1 (:data:`REGISTRATION`: mirrored, then turned 90 degrees) and is quantified again
in the registered tumour region, as the workflow does for an IHC slide with an H&E slide in its case.
"""

from __future__ import annotations

import http.client
import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_browser import CHROMIUM
from test_summary import CONFIG, MARKERS, SLIDES, cohort_verbs, make_mini_cohort, output_verbs

from conftest import ROOT, require_sample_cohort
from pipeline.__main__ import main
from pipeline.synth.tiff_writer import FAKE_IDENTIFIERS
from pipeline.viewer.server import make_server, osd_dir, serve_in_thread

SCREENSHOT = ROOT / "docs" / "viewer_screenshot.png"
FILES = {"S1": "he_slide.svs", "S2": "ihc_slide.svs", "S3": "broken_slide.svs"}  # test_summary.make_slides
SLIDE_JSON_KEYS = {"width_px", "height_px", "mpp", "level_count", "level_dimensions", "dz_levels", "dz_tile_px",
                   "dz_overlap_px"}
# S2 (1792 x 1344 px) onto S1 (3072 x 2304 px): x mirrored, then turned 90 degrees clockwise (y down), shifted:
# x_he = -y_ihc + 2000, y_he = -x_ihc + 2100; the IHC slide lands inside the H&E slide.
MATRIX = [[0.0, -1.0, 2000.0], [-1.0, 0.0, 2100.0], [0.0, 0.0, 1.0]]
REGISTRATION = {
    "version": 1, "he_slide_id": "S1", "ihc_slide_id": "S2", "status": "ok", "reason": None,
    "transform": {"matrix_level0_px": MATRIX, "rotation_deg": 90.0, "flip": True, "scale": 1.0},
    "quality": {"score": 0.93, "residual_median_um": 0.4, "residual_p95_um": 0.8}, "timings_s": {"total": 1.0}}
PAN_HE = (1200.0, 900.0)  # where the browser test moves the H&E viewer: S2's (1200, 800)
TILE = re.compile(r"/dz/(?P<id>[\w-]+)_files/(?P<level>\d+)/(?P<col>\d+)_(?P<row>\d+)\.jpeg")


def _sheet(path: Path, rows: list[tuple[str, str, str, str]]) -> Path:
    path.write_text("case_id\tslide_id\tpath\tstain\n" + "".join("\t".join(r) + "\n" for r in rows))
    return path


def register_s2(results: Path, slides: Path) -> None:
    """S2's registration.json onto S1; S2 quantified again in the registered tumour region, then its outputs."""
    import yaml

    d, he = results / "slides" / "S2", results / "slides" / "S1"
    (d / "registration.json").write_text(json.dumps(REGISTRATION))
    config = yaml.safe_load(Path(CONFIG).read_text())
    config["ihc"]["tumour_region"]["min_tiles"] = 1  # the mini IHC slide has 2 tiles in all
    (slides / "config.yaml").write_text(yaml.safe_dump(config))
    assert main(["quantify-ihc", "--slide", str(slides / FILES["S2"]), "--slide-id", "S2", "--marker", "CK_AE1AE3",
                 "--tiles", str(d / "tiles.parquet"), "--qc", str(d / "qc.json"), "--config",
                 str(slides / "config.yaml"), "--markers",
                 MARKERS, "--registration", str(d / "registration.json"), "--he-tiles", str(he / "tiles.parquet"),
                 "--he-scores", str(he / "scores.parquet"), "--out-tiles", str(d / "ihc.parquet"),
                 "--out", str(d / "ihc.json")]) == 0
    output_verbs(slides / FILES["S2"], "S2", "C1", "CK_AE1AE3", results)
    cohort_verbs(results)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("SLIDE_TRIAGE_GIT_COMMIT", "0" * 40)
    root = tmp_path_factory.mktemp("mini_viewer")
    results = make_mini_cohort(root)
    register_s2(results, root / "slides")
    mp.undo()
    _sheet(root / "samples.tsv", [(case, sid, f"slides/{FILES[sid]}", stain) for sid, (case, stain) in SLIDES.items()])
    (results / "config.yaml").write_text(json.dumps({"results": "results", "samples": "samples.tsv",
                                                     "markers": MARKERS}))
    srv = make_server(results, port=0)
    serve_in_thread(srv)
    yield srv
    srv.shutdown()
    srv.server_close()


def request(srv, path: str, method: str = "GET", host: str | None = None) -> tuple[int, dict, bytes]:
    conn = http.client.HTTPConnection(*srv.server_address[:2], timeout=30)
    conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
    conn.putheader("Host", host or f"127.0.0.1:{srv.server_address[1]}")
    conn.endheaders()
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    return resp.status, dict(resp.getheaders()), body


def test_pages_json_and_tiles(server):
    status, _, page = request(server, "/")
    assert status == 200 and b'.view-link { display: inline; }' in page and b'href="case/C1"' in page
    status, headers, case = request(server, "/case/C1")
    assert status == 200 and "script-src 'self'" in headers["Content-Security-Policy"]
    assert b"S1" in case and b"S2" in case and b"H&amp;E: carcinoma" in case and b"synchronise navigation" in case
    status, _, data = request(server, "/api/slide/S1.json")
    info = json.loads(data)
    assert status == 200 and set(info["slide"]) == SLIDE_JSON_KEYS and info["slide"]["mpp"] == 0.5
    assert info["overlays"]["tiles"]["box"] and len(info["overlays"]["tiles"]["prob_carcinoma"]) == \
        len(info["overlays"]["tiles"]["box"]) and info["overlays"]["tissue"] and info["overlays"]["top"]
    ihc = json.loads(request(server, "/api/slide/S2.json")[2])["overlays"]
    # per tumour cell in the region: tiles outside it have no per-cell figure and no class
    assert ihc["kind"] == "IHC" and ihc["cutoff"]["metric"]
    assert set(ihc["tiles"]["cls"]) <= {"Positive", "Negative", None}, (ihc["cutoff"], ihc["tiles"]["in_region"])
    status, _, dzi = request(server, "/dz/S1.dzi")
    assert status == 200 and b'Width="3072"' in dzi and b'TileSize="254"' in dzi
    source = server.app.cohort.source("S1")
    last = source.generator.level_count - 1
    for address in ((last, 0, 0), (last, 3, 2), (last - 3, 0, 0), (0, 0, 0)):
        status, headers, body = request(server, "/dz/S1_files/{}/{}_{}.jpeg".format(*address))
        assert status == 200 and headers["Content-Type"] == "image/jpeg"
        with Image.open(io.BytesIO(body)) as im:
            assert im.format == "JPEG" and im.size == source.tile_size(*address)
    status, _, head = request(server, f"/dz/S1_files/{last}/0_0.jpeg", method="HEAD")
    assert status == 200 and head == b""


REGISTRATION_KEYS = {"status", "reason", "he_slide_id", "matrix_level0_px", "rotation_deg", "flip", "scale", "score",
                     "residual_median_um", "residual_p95_um"}


def test_slide_json_carries_the_registration_and_the_tumour_region(server):
    info = json.loads(request(server, "/api/slide/S2.json")[2])
    reg = info["registration"]
    assert set(reg) == REGISTRATION_KEYS and reg["matrix_level0_px"] == MATRIX and reg["status"] == "ok"
    assert (reg["he_slide_id"], reg["rotation_deg"], reg["flip"], reg["score"], reg["residual_p95_um"]) == \
        ("S1", 90.0, True, 0.93, 0.8)
    overlays = info["overlays"]
    region = overlays["tiles"]["in_region"]
    summary = json.loads((server.app.cohort.results / "slides" / "S2" / "summary.json").read_text())
    assert overlays["region"]["restricted"] is True and "registered onto this slide" in overlays["region"]["reason"]
    assert len(region) == len(overlays["tiles"]["box"]) and 1 in region and set(region) <= {0, 1}
    assert sum(v == 1 for v in region) == summary["ihc"]["region"]["tiles"]
    assert json.loads(request(server, "/api/slide/S1.json")[2])["registration"] is None
    page = request(server, "/case/C1")[2].decode()
    assert 'data-sync="registered"' in page and "registered onto S1: score 0.93, residual 0.8" in page
    assert 'data-overlay="region"' in page and "tumour region (registered from H&amp;E)" in page
    assert "registered onto" not in request(server, "/slide/S2")[2].decode()  # only a case view synchronises


def test_a_failed_or_missing_registration_is_said_and_not_used(server):
    path = server.app.cohort.results / "slides" / "S2" / "registration.json"
    kept = path.read_text()
    try:
        path.write_text(json.dumps({**REGISTRATION, "status": "failed", "reason": "too few patches (3 < 8)",
                                    "transform": None, "rejected_transform": REGISTRATION["transform"]}))
        reg = json.loads(request(server, "/api/slide/S2.json")[2])["registration"]
        assert reg["status"] == "failed" and reg["matrix_level0_px"] is None and reg["rotation_deg"] is None
        page = request(server, "/case/C1")[2].decode()
        assert 'data-sync="relative"' in page and "not registered: too few patches (3 &lt; 8)" in page
        path.unlink()  # (the page without it: test_case_view_without_registration_follows_by_relative_position)
        assert json.loads(request(server, "/api/slide/S2.json")[2])["registration"] is None
    finally:
        path.write_text(kept)


def test_without_a_tumour_region_the_overlay_is_absent_and_the_reason_shown():
    from pipeline.viewer.pages import region_line, slide_panel

    ihc = {"region": {"restricted_to_tumour": False, "reason": "no H&E slide in this case"}}
    panel = slide_panel("X2", {"stain": "ER"}, {"status": "ok", "kind": "IHC", "stain": "ER", "ihc": ihc}, None)
    assert 'data-overlay="region"' not in panel and "No tumour region to show: no H&amp;E slide in this case" in panel
    assert region_line({"ihc": {"region": {"restricted_to_tumour": True}}}) == ""


def test_sample_cohort_slide_json_carries_each_registration():
    """Over the demo's results/ (skipped when absent): every registered IHC slide's matrix as registration.json
    has it, and the tumour-region overlay's tiles as the slide's summary counts them."""
    from pipeline.viewer.data import Cohort, slide_json

    results = ROOT / "results"
    if not (results / "config.yaml").is_file() or not list(results.glob("slides/*/registration.json")):
        pytest.skip("no demo run in results/ (make demo)")
    cohort, checked = Cohort(results), 0
    for path in sorted(results.glob("slides/*/registration.json")):
        record, info = json.loads(path.read_text()), slide_json(cohort, path.parent.name)
        reg = info["registration"]
        if record["status"] != "ok":
            continue
        assert reg["matrix_level0_px"] == record["transform"]["matrix_level0_px"], path.parent.name
        assert reg["rotation_deg"] == record["transform"]["rotation_deg"] and reg["flip"] == record["transform"]["flip"]
        region = json.loads((path.parent / "summary.json").read_text())["ihc"]["region"]
        if region.get("restricted_to_tumour"):
            assert sum(v == 1 for v in info["overlays"]["tiles"]["in_region"]) == region["tiles"], path.parent.name
        checked += 1
    assert checked


@pytest.mark.parametrize("path, expected", [
    ("/slides/../../etc/passwd", 404), ("/../../../etc/passwd", 404), ("/dz/..%2f..%2fetc%2fpasswd.dzi", 404),
    ("/dz/%2e%2e/%2e%2e/etc/passwd", 404), ("/static/../server.py", 404), ("/static/%2e%2e/server.py", 404),
    ("/osd/../../../pipeline/viewer/server.py", 404), ("//etc/passwd", 404), ("/results/", 404), ("/slides/", 404),
    ("/slides/S1/summary.json", 404), ("/api/slide/../S1.json", 404), ("/case/NOPE", 404), ("/slide/NOPE", 404),
    ("/api/slide/NOPE.json", 404), ("/dz/NOPE.dzi", 404), ("/dz/NOPE_files/0/0_0.jpeg", 404),
    ("/dz/S1_files/5/-1_0.jpeg", 400), ("/dz/S1_files/5/0_-1.jpeg", 400), ("/dz/S1_files/-5/0_0.jpeg", 400),
    ("/dz/S1_files/5/1e9_0.jpeg", 400), ("/dz/S1_files/5/a_b.jpeg", 400), ("/dz/S1_files/5/0_0.png", 400),
    ("/dz/S1_files/5/99999999999_0.jpeg", 400), ("/dz/S1_files/5/%30_0.jpeg", 400), ("/dz/S1_files/x/0_0.jpeg", 400),
    ("/dz/S1_files/5/0_0_0.jpeg", 400), ("/dz/S1_files/99/0_0.jpeg", 404), ("/dz/S1_files/13/999_0.jpeg", 404),
    ("/dz/S1_files/0/1_0.jpeg", 404), ("/dz/S3.dzi", 404), ("/dz/S3_files/0/0_0.jpeg", 404),
])
def test_traversal_unknown_ids_and_malformed_tiles_are_refused(server, path, expected):
    status, headers, body = request(server, path)
    assert status == expected, (path, status, body[:200])
    assert headers["Content-Type"].startswith("text/plain") and len(body) < 300
    assert b"root:" not in body and b"import" not in body


def test_only_get_and_head_and_only_this_host(server):
    for method in ("POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "PROPFIND"):
        status, headers, _ = request(server, "/", method=method)
        assert status == 405 and headers["Allow"] == "GET, HEAD", method
    assert request(server, "/", host="attacker.example:80")[0] == 400  # DNS rebinding
    status, _, page = request(server, "/case/C2")  # the broken slide: listed, not shown, the page says why
    assert status == 200 and b'data-viewable="no"' in page and b"cannot be displayed" in page
    assert b"broken_slide" not in page and b"<slide file>" in page.replace(b"&lt;", b"<").replace(b"&gt;", b">")


def test_non_loopback_addresses_are_refused(server):
    from pipeline.errors import ConfigError
    from pipeline.viewer.server import check_loopback

    assert check_loopback("127.0.0.1") == "127.0.0.1" and check_loopback("::1") == "::1"
    for host in ("0.0.0.0", "192.168.1.10", "example.org", "::"):
        with pytest.raises(ConfigError, match="loopback"):
            check_loopback(host)


def test_no_label_macro_or_identifying_property_is_served(tmp_path):
    """Over a sample slide that carries a fake label, macro and identifying properties (FAKE_IDENTIFIERS)."""
    import openslide

    require_sample_cohort()
    slide = ROOT / "slides_sample" / "A-HE.svs"
    (tmp_path / "results" / "slides").mkdir(parents=True)
    sheet = _sheet(tmp_path / "samples.tsv", [("A", "A-HE", str(slide), "HE")])
    srv = make_server(tmp_path / "results", samples=str(sheet), markers=MARKERS)
    serve_in_thread(srv)
    try:
        source = srv.app.cohort.source("A-HE")
        assert not hasattr(source.generator._osr, "associated_images")
        bodies = [request(srv, p)[2] for p in ("/", "/case/A", "/slide/A-HE", "/api/slide/A-HE.json", "/dz/A-HE.dzi")]
        levels = source.generator.level_tiles
        whole = next(i for i, (c, r) in enumerate(levels) if (c, r) == (1, 1) and
                     max(source.generator.level_dimensions[i]) >= 128)
        for level in range(whole + 1):
            cols, rows = levels[level]
            bodies += [request(srv, f"/dz/A-HE_files/{level}/{c}_{r}.jpeg")[2]
                       for c in range(cols) for r in range(rows)]
    finally:
        srv.shutdown()
        srv.server_close()
    needles = [v.encode() for v in FAKE_IDENTIFIERS.values() if len(v) >= 6]
    needles += [b"aperio", b"ScanScope", b"quickhash", b"A-HE.svs", b"slides_sample"]
    assert not [n for n in needles for b in bodies if n in b]
    # the whole-slide tile shows the slide's pyramid, not its label or macro image
    with Image.open(io.BytesIO(bodies[5 + whole])) as im:
        tile = np.asarray(im.convert("RGB"), np.float64)
    osr = openslide.OpenSlide(str(slide))
    size = (tile.shape[1], tile.shape[0])

    def mad(image) -> float:
        return float(np.abs(np.asarray(image.convert("RGB").resize(size), np.float64) - tile).mean())

    pyramid = osr.read_region((0, 0), osr.level_count - 1, osr.level_dimensions[-1])
    assert mad(pyramid) < 8 and mad(osr.associated_images["label"]) > 3 * mad(pyramid)
    assert mad(osr.associated_images["macro"]) > 3 * mad(pyramid)


# ---- in the browser ---------------------------------------------------------------------------------------
needs_browser = pytest.mark.skipif(not CHROMIUM.is_file(), reason="Debian chromium not installed at /usr/bin/chromium "
                                   "(apt-get install chromium); the CI script installs it")
needs_osd = pytest.mark.skipif(osd_dir() is None, reason="OpenSeadragon not installed in .gl/osd: run `make osd` "
                               "(npm install from the npm registry); the viewer test needs it")


def chromium(url: str, user_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-dev-shm-usage", f"--user-data-dir={user_dir}", "--window-size=1400,1100",
           "--virtual-time-budget=20000", *extra, url]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


@pytest.mark.browser
@needs_browser
@needs_osd
def test_case_view_in_chromium(server, tmp_path):
    server.requests.clear()
    url = f"{server.url}case/C1?selftest=1&pan={PAN_HE[0]:g},{PAN_HE[1]:g}"
    proc = chromium(url, tmp_path / "profile", "--dump-dom")
    assert proc.returncode == 0, proc.stderr[-2000:]
    html = proc.stdout
    root = re.search(r"<html[^>]*>", html).group(0)
    attrs = dict(re.findall(r'data-([\w-]+)="([^"]*)"', root))
    assert attrs.get("osd") == "6.1.1", root  # OpenSeadragon loaded
    assert attrs.get("selftest-done") == "yes", (root, proc.stderr[-1500:])
    assert "H&amp;E: carcinoma" in html and "Case C1" in html  # the slide call beside the image
    # toggling an overlay (the tissue outline) changes the canvas
    assert attrs["selftest-hash-before"] != attrs["selftest-hash-after"]
    # panning the H&E to PAN_HE centres the IHC on the registered point, turned and mirrored as registered, at
    # the same um per screen pixel
    views = {v.split(":")[0]: v.split(":")[1:] for v in attrs["selftest-sync-views"].split()}
    he, ihc = views["S1"], views["S2"]
    assert attrs["selftest-sync-zoomed"] == "true" and attrs["selftest-sync-offset"] == "none", root
    assert ihc[0] == "registered" and _near(he[1], PAN_HE, 1.0), views
    ihc_point = np.linalg.solve(np.array(MATRIX), [*PAN_HE, 1.0])[:2]  # the IHC point MATRIX maps onto PAN_HE
    assert _near(ihc[1], ihc_point, 3.0), (views, ihc_point)
    # the registration mirrors then turns 90 degrees; OpenSeadragon turns then mirrors: so -90 with the flip
    assert float(ihc[2]) % 360 == (-REGISTRATION["transform"]["rotation_deg"]) % 360 and ihc[3] == "true", views
    assert he[2:4] == ["0", "false"] and abs(float(ihc[4]) / float(he[4]) - 1) < 0.01, views
    assert "tissue outline" in attrs["selftest-legend"] and re.fullmatch(r"\d+ (µm|mm)", attrs["selftest-scalebar"])
    tiles = [(r["path"], TILE.fullmatch(r["path"])) for r in server.requests if r["path"].startswith("/dz/")]
    shown = {m["id"] for _, m in tiles if m}
    assert shown == {"S1", "S2"}, tiles
    for path, m in tiles:
        if m is None:
            continue
        status, _, body = request(server, path)
        with Image.open(io.BytesIO(body)) as im:
            size = server.app.cohort.source(m["id"]).tile_size(int(m["level"]), int(m["col"]), int(m["row"]))
            assert status == 200 and im.format == "JPEG" and im.size == size, path
    assert all(r["status"] == 200 for r in server.requests), [r for r in server.requests if r["status"] != 200]
    shot = tmp_path / "viewer.png"
    assert chromium(f"{server.url}case/C1", tmp_path / "profile2", f"--screenshot={shot}").returncode == 0
    with Image.open(shot) as im:
        assert im.size == (1400, 1100)
    SCREENSHOT.parent.mkdir(exist_ok=True)
    shutil.copyfile(shot, SCREENSHOT)


@pytest.mark.browser
@needs_browser
@needs_osd
def test_case_view_without_registration_follows_by_relative_position(server, tmp_path):
    path = server.app.cohort.results / "slides" / "S2" / "registration.json"
    kept = path.read_text()
    path.unlink()
    try:
        proc = chromium(f"{server.url}case/C1?selftest=1", tmp_path / "profile", "--dump-dom")
    finally:
        path.write_text(kept)
    attrs = dict(re.findall(r'data-([\w-]+)="([^"]*)"', re.search(r"<html[^>]*>", proc.stdout).group(0)))
    assert attrs.get("selftest-done") == "yes", attrs
    # zooming and panning the H&E moves the IHC to the same place relative to the slide's size, unturned
    assert attrs["selftest-sync-zoomed"] == "true" and float(attrs["selftest-sync-offset"]) < 0.01, attrs
    views = {v.split(":")[0]: v.split(":")[1:] for v in attrs["selftest-sync-views"].split()}
    assert views["S2"][0] == "relative" and views["S2"][2:4] == ["0", "false"], views
    assert "not registered: no registration.json" in proc.stdout


def _near(text: str, xy, tol_px: float) -> bool:
    return max(abs(float(v) - w) for v, w in zip(text.split(","), xy, strict=True)) <= tol_px


def test_without_openseadragon_the_page_says_how_to_install_it(server):
    from pipeline.viewer.server import App, HttpError

    app = App(server.app.cohort, None)
    page = app.case_page("C1")[0].decode()
    assert 'id="osd-missing"' in page and "make osd" in page and "openseadragon.min.js" not in page
    with pytest.raises(HttpError, match="make osd"):
        app.osd("openseadragon.min.js")


def test_tile_benchmark_runs_on_a_run(server):
    """The benchmark's parts on the mini cohort (figures are not checked here: `make benchmark-viewer` measures)."""
    from pipeline.bench.viewer import bench_slide, screen_tiles

    # a 1400 x 900 screen centred on 3072 x 2304 px covers x 836-2235, y 702-1601
    assert screen_tiles((3072, 2304), (13, 10), 254) == [(c, r) for r in range(2, 7) for c in range(3, 9)]
    assert screen_tiles((200, 100), (1, 1), 254) == [(0, 0)]
    figures = bench_slide(server.app.cohort.results, "S1", None, None)
    assert figures["tiles"] > 10 and len(figures["_cold"]) == len(figures["_warm"]) == figures["tiles"]
    assert figures["warm_p95_ms"] > 0 and figures["cold_p95_ms"] > 0
    assert "skipped" in bench_slide(server.app.cohort.results, "S3", None, None)  # the broken slide


def test_both_readers_give_the_same_deep_zoom_tiles(server):
    """OpenSlide and the tifffile reader behind the same generator: same pyramid, same pixels (within JPEG noise)."""
    from pipeline.slides.reader import open_slide
    from pipeline.viewer.deepzoom import TileCache, TileSource

    path = server.app.cohort.slides["S1"]["file"]
    tiles = {}
    for reader in ("openslide", "tifffile"):
        with open_slide(path, reader=reader) as slide:
            source = TileSource(slide, reader, TileCache())
            last = source.generator.level_count - 1
            tiles[reader] = [np.asarray(Image.open(io.BytesIO(source.tile(level, 1, 1))).convert("RGB"), np.int16)
                             for level in (last, last - 2)]
    for a, b in zip(tiles["openslide"], tiles["tifffile"], strict=True):
        assert a.shape == b.shape and np.abs(a - b).mean() < 2.0
