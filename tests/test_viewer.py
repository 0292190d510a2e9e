"""The deep-zoom viewer (``python -m pipeline view``): its routes refuse what they must, its tiles are right, and a
case view works in a real headless browser (Debian chromium) with OpenSeadragon.

The server runs in a thread of this process on a free port, over the mini cohort of test_summary (two openable
slides and a broken one) whose results/config.yaml names a sample sheet, as a workflow run records it.
"""

from __future__ import annotations

import http.client
import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image
from test_browser import CHROMIUM
from test_summary import MARKERS, SLIDES, make_mini_cohort

from conftest import ROOT, require_sample_cohort
from pipeline.synth.tiff_writer import FAKE_IDENTIFIERS
from pipeline.viewer.server import make_server, osd_dir, serve_in_thread

SCREENSHOT = ROOT / "docs" / "viewer_screenshot.png"
FILES = {"S1": "he_slide.svs", "S2": "ihc_slide.svs", "S3": "broken_slide.svs"}  # test_summary.make_slides
SLIDE_JSON_KEYS = {"width_px", "height_px", "mpp", "level_count", "level_dimensions", "dz_levels", "dz_tile_px",
                   "dz_overlap_px"}
TILE = re.compile(r"/dz/(?P<id>[\w-]+)_files/(?P<level>\d+)/(?P<col>\d+)_(?P<row>\d+)\.jpeg")


def _sheet(path: Path, rows: list[tuple[str, str, str, str]]) -> Path:
    path.write_text("case_id\tslide_id\tpath\tstain\n" + "".join("\t".join(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("SLIDE_TRIAGE_GIT_COMMIT", "0" * 40)
    root = tmp_path_factory.mktemp("mini_viewer")
    results = make_mini_cohort(root)
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
    assert ihc["kind"] == "IHC" and ihc["cutoff"]["metric"] and set(ihc["tiles"]["cls"]) <= {"Positive", "Negative"}
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
    import numpy as np
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
    url = f"{server.url}case/C1?selftest=1"
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
    # zooming and panning the H&E moves the IHC to the same place relative to the slide's size
    assert attrs["selftest-sync-zoomed"] == "true" and float(attrs["selftest-sync-offset"]) < 0.01, root
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
    import numpy as np

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
