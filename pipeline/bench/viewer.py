"""``python -m pipeline bench-view results/``: the viewer's deep-zoom tile latency, p95 cold and warm.

For every slide of the run's sample sheet, a fresh viewer server (:func:`pipeline.viewer.server.make_server`, empty tile
cache) is asked over HTTP, on one keep-alive connection, for the tiles a reviewer's first minute asks for: the
whole slide, then a 1400 x 900 px screen centred on the slide at every deep-zoom level from the one where the
slide fits the screen to full resolution. Each tile is asked twice:

* **cold** -- the first request: the slide is already open (opening is timed separately, once per slide per
  server), the tile is read from the slide, resized and JPEG-encoded; the file's bytes may be in the OS page
  cache (this benchmark does not drop it);
* **warm** -- the same tile again, from the server's in-memory tile cache.

Latency is the time from sending the request to having read the whole response, on the same machine. Targets
(issue 15): p95 warm <= 50 ms, p95 cold <= 200 ms.
"""

from __future__ import annotations

import http.client
import json
import logging
import math
import time
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

TARGET_WARM_MS, TARGET_COLD_MS = 50.0, 200.0
SCREEN_PX = (1400, 900)


def screen_tiles(level_dims: tuple[int, int], level_tiles: tuple[int, int], tile_px: int,
                 screen: tuple[int, int] = SCREEN_PX) -> list[tuple[int, int]]:
    """(col, row) of the tiles a ``screen``-sized view centred on a deep-zoom level covers."""
    spans = []
    for size, count, view in zip(level_dims, level_tiles, screen, strict=True):
        lo = max(0, (size - view) // 2)
        hi = min(size, lo + view)
        spans.append(range(lo // tile_px, min(count - 1, max(lo, hi - 1) // tile_px) + 1))
    return [(c, r) for r in spans[1] for c in spans[0]]


def view_requests(generator, tile_px: int) -> list[tuple[int, int, int]]:
    """The (level, col, row) tiles of a first look: every level from the one that fits the screen to full size."""
    dims = generator.level_dimensions
    first = next((i for i, (w, h) in enumerate(dims) if w > SCREEN_PX[0] / 2 or h > SCREEN_PX[1] / 2), len(dims) - 1)
    out = []
    for level in range(first, len(dims)):
        out += [(level, c, r) for c, r in screen_tiles(dims[level], generator.level_tiles[level], tile_px)]
    return out


def _get(conn: http.client.HTTPConnection, host: str, path: str) -> float:
    t0 = time.perf_counter()
    conn.request("GET", path, headers={"Host": host})
    resp = conn.getresponse()
    body = resp.read()
    seconds = time.perf_counter() - t0
    if resp.status != 200 or not body:
        raise RuntimeError(f"{path}: HTTP {resp.status}")
    return seconds


def p95(values: list[float]) -> float:
    return float(np.percentile(values, 95)) if values else math.nan


def bench_slide(results: Path, slide_id: str, samples: str | None, markers: str | None) -> dict:
    """Cold and warm tile latencies of one slide on a fresh server."""
    from pipeline.errors import SlideError
    from pipeline.viewer.deepzoom import TILE_SIZE_PX
    from pipeline.viewer.server import make_server, serve_in_thread

    server = make_server(results, port=0, samples=samples, markers=markers)
    serve_in_thread(server)
    host = f"127.0.0.1:{server.server_address[1]}"
    try:
        t0 = time.perf_counter()
        try:
            source = server.app.cohort.source(slide_id)
        except SlideError as exc:
            return {"slide_id": slide_id, "skipped": str(exc)}
        open_ms = (time.perf_counter() - t0) * 1e3
        tiles = view_requests(source.generator, TILE_SIZE_PX)
        conn = http.client.HTTPConnection(*server.server_address[:2], timeout=60)
        paths = [f"/dz/{slide_id}_files/{lv}/{c}_{r}.jpeg" for lv, c, r in tiles]
        cold = [_get(conn, host, p) * 1e3 for p in paths]
        warm = [_get(conn, host, p) * 1e3 for p in paths]
        conn.close()
    finally:
        server.shutdown()
        server.server_close()
    return {"slide_id": slide_id, "size_px": list(source.slide.dimensions), "open_ms": round(open_ms, 1),
            "tiles": len(paths), "cold_p95_ms": round(p95(cold), 1), "cold_max_ms": round(max(cold), 1),
            "warm_p95_ms": round(p95(warm), 2), "warm_max_ms": round(max(warm), 2), "_cold": cold, "_warm": warm}


def configure_parser(parser) -> None:
    parser.add_argument("results", help="the results folder of a finished run (make demo)")
    parser.add_argument("--samples", help="sample sheet (default: the one results/config.yaml names)")
    parser.add_argument("--markers", help="marker knowledge base (default: the one results/config.yaml names)")
    parser.add_argument("--slides", nargs="*", help="slide ids (default: every slide of the sheet)")
    parser.add_argument("--json", help="write the figures here as JSON")


def run(args) -> None:
    from pipeline.viewer.data import Cohort

    results = Path(args.results)
    ids = args.slides or list(Cohort(results, args.samples, args.markers).slides)
    rows = [bench_slide(results, s, args.samples, args.markers) for s in ids]
    done = [r for r in rows if "skipped" not in r]
    cold = [v for r in done for v in r.pop("_cold")]
    warm = [v for r in done for v in r.pop("_warm")]
    print(f"{'slide':<16} {'size px':>12} {'open ms':>8} {'tiles':>6} {'cold p95':>9} {'cold max':>9} "
          f"{'warm p95':>9} {'warm max':>9}")
    for r in rows:
        if "skipped" in r:
            print(f"{r['slide_id']:<16} skipped: {r['skipped']}")
            continue
        size = "x".join(map(str, r["size_px"]))
        print(f"{r['slide_id']:<16} {size:>12} {r['open_ms']:>8} {r['tiles']:>6} {r['cold_p95_ms']:>9} "
              f"{r['cold_max_ms']:>9} {r['warm_p95_ms']:>9} {r['warm_max_ms']:>9}")
    total = {"tiles": len(cold), "cold_p95_ms": round(p95(cold), 1), "warm_p95_ms": round(p95(warm), 2),
             "targets": {"cold_p95_ms": TARGET_COLD_MS, "warm_p95_ms": TARGET_WARM_MS}}
    total["met"] = bool(total["cold_p95_ms"] <= TARGET_COLD_MS and total["warm_p95_ms"] <= TARGET_WARM_MS)
    print(f"all slides: {total['tiles']} tiles, p95 cold {total['cold_p95_ms']} ms (target <= {TARGET_COLD_MS:g}), "
          f"p95 warm {total['warm_p95_ms']} ms (target <= {TARGET_WARM_MS:g}): "
          f"{'met' if total['met'] else 'NOT met'}")
    if args.json:
        Path(args.json).write_text(json.dumps({"slides": rows, "all": total}, indent=1) + "\n", encoding="utf-8")
